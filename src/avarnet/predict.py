"""Per-segment predictions for a video: the anomaly-score timeline and the clip verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint
from .config import ONNX_PRECISIONS, PRECISIONS, RUNTIMES
from .errors import InvalidArgumentError, NonFiniteError
from .features import Extractor, causal_features
from .inference import (  # noqa: F401  (re-exported)
    WINDOW_BATCH,
    anomaly_scores,
    build_prediction,
    clip_probabilities,
    model_input,
    step_probabilities,
    window_probs,
)
from .io import atomic_write_bytes, write_json
from .runtime import autocast, check_precision, resolve_device
from .stream import stream_extractor


def predict_video(
    video: str | Path,
    checkpoint: str | Path | Checkpoint,
    out: str | Path | None = None,
    device: str = "auto",
    causal: bool = False,
    extractor: Extractor | None = None,
    audio_context_seconds: float | None = None,
    runtime: str = "torch",
    precision: str = "fp32",
) -> dict:
    """Extract a video's features with the checkpoint's encoders, score every segment, write the report.

    Writes ``OUT/prediction.json``, ``OUT/timeline.png`` and ``OUT/timeline.html`` when ``out`` is
    given. ``causal`` scores each segment from it and the ones before it, on the features a stream
    computes (:func:`avarnet.features.live_spec`; ``audio_context_seconds`` overrides the look-back).

    ``runtime`` and ``precision`` say what runs the encoders, as for ``stream``: torch at fp32,
    bf16 (under autocast, where the device has it) or int8 (Wav2Vec2 quantised); ``onnx`` takes
    the checkpoint and extractor of an export folder (:func:`avarnet.export.load_onnx`, loaded at
    ``precision``). Both are recorded in the prediction.
    """
    dev = resolve_device(device)
    if runtime not in RUNTIMES:
        raise InvalidArgumentError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    onnx = runtime == "onnx"
    if onnx and (extractor is None or not isinstance(checkpoint, Checkpoint)):
        raise InvalidArgumentError("runtime onnx needs the checkpoint and extractor of an export")
    dtype = check_precision(precision, dev, ONNX_PRECISIONS if onnx else PRECISIONS)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, dev)
    if extractor is None:
        extractor = stream_extractor(ckpt, device, precision)  # int8: Wav2Vec2 quantised
    with autocast(dev, None if onnx else dtype):
        if causal:  # features as a live stream computes them (no audio look-ahead), as `stream`
            tensors, duration = causal_features(video, extractor, audio_context_seconds)
        else:
            tensors, info = extractor(video)
            duration = info.duration
    probs = step_probabilities(
        ckpt.model, model_input(ckpt, tensors), ckpt.train_config.seq_len, causal=causal
    )
    if not np.isfinite(probs).all():
        raise NonFiniteError(
            f"{video}: the model's scores are not finite (NaN or infinity); no prediction written"
        )
    pred = build_prediction(str(video), probs, ckpt.classes, ckpt.spec.segment_seconds, duration)
    pred["causal"] = causal
    pred["weights"] = ckpt.spec.weights
    pred["runtime"], pred["precision"] = runtime, precision
    if "gated" in tensors:  # the checkpoint's motion-and-sound gate: segments whose features held
        pred["gated_segments"] = int(tensors["gated"].sum())
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "prediction.json", pred)
        write_timeline(pred, out)
    return pred


def write_timeline(pred: dict, out: Path) -> None:
    """timeline.png (thumbnails of the video at the score's peaks) and timeline.html (click to seek)."""
    import io

    from .plots import plot_timeline
    from .report import timeline_thumbnails, write_timeline_page

    thumbs, why = timeline_thumbnails(pred, pred["video"])
    buf = io.BytesIO()
    layout = plot_timeline(pred, buf, thumbnails=thumbs)
    atomic_write_bytes(out / "timeline.png", buf.getvalue())
    write_timeline_page(
        out, pred, buf.getvalue(), layout, note=None if thumbs else f"{why}; no thumbnails"
    )
