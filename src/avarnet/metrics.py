"""Pure metric functions over numpy arrays (scikit-learn underneath)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import NORMAL_CLASS


def _ap_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision of binary truth ``y`` (N,) against ``score`` (N,); NaN without positives."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, score)) if y.any() else float("nan")


AVERAGING = {
    "precision": "macro: unweighted mean over the classes with test clips",
    "recall": "macro: unweighted mean over the classes with test clips",
    "f1": "macro: unweighted mean over the classes with test clips",
    "ap": "macro: unweighted mean of one-vs-rest AP over the classes with test clips",
    "precision_weighted": "support-weighted mean over the classes (weights = test clips per class)",
    "recall_weighted": "support-weighted mean over the classes (equals accuracy)",
    "f1_weighted": "support-weighted mean over the classes (weights = test clips per class)",
}


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], normal_class: str = NORMAL_CLASS
) -> dict:
    """Clip-level metrics of DESIGN.md's metrics.json.

    y_true: (N,) class indices; probs: (N, C) class probabilities. ``precision``, ``recall``,
    ``f1`` and ``ap`` are macro averages over the classes present in ``y_true``;
    ``precision_weighted``, ``recall_weighted`` and ``f1_weighted`` are support-weighted
    averages (scikit-learn's ``average="weighted"``, the averaging of the paper's Table 2).
    ``binary_ap`` scores anomaly vs normal with 1 - p(normal) (absent when there is no normal
    class). A value that is undefined (a class without test clips has no recall, F1 or AP; a
    class never predicted has no precision, reported as 0 as scikit-learn does) is None, and
    ``undefined`` maps its dotted key to the reason.
    """
    # scikit-learn (1-2 s to import) where metrics are computed, not where they are merely named
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    C = len(classes)
    y_pred = probs.argmax(1)
    labels = np.arange(C)
    p, r, f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    pw, rw, fw, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0
    )
    onehot = y_true[:, None] == labels[None, :]  # (N, C)
    ap = np.array([_ap_or_nan(onehot[:, c], probs[:, c]) for c in range(C)])
    present = support > 0
    undefined: dict[str, str] = {}
    per_class = {}
    for i, c in enumerate(classes):
        row = {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "ap": float(ap[i]),
            "support": int(support[i]),
        }
        if not present[i]:
            for k in ("recall", "f1", "ap"):
                row[k] = None
                undefined[f"per_class.{c}.{k}"] = f"no test clips of class {c!r}"
            if not (y_pred == i).any():
                row["precision"] = None
                undefined[f"per_class.{c}.precision"] = (
                    f"no test clips of class {c!r} and none predicted as it"
                )
        per_class[c] = row
    out = {
        "classes": list(classes),
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(p[present].mean()),
        "recall": float(r[present].mean()),
        "f1": float(f[present].mean()),
        "ap": float(np.nanmean(ap[present])) if present.any() else None,
        "precision_weighted": float(pw),
        "recall_weighted": float(rw),
        "f1_weighted": float(fw),
        "averaging": dict(AVERAGING),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if normal_class in classes:
        k = list(classes).index(normal_class)
        anomalous = y_true != k
        if anomalous.any():
            out["binary_ap"] = _ap_or_nan(anomalous, 1.0 - probs[:, k])
        else:
            out["binary_ap"] = None
            undefined["binary_ap"] = "no anomalous (non-normal) test clips"
    out["undefined"] = undefined
    return out


def strict_json_values(obj: Any, reason: str = "not a finite number") -> tuple[Any, dict[str, str]]:
    """A copy of ``obj`` (dicts, lists, scalars) with NaN / Inf replaced by None, and what was replaced.

    Returns (clean object, {dotted key path: reason}); list items appear as ``key.3``. numpy
    scalars and arrays become plain Python values, so the result serialises with
    ``json.dumps(..., allow_nan=False)``.
    """
    replaced: dict[str, str] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(x)]
        if isinstance(x, np.ndarray):
            return walk(x.tolist(), path)
        if isinstance(x, np.generic):
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            replaced[path] = reason
            return None
        return x

    return walk(obj, ""), replaced


def strict_metrics_json(metrics: dict) -> str:
    """metrics.json text: strict JSON (no NaN / Infinity literals); non-finite values become null
    and are listed with a reason under ``undefined`` (merged with the reasons already there)."""
    clean, replaced = strict_json_values(metrics)
    if replaced or "undefined" in clean:
        clean["undefined"] = {**replaced, **(clean.get("undefined") or {})}
    return json.dumps(clean, indent=1, allow_nan=False, ensure_ascii=False)


# -- frame-level detection (XD-Violence and other untrimmed benchmarks) -----------------------


def pr_auc_trapezoid(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve by the trapezoid rule (sklearn ``auc(recall, precision)``).

    What most public XD-Violence code (XDVioDet, RTFM) reports as "AP". It interpolates linearly
    between the curve's operating points (including sklearn's end point recall 0, precision 1), so
    it can be above or below the step-wise ``average_precision_score``; a constant score gets
    (1 + positive rate) / 2, not the positive rate. NaN without positives.
    """
    from sklearn.metrics import auc, precision_recall_curve

    y_true = np.asarray(y_true)
    if not y_true.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(y_true, np.asarray(scores, dtype=np.float64))
    return float(auc(recall, precision))


def frame_level_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict:
    """Frame-level detection metrics of binary truth (N,) against anomaly scores (N,).

    ``frame_ap``: scikit-learn ``average_precision_score`` (step-wise, no interpolation);
    ``frame_pr_auc``: trapezoidal area under the PR curve (see :func:`pr_auc_trapezoid`);
    ``frame_roc_auc``: ROC-AUC. Undefined values (one class only) are NaN.
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    both = y_true.any() and not y_true.all()
    return {
        "frame_ap": _ap_or_nan(y_true, scores),
        "frame_pr_auc": pr_auc_trapezoid(y_true, scores),
        "frame_roc_auc": float(roc_auc_score(y_true, scores)) if both else float("nan"),
        "frames": int(y_true.size),
        "frame_positive_rate": float(y_true.mean()) if y_true.size else float("nan"),
    }


def snippet_to_frame_scores(
    scores: np.ndarray, n_frames: int, fps: float, segment_seconds: float
) -> np.ndarray:
    """Per-frame scores (n_frames,) from per-snippet scores (T,): frame i takes the snippet holding its centre.

    With 16-frame snippets at 24 fps and n_frames = 16 T this is ``np.repeat(scores, 16)``, the
    official XD-Violence evaluation. Frames past the last snippet take the last snippet's score.
    """
    scores = np.asarray(scores)
    per_snippet = fps * segment_seconds  # frames per snippet
    idx = np.floor((np.arange(n_frames) + 0.5) / per_snippet).astype(np.int64)
    return scores[np.minimum(idx, len(scores) - 1)]
