"""Typed errors: every failure a user can cause or fix is an :class:`AvarnetError`.

The command line catches ``AvarnetError`` and prints ``str(e)`` (one line) with exit code 2.
Anything else that escapes a command is a defect in avarnet and is reported as one.
Modules define their own children (``MediaError``, ``StoreError``, ...) next to the code that
raises them; the generic ones shared by several modules live here.
"""

from __future__ import annotations

import errno


class AvarnetError(Exception):
    """Base of the errors caused by input, options or the environment; ``str(e)`` is one line.

    ``remedies``: settings that would each avoid the error, as ``"name=value"`` in the library's
    parameter names (e.g. ``"weights=random"``); the message says it in words, and the command
    line names its options for them. Messages never name command-line options themselves.
    """

    def __init__(self, *args: object, remedies: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.remedies = tuple(remedies)

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class InvalidArgumentError(AvarnetError, ValueError):
    """An option or argument value is out of range or malformed (also a ValueError for callers)."""


class NonFiniteError(AvarnetError):
    """Values that must be finite (features, scores, statistics) hold NaN or infinity."""


class OutputError(AvarnetError):
    """A result cannot be written: permission denied, disk full, read-only filesystem."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a command is by code that must clean up after itself (its child
    processes, its temporary files); the command line reports it as it reports Ctrl-C."""


# OSError numbers that mean "the environment refused", not "avarnet is broken".
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
        errno.EROFS,
        errno.EDQUOT,
        errno.ENOENT,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.ENAMETOOLONG,
        errno.EMFILE,
        errno.ELOOP,
        errno.EEXIST,
        errno.ENOTEMPTY,
        errno.EFBIG,
        errno.EIO,
        errno.ENXIO,
        errno.ENODEV,
        errno.EBUSY,
    }
)


def environment_error_line(e: OSError) -> str | None:
    """One line for an OSError the user can fix (permissions, disk full, ...), else None."""
    if e.errno not in ENVIRONMENT_ERRNOS:
        return None
    reason = e.strerror or type(e).__name__
    where = e.filename if e.filename is not None else None
    if e.errno == errno.ENOSPC:
        reason = "no space left on device"
    return f"{where}: {reason}" if where is not None else reason
