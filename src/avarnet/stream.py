"""Live inference: a source (file, URL or capture device) -> one prediction per segment, with alerts.

Pipeline (one process)::

    decoder thread ── SegmentSource: demux + decode, cut into segments ──▶ SegmentQueue (bounded)
    main thread    ── SegmentEncoder (MobileViT, Wav2Vec2 with left context) ──▶ StreamingPredictor
                   ── AlertTracker ──▶ records (JSON lines, live view, webhook)

The decoder never waits on the model for live sources and ``--realtime`` files: when the queue is
full the oldest segment is dropped and counted. Files read as fast as possible block instead (no
drops), so their scores equal ``predict --causal`` for the same file, which uses the same
:class:`SegmentSource` and :class:`SegmentEncoder` (:func:`causal_features`).

A stream cannot look ahead, so it computes causal audio features (:mod:`avarnet.features`): Wav2Vec2
per segment over the segment's audio plus a stated look-back. A checkpoint trained on causal
features (``extract --audio-features causal``) is fed exactly what it was trained on; one trained on
chunked features gets causal ones, and :func:`check_live_features` says so (or refuses).

Sources: an existing path is a file (``/dev/video*`` is a V4L2 capture device on Linux); anything
with ``://`` is a network URL (RTSP is read over TCP). Other capture APIs are reached with
``input_format`` (``avfoundation`` on macOS, ``dshow`` on Windows) and FFmpeg ``options``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from .alerts import AlertRule, AlertTracker, WebhookPoster
from .checkpoint import Checkpoint
from .config import FeatureSpec
from .encoders import resolve_device
from .errors import AvarnetError
from .features import (  # noqa: F401  (re-exported: avarnet.stream's public names)
    BATCH_SEGMENTS,
    CPU_FRAME_BATCH,
    GPU_FRAME_BATCH,
    Extractor,
    SegmentEncoder,
    causal_features,
    chunked_audio,
    cosine,
    live_spec,
    split_chunks,
)
from .inference import anomaly_scores, model_input, window_probs
from .media import (  # noqa: F401  (re-exported)
    AUDIO_LAG_LIMIT_S,
    MAX_AUDIO_HELD_S,
    MAX_TIME_JUMP_S,
    Segment,
    SegmentCutter,
    SegmentSource,
    SourceError,
    SourceInfo,
    source_kind,
)
from .runtime import PRECISIONS, autocast_dtype, quantize_audio_encoder  # noqa: F401

log = logging.getLogger("avarnet")

QUEUE_SEGMENTS = 8  # decoded segments waiting for the model (~0.5 MB each at 288p)
STOP_GRACE_S = 3.0  # after a stop request, how long to wait for a decoder stuck in a read
POLL_S = 0.1
TOP_K = 3  # probabilities listed per segment record


# ---------------------------------------------------------------------------------- hand-over


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


# ---------------------------------------------------------------------------------- predictor


class StreamingPredictor:
    """One prediction per pushed segment, from that segment and the ones before it.

    Keeps the last L = ``seq_len`` normalised inputs; the prediction for segment t is the last step
    of the model run on segments [t-L+1 .. t], exactly ``step_probabilities(..., causal=True)``.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        extractor: Extractor | None = None,
        *,
        audio_context_seconds: float | None = None,
        autocast_dtype: torch.dtype | None = None,
        model: Callable | None = None,
    ) -> None:
        self.ckpt = ckpt
        self.model = ckpt.model if model is None else model  # e.g. an ONNX Runtime session
        self.seq_len = ckpt.train_config.seq_len
        self.segment_seconds = ckpt.spec.segment_seconds
        self.spec = live_spec(ckpt.spec, audio_context_seconds)
        self.encoder = None
        if extractor is not None:
            self.encoder = SegmentEncoder(
                extractor.with_spec(self.spec), autocast_dtype=autocast_dtype
            )
        self._window: deque[np.ndarray] = deque(maxlen=self.seq_len)
        self.index = 0  # index of the next segment

    def reset(self) -> None:
        """Start over: empty window, no audio context, segment index 0."""
        self._window.clear()
        self.index = 0
        if self.encoder is not None:
            self.encoder.reset()

    def push_features(
        self,
        video: np.ndarray,
        audio: np.ndarray,
        has_audio: bool = True,
        *,
        start: float | None = None,
        end: float | None = None,
    ) -> dict:
        """Features of the next segment, video (Dv,) and audio (Da,) -> its prediction.

        Returns {"segment", "start", "end", "label", "anomaly_score", "probabilities"}; times default
        to the segment index times ``segment_seconds``.
        """
        tensors = {
            "video": np.asarray(video, np.float32)[None],  # (1, Dv)
            "audio": np.asarray(audio, np.float32)[None],  # (1, Da)
            "audio_mask": np.array([bool(has_audio)]),
        }
        self._window.append(model_input(self.ckpt, tensors)[0])  # (D,)
        n = len(self._window)
        x = np.stack(self._window)  # (n, D)
        probs = window_probs(self.model, x, [0], [n], self.seq_len)[0, n - 1]  # (C,)
        index = self.index
        self.index += 1
        start = index * self.segment_seconds if start is None else start
        end = start + self.segment_seconds if end is None else end
        classes = self.ckpt.classes
        return {
            "segment": index,
            "start": float(start),
            "end": float(end),
            "label": classes[int(probs.argmax())],
            "anomaly_score": float(anomaly_scores(probs[None], classes)[0]),
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
        }

    def push(self, frames: np.ndarray, audio: np.ndarray) -> dict:
        """Raw segment -> prediction: frames (k, H, W, 3) or (H, W, 3) uint8 RGB, audio (S,) float32.

        Audio is this segment's samples at the spec's rate (16 kHz); the predictor keeps the left
        context itself. Needs the ``extractor`` given at construction.
        """
        if self.encoder is None:
            raise ValueError(
                "push() needs a StreamingPredictor built with an extractor; use push_features()"
            )
        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 3 else frames
        start = self.index * self.segment_seconds
        seg = Segment(
            self.index, start, start + self.segment_seconds, frames, np.asarray(audio, np.float32)
        )
        f = self.encoder.encode([seg])
        return self.push_features(
            f["video"][0], f["audio"][0], bool(f["audio_mask"][0]), start=seg.start, end=seg.end
        )


