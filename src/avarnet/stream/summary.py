"""What a stream reports: the JSON record of each segment and the summary of the whole run, with
statistics in constant memory however long it runs."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..redact import redact

TOP_K = 3  # probabilities listed per segment record
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
    gated: int | None = None  # segments held by the motion-and-sound gate (None: no gate)

    @property
    def realtime_factor(self) -> float:
        """Seconds of media processed per wall-clock second."""
        return self.media_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def record(self) -> dict:
        return {
            "type": "summary",
            "source": redact(self.source),
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
            **({} if self.gated is None else {"gated": self.gated}),
            "label": self.label,
            "events": list(self.events),
            "events_total": self.events_total,
            "features": self.features,
            "webhook": self.webhook,
        }


def segment_record(
    pred: dict,
    latency_ms: float,
    compute_ms: float,
    lag_s: float | None,
    has_audio: bool,
    gated: bool | None = None,
) -> dict:
    """The JSON line of one segment: time span, label, score, top probabilities, latency; with a
    motion-and-sound gate, ``gated``: whether its features were held (no encoder ran)."""
    top = sorted(pred["probabilities"].items(), key=lambda kv: -kv[1])[:TOP_K]
    gate = {} if gated is None else {"gated": bool(gated)}
    return {
        "type": "segment",
        "segment": pred["segment"],
        "start": round(pred["start"], 6),
        "end": round(pred["end"], 6),
        "label": pred["label"],
        "anomaly_score": round(pred["anomaly_score"], 6),
        "top": {c: round(p, 6) for c, p in top},
        "has_audio": has_audio,
        **gate,
        "latency_ms": round(latency_ms, 1),
        "compute_ms": round(compute_ms, 1),
        "lag_s": None if lag_s is None else round(lag_s, 3),
    }
