"""Pure metric functions over numpy arrays (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from .config import NORMAL_CLASS


def _ap_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision of binary truth ``y`` (N,) against ``score`` (N,); NaN without positives."""
    return float(average_precision_score(y, score)) if y.any() else float("nan")


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], normal_class: str = NORMAL_CLASS
) -> dict:
    """Clip-level metrics of DESIGN.md's metrics.json.

    y_true: (N,) class indices; probs: (N, C) class probabilities. Precision, recall, F1 and AP are
    macro averages over the classes present in ``y_true``; ``binary_ap`` scores anomaly vs normal with
    1 - p(normal) (absent when there is no normal class). Undefined per-class values are NaN.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    C = len(classes)
    y_pred = probs.argmax(1)
    labels = np.arange(C)
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    onehot = y_true[:, None] == labels[None, :]  # (N, C)
    ap = np.array([_ap_or_nan(onehot[:, c], probs[:, c]) for c in range(C)])
    present = support > 0
    out = {
        "classes": list(classes),
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(p[present].mean()),
        "recall": float(r[present].mean()),
        "f1": float(f[present].mean()),
        "ap": float(np.nanmean(ap[present])) if present.any() else float("nan"),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "ap": float(ap[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if normal_class in classes:
        k = list(classes).index(normal_class)
        out["binary_ap"] = _ap_or_nan(y_true != k, 1.0 - probs[:, k])
    return out
