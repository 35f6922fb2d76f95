"""The motion-and-sound gate: still, silent segments skip the encoders, as NVRs skip them.

A gate is two thresholds and a bound. A segment is *still* when the mean absolute difference
between its grey thumbnail and the thumbnail of the last segment that was encoded (``motion``,
in [0, 1] of full scale) is below ``motion`` and the RMS level of its samples (``sound_dbfs``,
dB relative to a full-scale sample 1.0; no samples: -inf) is below ``sound_dbfs``. A still
segment is *held*: its features repeat the last encoded segment's. The first segment of a source,
one after a gap in segment indices, one whose audio comes or goes, and the one after ``refresh``
held segments in a row are always encoded. Comparing against the last *encoded* thumbnail (not
the previous segment's) lets a slow drift add up until it is encoded.

The gate is part of the feature spec (``FeatureSpec.gate``: ``{}`` off), so every path that
encodes segments (``extract`` with causal audio, ``predict --causal``, ``stream``, ``serve``)
applies the same one through :class:`avarnet.features.SegmentEncoder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

THUMBNAIL = (36, 64)  # (rows, columns) of the grey thumbnail motion is measured on
DEFAULT_REFRESH = 10  # held segments in a row before one is encoded again
GATE_KEYS = ("motion", "sound_dbfs", "refresh")
MOTION_RANGE = (0.0, 1.0)  # motion threshold: (low, high], fraction of full scale
SOUND_RANGE = (-200.0, 0.0)  # sound threshold in dBFS: [low, high]
REFRESH_RANGE = (1, 100_000)
# names the textual form accepts (``motion=0.02,sound=-50,refresh=10``) -> spec keys
TEXT_KEYS = {
    "motion": "motion",
    "sound": "sound_dbfs",
    "sound_dbfs": "sound_dbfs",
    "refresh": "refresh",
}


@dataclass(frozen=True)
class Gate:
    """Thresholds of the motion-and-sound gate (see the module's description)."""

    motion: float
    sound_dbfs: float
    refresh: int = DEFAULT_REFRESH

    def __post_init__(self) -> None:
        problem = _problem(self.motion, self.sound_dbfs, self.refresh)
        if problem:
            raise InvalidArgumentError(f"gate: {problem}")
        object.__setattr__(self, "motion", float(self.motion))
        object.__setattr__(self, "sound_dbfs", float(self.sound_dbfs))

    def to_dict(self) -> dict[str, Any]:
        return {"motion": self.motion, "sound_dbfs": self.sound_dbfs, "refresh": self.refresh}

    @classmethod
    def from_dict(cls, d: dict) -> Gate | None:
        """The gate a feature spec's ``gate`` field describes; None for ``{}`` (off)."""
        if not isinstance(d, dict):
            raise InvalidArgumentError(f"gate must be an object, got {d!r}")
        if not d:
            return None
        unknown = sorted(set(map(str, d)) - set(GATE_KEYS))
        if unknown:
            raise InvalidArgumentError(
                f"gate: unknown setting(s) {', '.join(unknown)}; known: {', '.join(GATE_KEYS)}"
            )
        missing = [k for k in ("motion", "sound_dbfs") if k not in d]
        if missing:
            raise InvalidArgumentError(
                f"gate: needs both a motion and a sound threshold, {' and '.join(missing)} missing"
            )
        return cls(d["motion"], d["sound_dbfs"], d.get("refresh", DEFAULT_REFRESH))

    @classmethod
    def parse(cls, text: str) -> Gate | None:
        """``motion=0.02,sound=-50[,refresh=10]`` -> a gate; ``off`` (or empty) -> None."""
        text = text.strip()
        if text.lower() in ("", "off", "none"):
            return None
        d: dict[str, Any] = {}
        for part in text.split(","):
            name, eq, value = (s.strip() for s in part.partition("="))
            if not eq or name.lower() not in TEXT_KEYS:
                raise InvalidArgumentError(
                    f"gate: expected motion=FRACTION,sound=DBFS[,refresh=N], got {text!r}"
                )
            key = TEXT_KEYS[name.lower()]
            try:
                d[key] = int(value) if key == "refresh" else float(value)
            except ValueError:
                kind = "an integer" if key == "refresh" else "a number"
                raise InvalidArgumentError(f"gate: {name} must be {kind}, got {value!r}") from None
        return cls.from_dict(d)

    def describe(self) -> str:
        """``motion < 0.02, sound < -50 dBFS, refresh 10``."""
        return (
            f"motion < {self.motion:g}, sound < {self.sound_dbfs:g} dBFS, "
            f"refresh every {self.refresh} held"
        )


def _problem(motion: Any, sound: Any, refresh: Any) -> str | None:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if not number(motion) or not MOTION_RANGE[0] < motion <= MOTION_RANGE[1]:
        return f"motion must be a fraction of full scale in (0, 1], got {motion!r}"
    if not number(sound) or not SOUND_RANGE[0] <= sound <= SOUND_RANGE[1]:
        return f"sound must be a level in dBFS in [-200, 0], got {sound!r}"
    if isinstance(refresh, bool) or not isinstance(refresh, int):
        return f"refresh must be an integer, got {refresh!r}"
    if not REFRESH_RANGE[0] <= refresh <= REFRESH_RANGE[1]:
        return f"refresh must be in [{REFRESH_RANGE[0]}, {REFRESH_RANGE[1]}], got {refresh}"
    return None


def gate_settings(d: Any) -> dict[str, Any]:
    """A spec's ``gate`` field, checked and completed (``{}`` stays ``{}``): one-line
    :class:`InvalidArgumentError` for a bad value."""
    gate = Gate.from_dict(d)
    return {} if gate is None else gate.to_dict()


def _bins(n: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel index per thumbnail cell edge along an axis of n pixels: ``bins`` near-equal blocks
    (start indices, sizes); an axis shorter than ``bins`` repeats pixels (blocks of one)."""
    if n < bins:
        starts = np.arange(bins) * n // bins
        return starts, np.ones(bins, np.int64)
    edges = np.linspace(0, n, bins + 1).astype(np.int64)  # strictly increasing: n >= bins
    return edges[:-1], np.diff(edges)


def thumbnail(frames: np.ndarray) -> np.ndarray:
    """(rows, cols) float32 grey thumbnail in [0, 1] of a segment's frames (k, H, W, 3) uint8:
    each cell the mean over the frames, the colour channels and its block of pixels (exact
    integer sums, so the same frames always give the same thumbnail)."""
    frames = np.asarray(frames, np.uint8)
    frames = frames[None] if frames.ndim == 3 else frames
    k, h, w, _ = frames.shape
    (rows, rsize), (cols, csize) = _bins(h, THUMBNAIL[0]), _bins(w, THUMBNAIL[1])
    total = np.zeros(THUMBNAIL, np.uint64)
    for frame in frames:
        grey = frame[..., 0].astype(np.uint16) + frame[..., 1] + frame[..., 2]  # (H, W) <= 765
        if h < THUMBNAIL[0]:
            block = grey[rows]
        else:
            block = np.add.reduceat(grey, rows, axis=0, dtype=np.uint64)
        block = block[:, cols] if w < THUMBNAIL[1] else np.add.reduceat(block, cols, axis=1)
        total += block.astype(np.uint64)
    scale = np.outer(rsize, csize).astype(np.float64) * (3 * 255 * k)
    return (total / scale).astype(np.float32)


def motion(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, in [0, 1] of full scale."""
    return float(np.abs(a - b).mean())


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of samples in dBFS (full-scale sample 1.0 = 0 dB); -inf when silent or empty."""
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


@dataclass
class GateState:
    """What the gate keeps per source: the last encoded segment's thumbnail and audio presence,
    the last segment index seen and how many segments have been held in a row."""

    reference: np.ndarray | None = None
    had_audio: bool = False
    last_index: int | None = None
    held: int = 0

    def still(self, gate: Gate, index: int, frames: np.ndarray, audio: np.ndarray) -> bool:
        """Whether segment ``index`` is held (True) or encoded (False); updates the state."""
        thumb = thumbnail(frames)
        has_audio = audio.size > 0
        follows = self.last_index is not None and index == self.last_index + 1
        self.last_index = index
        hold = (
            follows
            and self.reference is not None
            and self.held < gate.refresh
            and has_audio == self.had_audio
            and thumb.shape == self.reference.shape
            and motion(thumb, self.reference) < gate.motion
            and level_dbfs(audio) < gate.sound_dbfs
        )
        if hold:
            self.held += 1
            return True
        self.reference, self.had_audio, self.held = thumb, has_audio, 0
        return False


__all__ = [
    "DEFAULT_REFRESH",
    "THUMBNAIL",
    "Gate",
    "GateState",
    "gate_settings",
    "level_dbfs",
    "motion",
    "thumbnail",
]
