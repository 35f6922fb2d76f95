"""Figures: confusion matrices, score timelines, embeddings, PR / ROC, bar charts (matplotlib, headless).

Every plot function takes a file name or a binary file object (PNG is written either way)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion(
    cm: np.ndarray, classes: list[str], path, title: str = "", normalize: bool = False
) -> None:
    """Confusion matrix (rows = true class) with counts in the cells, or row-normalised fractions.

    ``path``: a file name or a binary file object (PNG). Rows without clips stay blank when
    normalised (a fraction of nothing is undefined).
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = len(classes)
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(totals > 0, cm / np.maximum(totals, 1), np.nan)
    else:
        shown = cm
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = 1.0 if normalize else (cm.max() if cm.size else 0)
    for i in range(n):
        for j in range(n):
            v = shown[i, j]
            if np.isnan(v) or not v:
                continue
            text = f"{v:.2f}" if normalize else str(int(v))
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7 if normalize else 9,
                color="white" if v > top / 2 else "black",
            )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def peak_indices(scores: np.ndarray, k: int = 3) -> list[int]:
    """Up to ``k`` local maxima of a score curve (T,), highest first, returned in time order.

    Peaks are at least T / (2k) steps apart; a curve without a local maximum (flat or monotonic)
    gives its global maximum.
    """
    from scipy.signal import find_peaks

    scores = np.asarray(scores, dtype=np.float64)
    if not scores.size:
        return []
    padded = np.concatenate([[-np.inf], scores, [-np.inf]])  # the ends can be peaks too
    idx, _ = find_peaks(padded, distance=max(1, len(scores) // (2 * k)))
    idx = idx - 1
    if not idx.size:
        idx = np.array([int(scores.argmax())])
    best = idx[np.argsort(-scores[idx], kind="stable")][:k]
    return sorted(int(i) for i in best)


def plot_timeline(
    pred: dict,
    path,
    threshold: float | None = 0.5,
    thumbnails: list[tuple[float, np.ndarray]] | None = None,
) -> dict:
    """Anomaly score over time, with each segment's predicted class marked (prediction.json input).

    ``thumbnails``: (time in seconds, RGB frame (H, W, 3)) pairs drawn in a row under the curve,
    each numbered and tied to a numbered marker on the curve. ``path``: a file name or a binary
    file object (PNG). Returns where the curve's axes sit in the image, for click-to-seek:
    ``{"x0", "x1"}`` (fractions of the image width) and ``{"t0", "t1"}`` (seconds at those edges).
    """
    segs = pred["segments"]
    mids = np.array([(s["start"] + s["end"]) / 2 for s in segs])
    scores = np.array([s["anomaly_score"] for s in segs])
    labels = [s["label"] for s in segs]
    classes = list(pred["probabilities"])
    cmap = plt.get_cmap("tab10")
    thumbs = thumbnails or []
    if thumbs:
        fig = plt.figure(figsize=(9, 5.0))
        grid = fig.add_gridspec(2, len(thumbs), height_ratios=[1.6, 1.0], hspace=0.45)
        ax = fig.add_subplot(grid[0, :])
    else:
        fig, ax = plt.subplots(figsize=(9, 3.2))
    for s, lab in zip(segs, labels, strict=True):
        ax.axvspan(s["start"], s["end"], ymin=0.0, ymax=0.06, color=cmap(classes.index(lab) % 10))
    ax.plot(
        mids, scores, "-o", color="tab:blue", ms=3, lw=1.5, label="anomaly score = 1 - p(normal)"
    )
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls="--", lw=0.8)
    for lab in dict.fromkeys(labels):
        ax.plot([], [], "s", color=cmap(classes.index(lab) % 10), label=f"predicted: {lab}")
    t1 = segs[-1]["end"] if segs else 1
    ax.set_ylim(-0.02, 1.12 if thumbs else 1.02)
    ax.set_xlim(0, t1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("anomaly score")
    ax.set_title(
        f"{Path(pred['video']).name}: {pred['label']} ({pred['probabilities'][pred['label']]:.2f})",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for n, (t, frame) in enumerate(thumbs, start=1):
        score = float(np.interp(t, mids, scores)) if len(mids) else 0.0
        ax.plot([t], [score], "v", color="tab:red", ms=7)
        ax.annotate(
            str(n),
            (t, score),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=8,
            color="tab:red",
            weight="bold",
        )
        tax = fig.add_subplot(grid[1, n - 1])
        tax.imshow(frame)
        tax.set_xticks([])
        tax.set_yticks([])
        tax.set_title(f"{n}: {t:.1f} s, score {score:.2f}", fontsize=8)
    if thumbs:
        fig.subplots_adjust(left=0.08, right=0.78, top=0.93, bottom=0.04)
    else:
        fig.tight_layout()
    box = ax.get_position()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return {"x0": float(box.x0), "x1": float(box.x1), "t0": 0.0, "t1": float(t1)}


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
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_embedding(
    points: np.ndarray, labels: list[str], classes: list[str], path, title: str = ""
) -> None:
    """2-D embedding (N, 2) as a scatter coloured by class (legend outside); PNG to a path or file."""
    points = np.asarray(points)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    labels_arr = np.asarray(labels)
    for k, c in enumerate(classes):
        sel = labels_arr == c
        if sel.any():
            ax.scatter(
                points[sel, 0],
                points[sel, 1],
                s=22,
                color=cmap(k % cmap.N),
                label=c,
                edgecolors="white",
                linewidths=0.4,
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_pr_roc(y_true: np.ndarray, scores: np.ndarray, path, title: str = "") -> None:
    """Precision-recall and ROC curves of binary truth (N,) against scores (N,), side by side."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    fig, (pr, roc) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    if y_true.any():
        precision, recall, _ = precision_recall_curve(y_true, scores)
        pr.plot(recall, precision, color="tab:blue", lw=1.5, drawstyle="steps-post")
        pr.axhline(
            y_true.mean(), color="grey", ls="--", lw=0.8, label=f"chance ({y_true.mean():.2f})"
        )
        pr.legend(fontsize=7, loc="lower left")
    else:
        pr.text(0.5, 0.5, "no positive frames", ha="center", va="center")
    if y_true.any() and not y_true.all():
        fpr, tpr, _ = roc_curve(y_true, scores)
        roc.plot(fpr, tpr, color="tab:blue", lw=1.5)
        roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    else:
        roc.text(0.5, 0.5, "needs both classes", ha="center", va="center")
    for ax, xl, yl, name in (
        (pr, "recall", "precision", "precision-recall"),
        (roc, "false positive rate", "true positive rate", "ROC"),
    ):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
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
        ax.bar(
            x + offset,
            means[:, j],
            width,
            yerr=stds[:, j],
            capsize=2,
            label=group,
            color=cmap(j % 10),
        )
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
