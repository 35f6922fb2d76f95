"""What stands between the network and the routes: a body cap, sessions, the auth gate and the
same-origin check for requests that change something.

Order, outermost first: :class:`BodyLimit` (every request, before anything reads its body), then
:class:`Gate` (authentication before routing, so nothing about the routes is told without the
token; then the same-origin check), then the routers.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from urllib.parse import unquote, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.routing import Match, Route

from ....redact import redact, redact_secrets

COOKIE = "avarnet_session"
MAX_BODY_BYTES = 64 * 1024  # the largest request body: a login form or a review is a few bytes
DRAIN_BYTES = 1024 * 1024  # of a streamed body past the cap, read and dropped so the 413 arrives
SESSION_TTL_S = 7 * 24 * 3600.0  # a login lasts a week at most
MAX_SESSIONS = 256  # beyond this the oldest login is forgotten
SAFE_METHODS = ("GET", "HEAD")
PUBLIC_PATHS = ("/login", "/logout")


async def send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def drain(receive, more: bool) -> None:
    """Read and drop what the client is still sending, up to ``DRAIN_BYTES``: closing with
    unread data resets the connection, and the client might never see the answer."""
    drained = 0
    while more and drained < DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        more = message.get("more_body", False)


class BodyTooLarge(Exception):
    """A streamed request body went past the cap."""


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, on every route, before any parsing:
    a declared Content-Length over the cap is refused without parsing (over ``DRAIN_BYTES``,
    without reading a byte); a streamed (chunked) body is counted as it arrives and cut off at
    the cap."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_json(send, 400, {"error": "invalid Content-Length"})
                return
            if int(declared) > self.max_bytes:
                # a body a little too large is read and dropped (so the client, still sending,
                # gets the answer); a huge one is refused without reading a byte
                if int(declared) <= DRAIN_BYTES:
                    await drain(receive, True)
                await self.too_large(send)
                return
        seen = 0
        started = False
        more = True

        async def counted_receive():
            nonlocal seen, more
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                more = message.get("more_body", False)
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:
                return
            await drain(receive, more)
            await self.too_large(send)

    async def too_large(self, send) -> None:
        await send_json(
            send,
            413,
            {"error": f"request body larger than {self.max_bytes} bytes"},
            [(b"connection", b"close")],
        )


class Sessions:
    """Logins: each one a random token (the cookie's value) kept in memory, revoked at logout,
    forgotten after ``SESSION_TTL_S`` or when ``MAX_SESSIONS`` newer ones exist. A restart logs
    everyone out."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, limit: int = MAX_SESSIONS) -> None:
        self.ttl_s, self.limit = ttl_s, limit
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[token] = time.monotonic() + self.ttl_s
            while len(self._expiry) > self.limit:
                self._expiry.popitem(last=False)
        return token

    def valid(self, token: str) -> bool:
        if not token:
            return False
        with self._lock:
            expiry = self._expiry.get(token)
            if expiry is not None and expiry < time.monotonic():
                del self._expiry[token]
                expiry = None
        return expiry is not None

    def revoke(self, token: str) -> None:
        with self._lock:
            self._expiry.pop(token, None)

    def __len__(self) -> int:
        return len(self._expiry)


class Credentials:
    """The configured token and password, and the sessions that logging in with one made."""

    def __init__(self, values: list[str], sessions: Sessions) -> None:
        self.values = [v for v in values if v]
        self.sessions = sessions

    def matches(self, given: str) -> bool:
        data = given.encode()
        # every value is compared (no early exit), so timing tells nothing about which one
        return sum(hmac.compare_digest(data, v.encode()) for v in self.values) > 0

    def how(self, headers: Headers, cookies: dict[str, str]) -> str | None:
        """ "bearer" or "cookie" when the request carries a valid credential, else None."""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return "bearer" if self.matches(auth[7:].strip()) else None
        return "cookie" if self.sessions.valid(cookies.get(COOKIE, "")) else None


def _origin_of(url: str) -> str | None:
    """``host[:port]`` of an origin or URL, lower case, default ports dropped; None if none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return host if port in (None, default) else f"{host}:{port}"


def _host(headers: Headers, scheme: str) -> str | None:
    host = headers.get("host")
    return None if not host else _origin_of(f"{scheme}://{host}")


def cross_site(headers: Headers, scheme: str, how: str | None) -> str | None:
    """Why a request that changes something must be refused as coming from another origin, or
    None. A browser names where a request comes from (Origin, Sec-Fetch-Site): it must be this
    server's own origin. A request authenticated by the session cookie must show that it comes
    from the page itself; a bearer token is never sent by a browser on its own."""
    own = _host(headers, scheme)
    origin = headers.get("origin")
    if origin is not None and (own is None or _origin_of(origin) != own):
        return f"origin {origin!r} is not this server"
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"a {fetch_site} request"
    if how == "cookie" and origin is None and fetch_site is None:
        referer = headers.get("referer")
        if referer is None or own is None or _origin_of(referer) != own:
            return "no Origin header"
    return None


class Gate:
    """Authentication before routing, then the same-origin check.

    * ``/login`` and ``/logout`` are open to everyone;
    * without a valid token or session, a GET or HEAD of a page redirects to the login form,
      and every other request (the API, clips, snapshots, unknown paths, any other method)
      answers 401 before routing: nothing tells what exists;
    * a request other than GET and HEAD from another origin (Origin, Sec-Fetch-Site; for the
      session cookie, no Origin at all) answers 403.
    """

    def __init__(self, app, credentials: Credentials, pages: list[Route]) -> None:
        self.app = app
        self.credentials = credentials
        self.pages = pages

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        how = self.credentials.how(headers, cookies(headers))
        if how is None and path not in PUBLIC_PATHS:
            if method in SAFE_METHODS and self.is_page(scope):
                target = "/login?" + urlencode({"next": path})
                await send(
                    {
                        "type": "http.response.start",
                        "status": 303,
                        "headers": [(b"location", target.encode()), (b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
            await send_json(
                send, 401, {"error": "unauthorised"}, [(b"www-authenticate", b"Bearer")]
            )
            return
        if method not in SAFE_METHODS:
            why = cross_site(headers, scope.get("scheme", "http"), how)
            if why is not None:
                await send_json(send, 403, {"error": f"refused: {why}"})
                return
        await self.app(scope, receive, send)

    def is_page(self, scope) -> bool:
        return any(route.matches(scope)[0] == Match.FULL for route in self.pages)


def cookies(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in out:
            out[name] = unquote(value.strip().strip('"'))
    return out


class Redactor:
    """What the page and the API show of camera and server state: no credential, ever. URLs lose
    their passwords and secret parameters everywhere; error texts also lose any configured
    secret (a camera's or the broker's password, the web token) quoted outside a URL."""

    def __init__(self, config) -> None:
        found: list[str] = []
        for cam in config.cameras:
            try:
                password = urlsplit(cam.source).password
            except ValueError:
                password = None
            if password:
                found += [password, unquote(password)]
        mqtt = getattr(config, "mqtt", None)
        if mqtt is not None and mqtt.password:
            found.append(mqtt.password)
        found += [v for v in (config.web.token, config.web.password) if v]
        if config.webhook:
            try:
                password = urlsplit(config.webhook).password
            except ValueError:
                password = None
            if password:
                found += [password, unquote(password)]
        self.secrets = tuple(sorted(set(found), key=len, reverse=True))

    def text(self, value: object) -> str:
        return redact_secrets(value, self.secrets)

    def tree(self, value, key: str = ""):
        """``value`` (JSON-like) with every string redacted; error texts against the secrets."""
        if isinstance(value, dict):
            return {k: self.tree(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.tree(v, key) for v in value]
        if isinstance(value, str):
            return self.text(value) if "error" in key else redact(value)
        return value