# ------------------------------------------------------------------------- live vs trained-on


DRIFT_SECONDS = 60.0  # media compared with the trained-on features when they differ


class FeatureMismatchError(AvarnetError):
    """``--strict``: the checkpoint was trained on features a live stream cannot compute."""


def feature_mismatch(trained: FeatureSpec, live: FeatureSpec) -> str | None:
    """One line saying how live features differ from a checkpoint's, or None when they do not."""
    if trained.audio_mode == live.audio_mode == "causal":
        if math.isclose(trained.audio_context_seconds, live.audio_context_seconds):
            return None
    return (
        f"the checkpoint was trained on {trained.describe_audio()} audio features, but a live "
        f"stream computes {live.describe_audio()} ones, so live scores differ from evaluated ones"
    )


def check_live_features(ckpt: Checkpoint, live: FeatureSpec, strict: bool = False) -> str | None:
    """Say once, loudly, when live features differ from the checkpoint's; with ``strict`` refuse.

    Returns the warning (None when they agree). Raises :class:`FeatureMismatchError` under strict.
    """
    problem = feature_mismatch(ckpt.spec, live)
    if problem is None:
        return None
    fix = (
        f"extract with --audio-features causal --audio-context "
        f"{live.audio_context_seconds:g} and retrain to score live as evaluated"
    )
    if strict:
        raise FeatureMismatchError(f"{problem} (--strict); {fix}")
    log.warning(
        "LIVE FEATURES DIFFER: %s; the first minute is measured against them; %s", problem, fix
    )
    return problem


