"""Credentials never leave the process: one helper for every place a source or URL is printed,
logged, shown on a page or published.

A camera URL such as ``rtsp://admin:secret@10.0.0.5/stream`` becomes
``rtsp://admin:***@10.0.0.5/stream``; query parameters that carry secrets (``password=``,
``token=``, ``key=``, ...) keep their name and lose their value. Text that merely contains such a
URL (an FFmpeg error line, an exception message) is redacted the same way, wherever it sits.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host  (the password may hold anything but '@', '/' and whitespace)
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@]*):(?P<pw>[^\s/]*)@"
)
# scheme://token@host (no colon: a bare secret in the user part, as some webhooks use)
_BARE_USER = re.compile(r"(?P<scheme>\b(?:https?|rtsps?|rtmps?|mqtts?)://)(?P<user>[^\s:/@]{16,})@")
_SECRET_KEYS = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "token",
    "access_token",
    "auth",
    "key",
    "apikey",
    "api_key",
    "secret",
    "signature",
    "sig",
)
_QUERY = re.compile(
    r"(?P<key>[?&;](?:" + "|".join(_SECRET_KEYS) + r"))=(?P<value>[^&\s#'\"]*)", re.IGNORECASE
)


def redact(text: object) -> str:
    """``text`` (a URL, a path or any message) with passwords and secret parameters masked."""
    s = str(text)
    if "://" not in s and "=" not in s:
        return s
    s = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", s)
    s = _BARE_USER.sub(lambda m: f"{m['scheme']}{MASK}@", s)
    return _QUERY.sub(lambda m: f"{m['key']}={MASK}" if m["value"] else m[0], s)


def redact_secrets(text: object, secrets: tuple[str, ...] | list[str]) -> str:
    """:func:`redact`, then every literal secret in ``secrets`` (e.g. a configured password that
    an error message repeats outside a URL) replaced by the mask."""
    s = redact(text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            s = s.replace(secret, MASK)
    return s


def redact_endpoint(url: str) -> str:
    """A URL whose path may itself be a secret (webhooks: ``/services/T0/B0/XYZ``) shown as
    ``scheme://host[:port]/...``: the credentials, path, query and fragment all hidden."""
    m = re.match(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<netloc>[^/?#\s]*)(?P<rest>.*)", url)
    if m is None:
        return redact(url)
    netloc = m["netloc"]
    user = ""
    if "@" in netloc:
        user, netloc = f"{MASK}@", netloc.rsplit("@", 1)[1]
    rest = "/..." if m["rest"].strip("/") else ""
    return f"{m['scheme']}{user}{netloc}{rest}"
