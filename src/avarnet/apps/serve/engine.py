"""The shared model: one thread per checkpoint takes segments from every camera that uses it, and
schedules them through the live pipeline in batches across cameras.

Encoding is :class:`avarnet.features.SegmentEncoder` (one encoder for all cameras, the audio
look-back kept per camera), whichever runtime runs the encoders (PyTorch at fp32, bf16 or int8,
or ONNX Runtime on an export folder: the extractor and model :func:`avarnet.export.load_onnx`
gives); the window, score and ignored classes are each camera's
:class:`avarnet.stream.StreamingPredictor`; events are each camera's
:class:`avarnet.alerts.AlertTracker`. This module only batches and schedules. A failure while
encoding a batch, or while scoring one camera's segment, skips those segments: the cameras
concerned are reported (``fault``), their open events close, and the engine goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...alerts import AlertRule, AlertTracker
from ...checkpoint import Checkpoint
from ...errors import AvarnetError
from ...features import Extractor, SegmentEncoder, live_spec
from ...media import Segment
from ...stream import StreamingPredictor, check_live_features
from .cameras import ERROR_CLOSED_BY, SessionMarker, fault_reason

log = logging.getLogger("avarnet")

POLL_S = 0.1


@dataclass
class SegmentResult:
    """One camera segment's prediction, after ignored classes are folded into normal."""

    camera: str
    segment: Segment
    wall0: float  # epoch s at the session's media time 0
    label: str
    score: float
    probabilities: dict[str, float]
    has_audio: bool
    lag_s: float | None
    updates: list = field(default_factory=list)  # AlertUpdate(s) this segment caused


@dataclass
class CameraState:
    """What the engine keeps per camera."""

    name: str
    rule: AlertRule
    predictor: StreamingPredictor
    tracker: AlertTracker | None = None
    wall0: float = 0.0
    mono0: float = 0.0
    session: int = 0
    queue: deque = field(default_factory=deque)
    dropped: int = 0
    segments: int = 0
    failed: int = 0  # segments skipped by a fault
    gated: int = 0  # segments the checkpoint's motion-and-sound gate held (no encoder ran)
    lag_s: float | None = None
    max_lag_s: float = 0.0


