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


def truth_spans(frame_labels: np.ndarray) -> list[tuple[int, int]]:
    """Runs of 1 in a 0/1 frame vector as [start, end) frame index pairs."""
    y = np.concatenate([[0], np.asarray(frame_labels).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(y))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def plot_score_curve(
    scores: np.ndarray,
    segment_seconds: float,
    path: str | Path,
    frame_labels: np.ndarray | None = None,
    fps: float = 24.0,
    title: str = "",
) -> None:
    """Per-snippet anomaly scores (T,) over time, ground-truth violent spans (frames at ``fps``) shaded."""
    scores = np.asarray(scores)
    T = len(scores)
    edges = np.arange(T + 1) * segment_seconds
    fig, ax = plt.subplots(figsize=(9, 2.8))
    if frame_labels is not None:
        for k, (s, e) in enumerate(truth_spans(frame_labels)):
            label = "ground truth" if k == 0 else None
            ax.axvspan(s / fps, e / fps, color="tab:red", alpha=0.18, lw=0, label=label)
    ax.stairs(scores, edges, color="tab:blue", lw=1.5, label="anomaly score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, edges[-1] if T else 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("anomaly score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grouped_bars(
    labels: list[str],
    groups: list[str],
    means: np.ndarray,
    stds: np.ndarray,
    path: str | Path,
    ylabel: str = "",
    title: str = "",
) -> None:
    """Grouped bar chart: one cluster per label, one bar per group, std error bars.

    means, stds: (len(labels), len(groups)); NaN means leave a gap (no bar).
    """
    means, stds = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    n, g = means.shape
    width = 0.8 / max(g, 1)
    x = np.arange(n)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * n * max(g, 1) * 0.5 + 2.0), 3.8))
    for j, group in enumerate(groups):
        offset = (j - (g - 1) / 2) * width
        ax.bar(x + offset, means[:, j], width, yerr=stds[:, j], capsize=2, label=group, color=cmap(j % 10))
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
