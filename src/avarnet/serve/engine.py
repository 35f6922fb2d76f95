"""The shared model: one thread per checkpoint takes segments from every camera that uses it,
encodes them in batches across cameras, and runs each camera's temporal window and alert rule.

Encoders (MobileViT, Wav2Vec2) are loaded once and shared, so N cameras cost one model in memory
and one batched forward per step instead of N. Per camera the engine keeps what a single
``avarnet stream`` keeps: the audio look-back of the checkpoint's live feature spec, the
last L inputs (:class:`avarnet.stream.StreamingPredictor`) and an :class:`avarnet.alerts.AlertTracker`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..alerts import AlertRule, AlertTracker
from ..checkpoint import Checkpoint
from ..config import NORMAL_CLASS
from ..features import Extractor, frame_batch, live_spec
from ..media import Segment
from ..stream import StreamingPredictor, check_live_features
from .cameras import SessionMarker

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
    ignore: tuple[str, ...]
    predictor: StreamingPredictor
    tracker: AlertTracker | None = None
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    last_index: int | None = None
    wall0: float = 0.0
    mono0: float = 0.0
    session: int = 0
    queue: deque = field(default_factory=deque)
    dropped: int = 0
    segments: int = 0
    lag_s: float | None = None
    max_lag_s: float = 0.0


class Engine(threading.Thread):
    """Shared encoders + per-camera temporal state for the cameras of one checkpoint.

    ``handler`` receives, in the engine thread: ``("segment", SegmentResult)``,
    ``("session_start", camera, marker)`` and ``("session_end", camera, updates, stopped)`` (the
    events closed because the source ended, or the server is stopping).
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
    ) -> None:
        super().__init__(name="avarnet-engine", daemon=True)
        self.ckpt = ckpt
        self.extractor = extractor
        self.handler = handler
        self.batch_segments = batch_segments
        self.queue_segments = queue_segments
        live = live_spec(ckpt.spec, audio_context_seconds)  # the features `stream` computes
        check_live_features(ckpt, live)  # warns once when they differ from the training features
        self.audio_context_seconds = live.audio_context_seconds
        self.context_samples = round(live.audio_context_seconds * ckpt.spec.sample_rate)
        self.cameras: dict[str, CameraState] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._rr = 0  # round-robin start among cameras
        self.batches = 0
        self.batch_sizes: deque[int] = deque(maxlen=200)

    def add_camera(self, name: str, rule: AlertRule, ignore: tuple[str, ...]) -> None:
        self.cameras[name] = CameraState(
            name,
            rule,
            ignore,
            StreamingPredictor(self.ckpt, audio_context_seconds=self.audio_context_seconds),
        )

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
        try:
            while True:
                work = self._take()
                if work is None:
                    return
                self._process(work)
        except Exception:
            log.exception("engine failed")
            raise

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
                state.tail, state.last_index = np.zeros(0, np.float32), None
                state.tracker = AlertTracker(state.rule)
                state.wall0, state.session = marker.wall0, marker.session
                state.mono0 = time.monotonic() - (time.time() - marker.wall0)
                self.handler("session_start", name, marker)
            else:
                updates = state.tracker.finish() if state.tracker is not None else []
                self.handler("session_end", name, updates, marker.stopped)
        finally:
            marker.done.set()

    def _run_segments(self, items: list[tuple[str, Segment]]) -> None:
        if not items:
            return
        self.batches += 1
        self.batch_sizes.append(len(items))
        feats = self.encode(items)
        for i, (name, seg) in enumerate(items):
            state = self.cameras[name]
            pred = state.predictor.push_features(
                feats["video"][i],
                feats["audio"][i],
                bool(feats["audio_mask"][i]),
                start=seg.start,
                end=seg.end,
            )
            probs = self._fold(pred["probabilities"], state.ignore)
            score = (
                float(sum(p for c, p in probs.items() if c != NORMAL_CLASS))
                if NORMAL_CLASS in probs
                else float(max(probs.values()))
            )
            label = max(probs.items(), key=lambda kv: kv[1])[0]
            lag = time.monotonic() - (state.mono0 + seg.end) if state.mono0 else None
            state.segments += 1
            state.lag_s = lag
            if lag is not None:
                state.max_lag_s = max(state.max_lag_s, lag)
            tracker = state.tracker or AlertTracker(state.rule)
            state.tracker = tracker
            updates = tracker.update(seg.start, seg.end, score, probs)
            self.handler(
                "segment",
                SegmentResult(
                    name,
                    seg,
                    state.wall0,
                    label,
                    score,
                    probs,
                    bool(feats["audio_mask"][i]),
                    lag,
                    updates,
                ),
            )

    @staticmethod
    def _fold(probs: dict[str, float], ignore: tuple[str, ...]) -> dict[str, float]:
        """Ignored classes count as normal (with no normal class they are removed)."""
        if not ignore:
            return probs
        out = {c: p for c, p in probs.items() if c not in ignore}
        moved = sum(p for c, p in probs.items() if c in ignore)
        if NORMAL_CLASS in out:
            out[NORMAL_CLASS] += moved
        return out

    # -- batched features

    def encode(self, items: list[tuple[str, Segment]]) -> dict[str, np.ndarray]:
        """Features of segments from any cameras: one MobileViT pass and one Wav2Vec2 pass per
        window length, with each camera's own audio look-back."""
        segs = [s for _, s in items]
        k = segs[0].frames.shape[0]
        shapes = {s.frames.shape for s in segs}
        venc = self.extractor.video
        batch = frame_batch(venc.device)
        if len(shapes) == 1:
            video = venc.encode(np.concatenate([s.frames for s in segs]), batch_size=batch)
        else:  # cameras of different sizes: the encoder crops to one size; group by shape
            video = np.zeros((len(segs) * k, venc.dim), np.float32)
            for shape in shapes:
                idx = [i for i, s in enumerate(segs) if s.frames.shape == shape]
                out = venc.encode(np.concatenate([segs[i].frames for i in idx]), batch_size=batch)
                for j, i in enumerate(idx):
                    video[i * k : (i + 1) * k] = out[j * k : (j + 1) * k]
        video = video.reshape(len(segs), k, -1).mean(axis=1).astype(np.float32)
        audio, mask = self._audio(items)
        return {"video": video, "audio": audio, "audio_mask": mask}

    def _audio(self, items: list[tuple[str, Segment]]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.extractor.audio
        out = np.zeros((len(items), enc.dim), np.float32)
        mask = np.zeros(len(items), bool)
        windows: dict[int, tuple[np.ndarray, int]] = {}
        for i, (name, seg) in enumerate(items):
            state = self.cameras[name]
            if state.last_index is not None and seg.index != state.last_index + 1:
                state.tail = state.tail[:0]  # a gap (dropped segments): not this segment's past
            state.last_index = seg.index
            if seg.audio.size == 0:
                state.tail = state.tail[:0]
                continue
            window = np.concatenate([state.tail, seg.audio])
            windows[i] = (window, len(state.tail))
            keep = min(self.context_samples, len(window))
            state.tail = window[len(window) - keep :]
        seg_s = self.ckpt.spec.segment_seconds
        idx = list(windows)
        for i, hidden in zip(idx, enc.encode_batch([windows[i][0] for i in idx]), strict=True):
            context = windows[i][1]
            times = enc.frame_times(len(hidden), -context / enc.sample_rate)
            keep = (times >= 0) & (times < seg_s)
            if keep.any():
                out[i] = hidden[keep].astype(np.float64).mean(axis=0).astype(np.float32)
                mask[i] = True
        return out, mask