class Engine(threading.Thread):
    """Batches and schedules the segments of the cameras of one checkpoint.

    ``handler`` receives, in the engine thread: ``("segment", SegmentResult)``,
    ``("session_start", camera, marker)``, ``("session_end", camera, updates, closed_by)`` (the
    events closed because the source ended, broke or the server is stopping) and
    ``("fault", camera, reason, updates)`` (a segment of that camera was skipped; ``updates``
    close its open event). A handler that raises is itself reported as a fault.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        extractor: Extractor,
        handler: Callable,
        *,
        batch_segments: int = 16,
        queue_segments: int = 8,
        audio_context_seconds: float | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(name="avarnet-engine", daemon=True)
        self.ckpt = ckpt
        self.handler = handler
        self.batch_segments = batch_segments
        self.queue_segments = queue_segments
        live = live_spec(ckpt.spec, audio_context_seconds)  # the features `stream` computes
        check_live_features(ckpt, live)  # warns once when they differ from the training features
        self.audio_context_seconds = live.audio_context_seconds
        self.encoder = SegmentEncoder(
            extractor.with_spec(live), live.audio_context_seconds, autocast_dtype=autocast_dtype
        )
        self.cameras: dict[str, CameraState] = {}
        self.error: str | None = None  # the last batch failed as a whole (None: healthy)
        self.faults = 0
        self._logged: set[tuple[str, str]] = set()  # (camera, reason) already logged
        self._cond = threading.Condition()
        self._closing = False
        self._rr = 0  # round-robin start among cameras
        self.batches = 0
        self.batch_sizes: deque[int] = deque(maxlen=200)

    def add_camera(self, name: str, rule: AlertRule, ignore: tuple[str, ...]) -> None:
        predictor = StreamingPredictor(
            self.ckpt, audio_context_seconds=self.audio_context_seconds, ignore=ignore
        )
        self.cameras[name] = CameraState(name, rule, predictor)

    # -- camera threads

    def put(self, camera: str, item) -> None:
        """A segment or a session marker from a camera; a full queue drops that camera's oldest segment."""
        with self._cond:
            state = self.cameras[camera]
            q = state.queue
            q.append(item)
            segs = sum(isinstance(x, Segment) for x in q)
            while segs > self.queue_segments:
                for i, x in enumerate(q):
                    if isinstance(x, Segment):
                        del q[i]
                        state.dropped += 1
                        segs -= 1
                        break
            self._cond.notify_all()

    def close(self) -> None:
        """Finish what is queued, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    # -- engine thread

    def run(self) -> None:
        while True:
            work = self._take()
            if work is None:
                return
            try:
                self._process(work)
            except Exception as e:  # noqa: BLE001 - the engine never dies; what failed is reported
                self._fault([name for name, _ in work], e)

    def _take(self) -> list[tuple[str, object]] | None:
        """Up to batch_segments items over all cameras (each camera's in order), markers included."""
        with self._cond:
            while not any(s.queue for s in self.cameras.values()):
                if self._closing:
                    return None
                self._cond.wait(POLL_S)
            names = list(self.cameras)
            names = names[self._rr :] + names[: self._rr]
            self._rr = (self._rr + 1) % max(1, len(names))
            out: list[tuple[str, object]] = []
            more = True
            while more and len(out) < self.batch_segments:
                more = False
                for name in names:
                    q = self.cameras[name].queue
                    if q and len(out) < self.batch_segments:
                        out.append((name, q.popleft()))
                        more = True
            return out

    def _process(self, work: list[tuple[str, object]]) -> None:
        # markers split the work so each camera's order holds: encode the segments before a marker
        pending: list[tuple[str, Segment]] = []
        for name, item in work:
            if isinstance(item, SessionMarker):
                self._run_segments([p for p in pending if p[0] == name])
                pending = [p for p in pending if p[0] != name]
                self._marker(name, item)
            else:
                pending.append((name, item))
        self._run_segments(pending)

    def _marker(self, name: str, marker: SessionMarker) -> None:
        state = self.cameras[name]
        try:
            if marker.kind == "start":
                state.predictor.reset()
                self.encoder.reset(name)
                state.tracker = AlertTracker(state.rule)
                state.wall0, state.session = marker.wall0, marker.session
                state.mono0 = time.monotonic() - (time.time() - marker.wall0)
                self.handler("session_start", name, marker)
            else:
                updates = state.tracker.finish() if state.tracker is not None else []
                self.handler("session_end", name, updates, marker.closed_by)
        except Exception as e:  # noqa: BLE001
            self._fault([name], e)
        finally:
            marker.done.set()

    def _run_segments(self, items: list[tuple[str, Segment]]) -> None:
        if not items:
            return
        self.batches += 1
        self.batch_sizes.append(len(items))
        try:
            feats = self.encoder.encode([s for _, s in items], [name for name, _ in items])
        except Exception as e:  # noqa: BLE001 - skip the batch, say so, go on
            self.error = fault_reason(e)
            self._fault([name for name, _ in items], e)
            return
        self.error = None
        for i, (name, seg) in enumerate(items):
            if "gated" in feats:
                self.cameras[name].gated += bool(feats["gated"][i])
            try:
                self._score(name, seg, feats["video"][i], feats["audio"][i], feats["audio_mask"][i])
            except Exception as e:  # noqa: BLE001 - skip this segment, say so, go on
                self._fault([name], e)

    def _score(self, name: str, seg: Segment, video, audio, has_audio) -> None:
        state = self.cameras[name]
        pred = state.predictor.push_features(
            video, audio, bool(has_audio), start=seg.start, end=seg.end
        )
        lag = time.monotonic() - (state.mono0 + seg.end) if state.mono0 else None
        state.segments += 1
        state.lag_s = lag
        if lag is not None:
            state.max_lag_s = max(state.max_lag_s, lag)
        if state.tracker is None:
            state.tracker = AlertTracker(state.rule)
        score, probs = pred["anomaly_score"], pred["probabilities"]
        updates = state.tracker.update(seg.start, seg.end, score, probs)
        result = SegmentResult(
            name, seg, state.wall0, pred["label"], score, probs, bool(has_audio), lag, updates
        )
        self.handler("segment", result)

    def _fault(self, names: list[str], e: BaseException) -> None:
        """Segments of ``names`` were skipped: log once per camera and reason, close their open
        events (a fresh alert tracker), tell the handler."""
        reason = fault_reason(e)
        self.faults += 1
        for name in dict.fromkeys(names):
            state = self.cameras[name]
            state.failed += 1
            if (name, reason) not in self._logged:
                self._logged.add((name, reason))
                expected = isinstance(e, (AvarnetError, OSError))  # one line; a defect: its trace
                log.error(
                    "camera %s: %s; segment skipped", name, reason, exc_info=None if expected else e
                )
            updates = []
            if state.tracker is not None:
                updates = state.tracker.finish()
                for u in updates:
                    u.event.closed_by = ERROR_CLOSED_BY
            state.tracker = AlertTracker(state.rule)
            try:
                self.handler("fault", name, reason, updates)
            except Exception:  # noqa: BLE001 - a failing report must not stop the engine
                log.exception("camera %s: reporting a fault failed", name)