class FeatureDrift:
    """Compares the first ``seconds`` of causal audio features with the chunked ones the
    checkpoint was trained on (same audio, computed as ``extract`` does)."""

    def __init__(self, chunked: Extractor, seconds: float = DRIFT_SECONDS) -> None:
        self.extractor = chunked
        self.limit = max(1, round(seconds / chunked.spec.segment_seconds))
        self.samples: list[np.ndarray] = []
        self.live: list[np.ndarray] = []
        self.segments = 0

    def add(self, batch: Sequence[Segment], audio: np.ndarray) -> bool:
        """Collect contiguous segments from the start; True once enough have been seen."""
        for seg, feat in zip(batch, audio, strict=True):
            if seg.index != self.segments or self.segments >= self.limit:
                return True  # a dropped segment or enough: compare what was collected
            self.samples.append(seg.audio)
            self.live.append(feat)
            self.segments += 1
        return self.segments >= self.limit

    def report(self, live: FeatureSpec) -> dict:
        spec = self.extractor.spec
        track = np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)
        chunked, mask = chunked_audio(
            self.extractor.audio, split_chunks(track, spec), self.segments, spec.segment_seconds
        )
        causal = np.stack(self.live)
        has = mask & (np.abs(causal).sum(1) > 0)
        cos = cosine(causal[has], chunked[has]) if has.any() else np.zeros(0)
        result = {
            "trained_on": spec.describe_audio(),
            "live": live.describe_audio(),
            "compared_seconds": round(self.segments * spec.segment_seconds, 3),
            "audio_cosine_mean": round(float(cos.mean()), 4) if cos.size else None,
            "audio_cosine_min": round(float(cos.min()), 4) if cos.size else None,
        }
        if cos.size:
            log.warning(
                "LIVE FEATURES DIFFER: on the first %.0f s, live audio features have cosine %.3f on "
                "average (min %.3f) to the %s features the checkpoint was trained on",
                result["compared_seconds"],
                result["audio_cosine_mean"],
                result["audio_cosine_min"],
                spec.describe_audio(),
            )
        self.samples, self.live = [], []
        return result


# -------------------------------------------------------------------------------------- runner


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


STATS_RESERVOIR = 4096  # samples kept per statistic: exact percentiles up to this many segments
SUMMARY_EVENTS = 100  # closed events listed in the summary (the most recent; all are counted)


