"""Progress bars for every long command, readable both on a terminal and in a log file.

On a terminal a bar redraws itself in place (tqdm). When its output is not a terminal (``avarnet
train ... > log 2>&1``, a service's journal) the in-place redraws would pile up as one line of
thousands of carriage returns; there the bar writes a whole line at most every
:data:`LOG_INTERVAL_S` seconds (or every ``AVARNET_PROGRESS_SECONDS``, where that is set), and its
final state when it closes.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from tqdm import tqdm

ProgressBar = tqdm  # what :func:`progress_bar` returns
LOG_INTERVAL_S = 5.0  # at most one progress line this often when the output is not a terminal
INTERVAL_ENV = "AVARNET_PROGRESS_SECONDS"  # overrides LOG_INTERVAL_S
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # cursor movements of stacked bars


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an open terminal (False for files, pipes, closed or missing streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def log_interval() -> float:
    """Seconds between two progress lines in a log: ``AVARNET_PROGRESS_SECONDS`` where it holds a
    positive number, else :data:`LOG_INTERVAL_S`."""
    try:
        seconds = float(os.environ.get(INTERVAL_ENV, ""))
    except ValueError:
        return LOG_INTERVAL_S
    return seconds if math.isfinite(seconds) and seconds > 0 else LOG_INTERVAL_S


class LineWriter:
    """A bar's output stream for a log: each redraw becomes the pending line, written as a whole
    line when ``interval`` seconds have passed since the last one, and at the bar's end (the newline
    tqdm writes when it closes). A line equal to the one written before is not repeated."""

    def __init__(
        self,
        stream: IO[str],
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream, self.clock = stream, clock
        self.interval = log_interval() if interval is None else interval
        self.pending = ""
        self.written = ""
        self.last_t: float | None = None

    def write(self, text: str) -> int:
        text = str(text)
        parts = [p.strip() for p in re.split(r"[\r\n]", _CONTROL.sub("", text))]
        parts = [p for p in parts if p]
        if parts:
            self.pending = parts[-1]
        now = self.clock()
        due = self.last_t is None or now - self.last_t >= self.interval
        if self.pending and ("\n" in text or due):
            if self.pending != self.written:
                self.stream.write(self.pending + "\n")
                self.stream.flush()
                self.written, self.last_t = self.pending, now
            self.pending = ""
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (same arguments) on stderr, or on ``file``; line by line when that is not a
    terminal (:class:`LineWriter`)."""
    stream = kwargs.pop("file", None) or sys.stderr
    if kwargs.get("disable") or is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)  # a log has no width
    writer = LineWriter(stream)
    kwargs.setdefault("mininterval", writer.interval)
    kwargs.setdefault("ascii", True)
    return tqdm(iterable, file=writer, **kwargs)


def write_line(message: str, file: IO[str] | None = None) -> None:
    """Print one line (on stdout unless ``file``) without breaking a bar drawn on a terminal."""
    tqdm.write(message, file=file)


__all__ = [
    "INTERVAL_ENV",
    "LOG_INTERVAL_S",
    "LineWriter",
    "ProgressBar",
    "is_terminal",
    "log_interval",
    "progress_bar",
    "write_line",
]
