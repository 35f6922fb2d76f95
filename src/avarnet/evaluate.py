"""Evaluation on a split of a feature store: metrics.json, a confusion-matrix plot and report.html.

Two scorings of the same features: *offline* (each segment the mean over every window of L
segments that holds it, windows on both sides: the headline metrics) and *live* (each segment
from the window ending at it, what ``stream`` and ``predict --causal`` give: ``metrics["live"]``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint
from .config import SENSES
from .errors import AvarnetError
from .inference import clip_probabilities, model_input, step_probabilities
from .io import atomic_write_text
from .metrics import classification_metrics, strict_metrics_json
from .runtime import resolve_device
from .store import FeatureStore, StoreError

log = logging.getLogger("avarnet")


class EvaluateError(AvarnetError):
    """Evaluation cannot run on this checkpoint/store combination."""


def open_inputs(
    checkpoint: str | Path | Checkpoint, feats: str | Path | FeatureStore, device: str = "auto"
) -> tuple[Checkpoint, FeatureStore]:
    """The checkpoint (loaded onto ``device``) and feature store an evaluation reads; either may
    be given already open."""
    ckpt = (
        checkpoint
        if isinstance(checkpoint, Checkpoint)
        else load_checkpoint(checkpoint, resolve_device(device))
    )
    return ckpt, feats if isinstance(feats, FeatureStore) else FeatureStore.open(feats)


def blank_sense(x: np.ndarray, sense: str, ckpt: Checkpoint) -> np.ndarray:
    """Zero one sense of a normalised input (T, D), as if that camera had no microphone (or no view)."""
    vd = ckpt.model_config.video_dim
    x = x.copy()
    if ckpt.modality != "fused":
        raise EvaluateError(
            f"blanking a sense needs a fused model; this checkpoint uses {ckpt.modality} only"
        )
    if sense == "video":
        x[:, :vd] = 0.0
    elif sense == "audio":
        x[:, vd:] = 0.0
    else:
        raise EvaluateError(f"unknown sense {sense!r}; use one of {SENSES}")
    return x


def check_compatible(ckpt: Checkpoint, store: FeatureStore) -> None:
    ours, theirs = ckpt.spec.replace(random_init={}), store.spec.replace(random_init={})
    if not ours.same_features(theirs):
        raise EvaluateError(f"checkpoint features ({ours}) differ from the store's ({theirs})")
    unknown = sorted({e.label for e in store.entries} - set(ckpt.classes))
    if unknown:
        raise EvaluateError(f"store has classes the checkpoint does not know: {unknown}")


def score_clips(
    ckpt: Checkpoint,
    store: FeatureStore,
    split: str,
    drop: str | None = None,
    embed: bool = False,
    live: list | None = None,
) -> list:
    """Per-segment probabilities of every video of a split, as report.ClipScores.

    With ``embed`` each clip also gets its mean input features and mean penultimate features
    (for the report's t-SNE); otherwise those are left empty. A ``live`` list receives each
    clip's live per-segment probabilities (T, C) in the same order (the window ending at each
    segment, as a stream scores it).
    """
    from .report import ClipScores, clip_embedding

    entries = store.split(split)
    if not entries:
        raise EvaluateError(f"split {split!r} of {store.root} is empty")
    L = ckpt.train_config.seq_len
    clips = []
    for e, tensors in store.iter_load(entries):
        x = model_input(ckpt, tensors)
        if not np.isfinite(x).all():
            raise EvaluateError(
                f"{store.root / e.file}: features hold NaN or infinity; extract {e.source} again"
            )
        if drop:
            x = blank_sense(x, drop, ckpt)
        steps = step_probabilities(ckpt.model, x, L)
        if live is not None:
            live.append(step_probabilities(ckpt.model, x, L, causal=True))
        inputs = x.mean(axis=0) if embed else np.zeros(0, np.float32)
        clips.append(
            ClipScores(e, steps, inputs, clip_embedding(ckpt.model, x, L) if embed else None)
        )
    return clips


def predict_clips(
    ckpt: Checkpoint, store: FeatureStore, split: str, drop: str | None = None
) -> tuple[list, np.ndarray, np.ndarray]:
    """(entries, y_true (N,), clip probabilities (N, C)) for every video of a split."""
    clips = score_clips(ckpt, store, split, drop)
    index = {c: i for i, c in enumerate(ckpt.classes)}
    y = np.array([index[c.entry.label] for c in clips])
    return [c.entry for c in clips], y, np.stack([clip_probabilities(c.steps) for c in clips])


LIVE_KEYS = ("accuracy", "precision", "recall", "f1", "ap", "confusion_matrix")


def live_metrics(
    y: np.ndarray, live_steps: list[np.ndarray], classes: list[str], entries: list
) -> dict:
    """metrics.json's ``live`` section: the clip metrics (accuracy, macro P/R/F1/AP, confusion
    matrix) when each segment is scored from the window ending at it (``predict --causal``,
    ``stream``), each clip's verdict the mean of those; and each clip's live verdict."""
    probs = np.stack([clip_probabilities(s) for s in live_steps])
    m = classification_metrics(y, probs, classes)
    out = {k: m[k] for k in LIVE_KEYS}
    out["windows"] = "causal"
    out["predictions"] = [
        {"id": e.id, "predicted": classes[int(p.argmax())]}
        for e, p in zip(entries, probs, strict=True)
    ]
    return out


def evaluate(
    checkpoint: str | Path | Checkpoint,
    feats: str | Path | FeatureStore,
    split: str = "test",
    out: str | Path | None = None,
    drop: str | None = None,
    device: str = "auto",
    report: bool = True,
    extra: Callable[[Checkpoint, FeatureStore, list, str | None], dict] | None = None,
) -> dict:
    """Clip-level metrics (DESIGN.md's metrics.json), offline, with the live ones under ``live``.

    With ``out``: writes metrics.json (strict JSON), confusion_matrix.png and, unless ``report``
    is False, report.html (one self-contained page with the paper's figures for this split).
    ``extra(ckpt, store, entries, drop)`` adds metrics of its own (e.g.
    :func:`avarnet.weak.untrimmed_metrics` for stores with frame-level truth).
    """
    ckpt, store = open_inputs(checkpoint, feats, device)
    check_compatible(ckpt, store)
    want_report = out is not None and report
    live_steps: list[np.ndarray] = []
    clips = score_clips(ckpt, store, split, drop, embed=want_report, live=live_steps)
    entries = [c.entry for c in clips]
    index = {c: i for i, c in enumerate(ckpt.classes)}
    y = np.array([index[e.label] for e in entries])
    probs = np.stack([clip_probabilities(c.steps) for c in clips])
    metrics = classification_metrics(y, probs, ckpt.classes)
    metrics.update(
        live=live_metrics(y, live_steps, ckpt.classes, entries),
        train_windows=ckpt.train_config.windows,  # the windows the checkpoint was trained on
        checkpoint=str(checkpoint) if not isinstance(checkpoint, Checkpoint) else None,
        features=str(store.root),
        split=split,
        dropped_sense=drop,
        model=ckpt.model_config.name,
        modality=ckpt.modality,
        fusion=ckpt.model_config.fusion,
        seq_len=ckpt.train_config.seq_len,
        feature_spec=store.spec.to_dict(),
        weights=store.spec.weights,
        predictions=[
            {"id": e.id, "label": e.label, "predicted": ckpt.classes[int(p.argmax())]}
            for e, p in zip(entries, probs, strict=True)
        ],
    )
    if extra is not None:  # e.g. frame-level detection metrics of an untrimmed benchmark
        metrics.update(extra(ckpt, store, entries, drop))
    if out is not None:
        from .plots import plot_confusion

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        text = strict_metrics_json(metrics)
        metrics = json.loads(text)  # what the file says: undefined values are None, not NaN
        atomic_write_text(out / "metrics.json", text)
        plot_confusion(
            np.array(metrics["confusion_matrix"]),
            ckpt.classes,
            out / "confusion_matrix.png",
            title=f"{ckpt.model_config.name} / {ckpt.modality} — {split} accuracy {metrics['accuracy']:.3f}",
        )
        if report:
            from .report import write_evaluation_report

            write_evaluation_report(
                out, metrics, clips, ckpt.classes, store, ckpt.spec.segment_seconds
            )
    return metrics


__all__ = ["evaluate", "open_inputs", "predict_clips", "score_clips", "EvaluateError", "StoreError"]
