"""report.html of a frame-level detection evaluation (XD-Violence style): curves, PR and ROC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avarnet.plots import plot_pr_roc, plot_score_curve
from avarnet.report.evaluation import REPORT_FILE
from avarnet.report.html import cards, esc, figure, figure_png, fmt, table, write_page

MAX_CURVES = 12


def write_detection_report(
    out: str | Path,
    metrics: dict,
    videos: Sequence,
    y_frames: np.ndarray,
    s_frames: np.ndarray,
    segment_seconds: float,
    limit: int = MAX_CURVES,
) -> Path:
    """Write ``OUT/report.html`` for frame-level detection.

    ``videos``: objects with ``entry`` (store Entry), ``scores`` (T,) snippet anomaly scores and
    ``frame_labels`` ((N,) 0/1 truth or None); ``y_frames`` / ``s_frames``: all frames' truth and
    scores (N,), as the metrics were computed on.
    """
    m = metrics
    base = m.get("constant_baseline") or {}
    title = f"Detection: {m.get('model')} / {m.get('modality')} on the {m.get('split')} split"
    head = cards(
        [
            ("frame AP", m.get("frame_ap")),
            ("frame PR-AUC (trapezoid)", m.get("frame_pr_auc")),
            ("frame ROC-AUC", m.get("frame_roc_auc")),
            ("video AP", m.get("video_ap")),
            ("video ROC-AUC", m.get("video_roc_auc")),
        ]
    )
    baseline = table(
        ["metric", "model", "constant score"],
        [[k, m.get(k), base.get(k)] for k in ("frame_ap", "frame_pr_auc", "frame_roc_auc")],
    )
    ckpt = f" Checkpoint: <code>{esc(m['checkpoint'])}</code>." if m.get("checkpoint") else ""
    prroc = figure_png(plot_pr_roc, y_frames, s_frames, title=f"{len(y_frames)} frames")
    ranked = sorted(
        videos, key=lambda v: -float(v.frame_labels.any()) if v.frame_labels is not None else 1.0
    )
    curves = []
    for v in ranked[:limit]:
        name = (v.entry.extra or {}).get("name", v.entry.id)
        png = figure_png(
            plot_score_curve,
            v.scores,
            segment_seconds,
            frame_labels=v.frame_labels,
            fps=v.entry.fps,
            title=f"{name[:90]}  [{v.entry.label}]",
        )
        curves.append(figure(png, f"score curve of {name}"))
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{m.get("n")} videos, {m.get("frames")} frames ({fmt(m.get("frame_positive_rate"), 3)} '
        f"violent).{ckpt}</p>",
        "<h2>Headline metrics</h2>",
        head,
        baseline,
        "<h2>Precision-recall and ROC (frame level)</h2>",
        figure(prroc, "PR and ROC curves"),
        f"<h2>Frame-level score curves (truth shaded; {len(curves)} of {len(videos)} videos, violent first)</h2>",
        "".join(curves),
    ]
    return write_page(Path(out) / REPORT_FILE, title, "\n".join(body))
