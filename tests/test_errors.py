"""Typed errors: one line each, and which OS errors are the user's to fix."""

from __future__ import annotations

import errno

import pytest

from avarnet.errors import (
    AvarnetError,
    InvalidArgumentError,
    NonFiniteError,
    OutputError,
    environment_error_line,
)


def test_an_avarnet_error_is_one_line():
    e = AvarnetError("a.mp4: cannot decode\n  stream 0:\tbroken   header")
    assert str(e) == "a.mp4: cannot decode stream 0: broken header"


def test_error_kinds():
    assert issubclass(InvalidArgumentError, ValueError)  # callers may catch ValueError
    for cls in (InvalidArgumentError, NonFiniteError, OutputError):
        assert issubclass(cls, AvarnetError)
    assert not issubclass(NonFiniteError, ValueError)


@pytest.mark.parametrize(
    "err, line",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/out/x"),
            "/out/x: no space left on device",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/data"), "/data: Permission denied"),
        (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
        (OSError(errno.EBADF, "Bad file descriptor", "/x"), None),  # a defect, not the user's
        (OSError("no errno at all"), None),
    ],
)
def test_environment_error_line(err, line):
    assert environment_error_line(err) == line
