"""Atomic file writes that respect the umask, and strict JSON (an undefined number is ``null``).

Every file avarnet writes goes through :func:`atomic_write`: the content goes to a temporary file
in the target folder, is flushed to disk, gets the permissions a plain ``open(path, "w")`` would
give (``0o666 & ~umask``), and is renamed over the target. A reader never sees a half-written file,
and a killed writer leaves only a ``.tmp-*`` file behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TEMP_PREFIX = ".tmp-"
FILE_MODE = 0o666  # before the umask, as open() creates files
MAX_JSON_DEPTH = 100  # nesting of JSON read from files (the parser recurses once per level)
# a string literal, or an unterminated one up to the end: every match attempt succeeds, so one
# linear pass (no backtracking) whatever the text
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)


def current_umask() -> int:
    """The process umask (read from /proc when possible; os.umask briefly changes it otherwise)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file, which is then renamed.

    ``write`` receives the temporary path (in the same folder) and may open it or hand it to a
    library that writes files (safetensors, PyAV). Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_copy(src: str | Path, path: str | Path) -> None:
    """Copy ``src`` to ``path`` atomically, through a new temporary file that only this call
    created (``O_EXCL``, random name): a file or link planted in the folder is never written through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    try:
        with open(src, "rb") as source, os.fdopen(fd, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
            os.fchmod(target.fileno(), FILE_MODE & ~current_umask())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def strict(value: Any) -> Any:
    """A copy of ``value`` that JSON can hold strictly: NaN and +-inf become None.

    Numpy scalars and arrays become Python numbers and lists; tuples become lists.
    """
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of JSON ``text`` nest (brackets inside strings ignored);
    counted without parsing, so a hostile document cannot exhaust the parser's recursion."""
    body = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "replace"), np.uint8)
    if body.size == 0:
        return 0
    steps = np.isin(body, (ord("["), ord("{"))).astype(np.int64) - np.isin(
        body, (ord("]"), ord("}"))
    )
    return int(max(0, np.cumsum(steps).max()))


def loads(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of text from a file; ValueError (one line) when it nests deeper than
    ``max_depth`` levels or is not JSON."""
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} levels deep (at most {max_depth})")
    return json.loads(text)


def dumps(value: Any, indent: int | None = 1, **kwargs: Any) -> str:
    """Strict JSON text of ``value`` (non-finite numbers as null; never a NaN literal)."""
    return json.dumps(strict(value), indent=indent, allow_nan=False, **kwargs)


def write_json(path: str | Path, value: Any, indent: int | None = 1) -> None:
    """Write ``value`` as strict UTF-8 JSON to ``path`` atomically."""
    atomic_write_text(path, dumps(value, indent=indent, ensure_ascii=False) + "\n")
