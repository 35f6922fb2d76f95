"""Figures: confusion matrix and anomaly-score timeline (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path, title: str = "") -> None:
    """Confusion matrix (rows = true class) with counts in the cells."""
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > top / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timeline(pred: dict, path: str | Path, threshold: float | None = 0.5) -> None:
    """Anomaly score over time, with each segment's predicted class marked (prediction.json input)."""
    segs = pred["segments"]
    mids = np.array([(s["start"] + s["end"]) / 2 for s in segs])
    scores = np.array([s["anomaly_score"] for s in segs])
    labels = [s["label"] for s in segs]
    classes = list(pred["probabilities"])
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for s, lab in zip(segs, labels, strict=True):
        ax.axvspan(s["start"], s["end"], ymin=0.0, ymax=0.06, color=cmap(classes.index(lab) % 10))
    ax.plot(mids, scores, "-o", color="tab:blue", ms=3, lw=1.5, label="anomaly score = 1 - p(normal)")
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls="--", lw=0.8)
    for lab in dict.fromkeys(labels):
        ax.plot([], [], "s", color=cmap(classes.index(lab) % 10), label=f"predicted: {lab}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, segs[-1]["end"] if segs else 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("anomaly score")
    ax.set_title(f"{Path(pred['video']).name}: {pred['label']} ({pred['probabilities'][pred['label']]:.2f})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