class BoundedStats:
    """Count, last, max and p50/p95 of a series in constant memory, however long the stream runs.

    Percentiles come from a uniform reservoir sample of at most ``capacity`` values (exact while
    fewer have been added); non-finite values are counted apart and never enter the statistics.
    """

    def __init__(self, capacity: int = STATS_RESERVOIR, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self.non_finite = 0
        self.last: float | None = None
        self.max: float | None = None
        self._sample: list[float] = []
        self._rng = np.random.default_rng(seed)

    def add(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            self.non_finite += 1
            return
        self.count += 1
        self.last = value
        self.max = value if self.max is None else max(self.max, value)
        if len(self._sample) < self.capacity:
            self._sample.append(value)
        else:
            j = int(self._rng.integers(self.count))
            if j < self.capacity:
                self._sample[j] = value

    def __len__(self) -> int:
        return len(self._sample)

    def percentiles(self, digits: int = 1) -> dict | None:
        if not self._sample:
            return None
        p50, p95 = np.percentile(self._sample, [50, 95])
        return {
            "p50": round(float(p50), digits),
            "p95": round(float(p95), digits),
            "max": round(float(self.max), digits),
        }


@dataclass
class StreamSummary:
    """How a stream went; ``record()`` is its JSON summary line."""

    source: str
    end_reason: str = "not started"
    complete: bool = False  # ended normally (end of input or a stop request)
    interrupted: bool = False
    segments: int = 0
    dropped: int = 0
    media_seconds: float = 0.0
    wall_seconds: float = 0.0
    latency_ms: BoundedStats = field(default_factory=BoundedStats)
    compute_ms: BoundedStats = field(default_factory=BoundedStats)
    lag_s: BoundedStats = field(default_factory=BoundedStats)
    events: deque = field(default_factory=lambda: deque(maxlen=SUMMARY_EVENTS))  # latest closed
    events_total: int = 0
    features: dict | None = None  # live vs trained-on features (check_live_features)
    webhook: dict | None = None
    label: str | None = None  # argmax of the mean probabilities over all segments
    queue_high_water: int = 0

    @property
    def realtime_factor(self) -> float:
        """Seconds of media processed per wall-clock second."""
        return self.media_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def record(self) -> dict:
        return {
            "type": "summary",
            "source": self.source,
            "end_reason": self.end_reason,
            "complete": self.complete,
            "interrupted": self.interrupted,
            "segments": self.segments,
            "dropped": self.dropped,
            "media_seconds": round(self.media_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "realtime_factor": round(self.realtime_factor, 3),
            "latency_ms": self.latency_ms.percentiles(),
            "compute_ms": self.compute_ms.percentiles(),
            "lag_s": {"final": round(self.lag_s.last, 3), "max": round(self.lag_s.max, 3)}
            if self.lag_s.count
            else None,
            "queue_high_water": self.queue_high_water,
            "label": self.label,
            "events": list(self.events),
            "events_total": self.events_total,
            "features": self.features,
            "webhook": self.webhook,
        }


def segment_record(
    pred: dict, latency_ms: float, compute_ms: float, lag_s: float | None, has_audio: bool
) -> dict:
    """The JSON line of one segment: time span, label, score, top probabilities, latency."""
    top = sorted(pred["probabilities"].items(), key=lambda kv: -kv[1])[:TOP_K]
    return {
        "type": "segment",
        "segment": pred["segment"],
        "start": round(pred["start"], 6),
        "end": round(pred["end"], 6),
        "label": pred["label"],
        "anomaly_score": round(pred["anomaly_score"], 6),
        "top": {c: round(p, 6) for c, p in top},
        "has_audio": has_audio,
        "latency_ms": round(latency_ms, 1),
        "compute_ms": round(compute_ms, 1),
        "lag_s": None if lag_s is None else round(lag_s, 3),
    }


class _Runner:
    """Decoder thread -> queue -> encoders/model/alerts in the calling thread."""

    def __init__(
        self,
        source: SegmentSource,
        predictor: StreamingPredictor,
        options: StreamOptions,
        emit: Callable[[dict], None],
        webhook: WebhookPoster | None,
    ) -> None:
        self.source = source
        self.predictor = predictor
        self.options = options
        self.emit = emit
        self.webhook = webhook
        self.tracker = AlertTracker(options.rule)
        self.queue = SegmentQueue(options.queue_segments, drop_oldest=source.paced)
        self.summary = StreamSummary(source.source)
        self._prob_sum: np.ndarray | None = None
        self._reader_error: str | None = None
        trained = predictor.ckpt.spec
        self.drift = None
        if trained.audio_mode == "chunked" and predictor.encoder is not None:
            self.drift = FeatureDrift(predictor.encoder.extractor.with_spec(trained))

    def run(self) -> StreamSummary:
        reader = threading.Thread(target=self._pump, name="avarnet-decoder", daemon=True)
        started = time.monotonic()
        reader.start()
        try:
            self._consume()
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self.source.stop.set()
            self.queue.abort()
        finally:
            self.summary.wall_seconds = time.monotonic() - started
            reader.join(timeout=STOP_GRACE_S)
            self._finish(reader.is_alive())
        return self.summary

    def _pump(self) -> None:
        try:
            for segment in self.source:
                if not self.queue.put(segment):
                    break
        except Exception as e:  # a decoder failure ends the stream; the consumer reports it
            self._reader_error = f"{type(e).__name__}: {e}"
        finally:
            self.queue.close()

    def _consume(self) -> None:
        stop_seen: float | None = None
        while True:
            batch = self.queue.get_batch(self.options.batch_segments, POLL_S)
            if batch is None:
                return
            if batch:
                self._process(batch)
            elif self.source.stop.is_set():
                stop_seen = stop_seen or time.monotonic()
                if time.monotonic() - stop_seen > STOP_GRACE_S:
                    return  # the decoder is stuck in a read: do not wait for it

    def _process(self, batch: list[Segment]) -> None:
        t0 = time.monotonic()
        feats = self.predictor.encoder.encode(batch)
        if self.drift is not None and self.drift.add(batch, feats["audio"]):
            self.summary.features = self.drift.report(self.predictor.spec)
            self.drift = None
        for i, seg in enumerate(batch):
            pred = self.predictor.push_features(
                feats["video"][i],
                feats["audio"][i],
                bool(feats["audio_mask"][i]),
                start=seg.start,
                end=seg.end,
            )
            now = time.monotonic()
            lag = (
                now - (self.source.clock0 + seg.end)
                if self.source.paced and self.source.clock0 is not None
                else None
            )
            record = segment_record(
                pred, (now - seg.ready) * 1e3, (now - t0) * 1e3, lag, bool(feats["audio_mask"][i])
            )
            self._account(pred, record)
            self.emit(record)
            for update in self.tracker.update(
                seg.start, seg.end, pred["anomaly_score"], pred["probabilities"]
            ):
                self._event(update.event.record())

    def _account(self, pred: dict, record: dict) -> None:
        s = self.summary
        s.segments += 1
        s.media_seconds = pred["end"]
        s.latency_ms.add(record["latency_ms"])
        s.compute_ms.add(record["compute_ms"])
        if record["lag_s"] is not None:
            s.lag_s.add(record["lag_s"])
        probs = np.array(list(pred["probabilities"].values()))
        self._prob_sum = probs if self._prob_sum is None else self._prob_sum + probs

    def _event(self, record: dict) -> None:
        if record["state"] == "closed":
            self.summary.events.append(record)
            self.summary.events_total += 1
        self.emit(record)
        if self.webhook is not None:
            self.webhook.post(record)

    def _finish(self, reader_stuck: bool) -> None:
        if self.drift is not None and self.drift.segments:
            self.summary.features = self.drift.report(self.predictor.spec)
        for update in self.tracker.finish():
            self._event(update.event.record())
        s = self.summary
        s.dropped, s.queue_high_water = self.queue.dropped, self.queue.high_water
        s.end_reason, s.complete = self.source.end_reason, self.source.complete
        if self._reader_error is not None:
            s.end_reason, s.complete = f"decoder failed: {self._reader_error}", False
        elif s.interrupted:
            s.end_reason = f"interrupted at {s.media_seconds:.1f} s"
        elif reader_stuck:
            s.end_reason, s.complete = (
                f"stopped at {s.media_seconds:.1f} s (the source did not answer)",
                True,
            )
        if self._prob_sum is not None:
            s.label = self.predictor.ckpt.classes[int(self._prob_sum.argmax())]
        if self.webhook is not None:
            s.webhook = self.webhook.close().to_dict()
        self.emit(s.record())


def stream_extractor(ckpt: Checkpoint, device: str = "auto", precision: str = "fp32") -> Extractor:
    """The encoders a checkpoint's feature spec names; ``precision`` int8 quantises Wav2Vec2 (CPU)."""
    dev = resolve_device(device)
    autocast_dtype(precision, dev)  # validates
    extractor = Extractor.from_spec(ckpt.spec, str(dev), ckpt.encoder_state)
    if precision == "int8":
        quantize_audio_encoder(extractor.audio)
    return extractor


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


def run_stream(
    source: str | Path | SegmentSource,
    ckpt: Checkpoint,
    extractor: Extractor,
    emit: Callable[[dict], None],
    options: StreamOptions | None = None,
    *,
    stop: threading.Event | None = None,
    webhook: WebhookPoster | None = None,
    model: Callable | None = None,
) -> StreamSummary:
    """Read ``source`` to its end (or until ``stop`` is set) and emit one record per segment.

    ``source`` is a path or URL, or a :class:`SegmentSource` opened by :func:`open_source` (then
    its own reading options and stop event apply). ``emit`` receives, in order: ``{"type":
    "segment", ...}`` per segment, ``{"type": "event", "state": "open"|"closed", ...}`` per alert
    change (also POSTed to ``webhook``), and a final ``{"type": "summary", ...}``. On a stop request
    or end of input, queued segments are still processed and open events closed. Raises
    :class:`SourceError` / ``media.MediaError`` when the source cannot be opened. ``model``
    replaces the checkpoint's temporal model (e.g. its ONNX export). When the checkpoint was
    trained on other features than the stream computes, the first minute's features are compared
    with the trained-on ones (:class:`FeatureDrift`) and the summary says how far they are.
    """
    options = options or StreamOptions()
    src = (
        source
        if isinstance(source, SegmentSource)
        else open_source(source, ckpt.spec, options, stop)
    )
    predictor = StreamingPredictor(
        ckpt,
        extractor,
        audio_context_seconds=options.audio_context_seconds,
        autocast_dtype=options.autocast_dtype,
        model=model,
    )
    return _Runner(src, predictor, options, emit, webhook).run()


# ----------------------------------------------------------------------------------- live view


BAR_WIDTH = 20
CLEAR_LINE = "\r\x1b[2K"
RED, BOLD, RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LiveView:
    """Terminal view: one status line rewritten per segment, a permanent line per alert change."""

    def __init__(self, out: TextIO, threshold: float) -> None:
        self.out = out
        self.threshold = threshold
        self.open_event: dict | None = None

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def __call__(self, record: dict) -> None:
        kind = record["type"]
        if kind == "segment":
            self.write(CLEAR_LINE + self.status_line(record))
        elif kind == "event":
            self.open_event = record if record["state"] == "open" else None
            self.write(CLEAR_LINE + self.event_line(record) + "\n")
        elif kind == "summary":
            self.write(CLEAR_LINE)

    def status_line(self, r: dict) -> str:
        score = r["anomaly_score"]
        finite = score is not None and math.isfinite(score)
        filled = min(BAR_WIDTH, max(0, round(score * BAR_WIDTH))) if finite else 0
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        hot = finite and score >= self.threshold
        shown = f"{score:.2f}" if finite else " n/a"
        colour = f"{RED}{BOLD}" if hot else ""
        lag = f"  lag {r['lag_s']:.1f} s" if r.get("lag_s") is not None else ""
        alert = (
            f"  {RED}ALERT #{self.open_event['id']} {self.open_event['class']}{RESET}"
            if self.open_event
            else ""
        )
        return (
            f"{_clock(r['start'])}  {r['label']:<14s} {colour}{bar} {shown}{RESET if hot else ''}"
            f"  {r['latency_ms']:.0f} ms{lag}{alert}"
        )

    @staticmethod
    def event_line(r: dict) -> str:
        if r["state"] == "open":
            return f"{RED}{BOLD}{_clock(r['start'])}  ALERT #{r['id']} opened: {r['class']} (score {r['peak_score']:.2f}){RESET}"
        return (
            f"{_clock(r['end'])}  alert #{r['id']} closed: {r['class']}, {_clock(r['start'])}-{_clock(r['end'])},"
            f" peak {r['peak_score']:.2f} ({r['closed_by']})"
        )


def summary_text(record: dict) -> str:
    """Human-readable lines of a summary record."""
    lat, comp, lag = record["latency_ms"], record["compute_ms"], record["lag_s"]
    lines = [
        f"stream ended: {record['end_reason']}",
        f"  {record['segments']} segments ({record['media_seconds']:.1f} s of media) in {record['wall_seconds']:.1f} s"
        f" = {record['realtime_factor']:.2f}x real time; dropped {record['dropped']}",
    ]
    if lat:
        lines.append(
            f"  latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms"
            f" (compute p50 {comp['p50']:.0f} ms, p95 {comp['p95']:.0f} ms)"
        )
    if lag:
        lines.append(f"  lag behind the source: final {lag['final']:.2f} s, max {lag['max']:.2f} s")
    if record["label"]:
        lines.append(f"  overall: {record['label']}")
    lines.append(f"  events: {record.get('events_total', len(record['events']))}")
    lines += [
        f"    #{e['id']} {e['class']} {e['start']:.1f}-{e['end']:.1f} s, peak {e['peak_score']:.2f}"
        for e in record["events"]
    ]
    if record["webhook"]:
        w = record["webhook"]
        lines.append(
            f"  webhook: {w['delivered']} delivered, {w['failed']} failed, {w['dropped']} dropped"
        )
    return "\n".join(lines)


class StreamOutput:
    """Where records go: JSON lines to a text stream, the live view, plain event lines otherwise."""

    def __init__(self, jsonl: TextIO | None, view: LiveView | None, text: TextIO) -> None:
        self.jsonl = jsonl
        self.view = view
        self.text = text
        self.summary: dict = {}

    def __call__(self, record: dict) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.jsonl.flush()
        if self.view is not None:
            self.view(record)
        elif record["type"] == "event":
            print(
                f"event #{record['id']} {record['state']}: {record['class']} from {record['start']:.1f} s"
                f" (peak {record['peak_score']:.2f})",
                file=self.text,
                flush=True,
            )
        if record["type"] == "summary":
            self.summary = record


@contextlib.contextmanager
def stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C sets ``stop`` (graceful: queued segments are finished); a second one aborts."""

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nstopping: finishing queued segments (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
