"""One prediction per segment from the segments before it, and how live features compare with
the ones a checkpoint was trained on."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..config import NORMAL_CLASS, FeatureSpec
from ..errors import AvarnetError
from ..features import Extractor, SegmentEncoder, chunked_audio, cosine, live_spec, split_chunks
from ..inference import anomaly_scores, model_input, window_probs
from ..media import Segment
from ..runtime import autocast_dtype, quantize_audio_encoder, resolve_device

log = logging.getLogger("avarnet")


def fold_ignored(probs: dict[str, float], ignore: Sequence[str]) -> dict[str, float]:
    """Ignored classes count as normal (with no normal class they are removed)."""
    if not ignore:
        return probs
    out = {c: p for c, p in probs.items() if c not in ignore}
    moved = sum(p for c, p in probs.items() if c in ignore)
    if NORMAL_CLASS in out:
        out[NORMAL_CLASS] += moved
    return out


class StreamingPredictor:
    """One prediction per pushed segment, from that segment and the ones before it.

    Keeps the last L = ``seq_len`` normalised inputs; the prediction for segment t is the last step
    of the model run on segments [t-L+1 .. t], exactly ``step_probabilities(..., causal=True)``.
    Classes in ``ignore`` are folded into normal (:func:`fold_ignored`) before the label and the
    anomaly score are taken. A model output that is not finite raises
    :class:`~avarnet.inference.NonFiniteOutputError` (no score is made up).
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        extractor: Extractor | None = None,
        *,
        audio_context_seconds: float | None = None,
        autocast_dtype: torch.dtype | None = None,
        model: Callable | None = None,
        ignore: Sequence[str] = (),
    ) -> None:
        self.ckpt = ckpt
        self.ignore = tuple(ignore)
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
        folded = fold_ignored(
            {c: float(p) for c, p in zip(self.ckpt.classes, probs, strict=True)}, self.ignore
        )
        classes = list(folded)
        values = np.array(list(folded.values()))
        return {
            "segment": index,
            "start": float(start),
            "end": float(end),
            "label": classes[int(values.argmax())],
            "anomaly_score": float(anomaly_scores(values[None], classes)[0]),
            "probabilities": folded,
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


DRIFT_SECONDS = 60.0  # media compared with the trained-on features when they differ


class FeatureMismatchError(AvarnetError):
    """Under ``strict``: the checkpoint was trained on features a live stream cannot compute."""


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
        f"extract causal audio features with a look-back of {live.audio_context_seconds:g} s "
        f"and retrain to score live as evaluated"
    )
    if strict:
        raise FeatureMismatchError(f"{problem} (strict); {fix}")
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


def stream_extractor(ckpt: Checkpoint, device: str = "auto", precision: str = "fp32") -> Extractor:
    """The encoders a checkpoint's feature spec names; ``precision`` int8 quantises Wav2Vec2 (CPU)."""
    dev = resolve_device(device)
    autocast_dtype(precision, dev)  # validates
    extractor = Extractor.from_spec(ckpt.spec, str(dev), ckpt.encoder_state)
    if precision == "int8":
        quantize_audio_encoder(extractor.audio)
    return extractor
