"""Where a stream's segments come from: open a source, hand segments to the model through a
bounded queue (the decoder never waits on the model for live sources)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..alerts import AlertRule
from ..config import FeatureSpec
from ..features import BATCH_SEGMENTS
from ..media import SegmentSource

QUEUE_SEGMENTS = 8  # decoded segments waiting for the model (~0.5 MB each at 288p)
POLL_S = 0.1


@dataclass(frozen=True)
class StreamOptions:
    """How :func:`run_stream` reads and reports."""

    realtime: bool = False  # files: pace input at the file's own speed (live sources always are)
    rule: AlertRule = field(default_factory=AlertRule)
    queue_segments: int = QUEUE_SEGMENTS
    batch_segments: int = BATCH_SEGMENTS
    audio_context_seconds: float | None = None  # None: the checkpoint's (live_spec)
    input_format: str | None = None  # FFmpeg input format, e.g. v4l2, avfoundation, dshow
    options: dict[str, str] = field(default_factory=dict)  # FFmpeg demuxer/protocol options
    autocast_dtype: torch.dtype | None = None  # e.g. torch.float16 on a GPU


class SegmentQueue:
    """Bounded hand-over between the decoder thread and the model.

    ``drop_oldest``: a full queue discards its oldest segment (counted in ``dropped``) so the
    producer never waits; otherwise :meth:`put` blocks until there is room.
    """

    def __init__(self, capacity: int = QUEUE_SEGMENTS, drop_oldest: bool = True) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self.high_water = 0
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._aborted = False

    def put(self, item) -> bool:
        """Add ``item``; False when the queue was aborted (the consumer is gone)."""
        with self._cond:
            while not self.drop_oldest and len(self._items) >= self.capacity and not self._aborted:
                self._cond.wait(POLL_S)
            if self._aborted:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """No more items will come; getters drain what is left, then get None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Consumer gone: discard everything and release a waiting producer."""
        with self._cond:
            self._aborted = self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def get_batch(self, max_items: int, timeout: float) -> list | None:
        """Up to ``max_items`` waiting items (at least one, waiting up to ``timeout`` s for it).

        Returns [] on timeout and None once the queue is closed and empty.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None if self._closed else []
            out = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
            self._cond.notify_all()
            return out


def open_source(
    source: str | Path,
    spec: FeatureSpec,
    options: StreamOptions | None = None,
    stop: threading.Event | None = None,
) -> SegmentSource:
    """Open ``source`` for streaming as ``options`` say; raises SourceError / media.MediaError."""
    options = options or StreamOptions()
    return SegmentSource(
        source,
        spec,
        realtime=options.realtime,
        stop=stop,
        input_format=options.input_format,
        options=options.options,
    )
