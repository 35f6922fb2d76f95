"""report.html of a clip-level evaluation: the paper's Figs. 3-7 for one checkpoint on one split."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avarnet.inference import build_prediction
from avarnet.plots import peak_indices, plot_confusion, plot_embedding, plot_timeline
from avarnet.report.frames import THUMB_EDGE, grab_frames, video_path
from avarnet.report.html import cards, esc, figure, figure_png, img, jpeg_bytes, table, write_page
from avarnet.store import Entry, FeatureStore

log = logging.getLogger("avarnet")

REPORT_FILE = "report.html"
MAX_ERRORS = 40  # misclassified clips shown with a frame strip
STRIP_FRAMES = 6  # frames per strip
PEAK_THUMBS = 3  # thumbnails under each anomaly-score curve
MIN_TSNE_POINTS = 5
EXACT_TSNE_MAX = 500  # clips up to which t-SNE uses the exact gradient
WINDOW_BATCH = 256


@dataclass
class ClipScores:
    """What the report needs of one evaluated clip."""

    entry: Entry
    steps: np.ndarray  # (T, C) per-segment class probabilities
    inputs: np.ndarray  # (D,) mean over segments of the model's (normalised) input features
    hidden: np.ndarray | None  # (H,) mean over segments of the model's penultimate features


@torch.no_grad()
def clip_embedding(model: torch.nn.Module, x: np.ndarray, seq_len: int) -> np.ndarray | None:
    """Mean penultimate features (H,) of a clip's input x (T, D), over windows of ``seq_len``.

    The clip is cut into consecutive non-overlapping windows (the last one masked); None when
    the model has no ``features`` method.
    """
    features = getattr(model, "features", None)
    if features is None or not len(x):
        return None
    device = next(model.parameters()).device
    T, D = x.shape
    starts = list(range(0, T, seq_len))
    total, count = None, 0
    for i in range(0, len(starts), WINDOW_BATCH):
        chunk = starts[i : i + WINDOW_BATCH]
        xb = np.zeros((len(chunk), seq_len, D), dtype=np.float32)
        mb = np.zeros((len(chunk), seq_len), dtype=bool)
        for j, s in enumerate(chunk):
            n = min(seq_len, T - s)
            xb[j, :n], mb[j, :n] = x[s : s + n], True
        h = features(torch.from_numpy(xb).to(device), torch.from_numpy(mb).to(device)).float()
        m = torch.from_numpy(mb).to(device).unsqueeze(-1)  # (W, L, 1)
        part = (h * m).sum(dim=(0, 1))  # (H,)
        total = part if total is None else total + part
        count += int(mb.sum())
    return (total / max(count, 1)).cpu().numpy()


def tsne_2d(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """scikit-learn t-SNE of (N, D) points to (N, 2); perplexity scaled down for few points."""
    from sklearn.manifold import TSNE

    n = len(points)
    perplexity = float(max(1.0, min(30.0, (n - 1) / 3)))
    # the exact gradient is plain numpy and fast for the few hundred clips of a test split; the
    # Barnes-Hut one spins OpenMP threads that crawl on a busy machine
    method = "exact" if n <= EXACT_TSNE_MAX else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method)
    return tsne.fit_transform(np.asarray(points, dtype=np.float64))


def _headline(m: dict) -> str:
    macro = [
        ("accuracy", m["accuracy"]),
        ("macro precision", m["precision"]),
        ("macro recall", m["recall"]),
        ("macro F1", m["f1"]),
        ("macro AP", m.get("ap")),
    ]
    weighted = [
        ("weighted precision", m.get("precision_weighted")),
        ("weighted recall", m.get("recall_weighted")),
        ("weighted F1", m.get("f1_weighted")),
    ]
    if "binary_ap" in m:
        macro.append(("binary AP (anomaly vs normal)", m["binary_ap"]))
    return (
        cards(macro)
        + cards(weighted)
        + '<p class="meta">Macro: unweighted mean over the classes with test clips. Weighted: mean '
        "weighted by each class's test clips (the averaging of the paper's Table 2; weighted recall "
        "equals accuracy).</p>"
    )


def _undefined(m: dict) -> str:
    und = m.get("undefined") or {}
    if not und:
        return ""
    items = "".join(f"<li><code>{esc(k)}</code>: {esc(v)}</li>" for k, v in und.items())
    return f'<div class="warn">Undefined values (null in metrics.json):<ul>{items}</ul></div>'


def _per_class(m: dict) -> str:
    rows = [
        [c, r["support"], r["precision"], r["recall"], r["f1"], r["ap"]]
        for c, r in m["per_class"].items()
    ]
    return table(["class", "test clips", "precision", "recall", "F1", "AP"], rows)


def _confusion(m: dict, classes: list[str]) -> str:
    cm = np.array(m["confusion_matrix"])
    counts = figure_png(plot_confusion, cm, classes, title="counts (rows = true class)")
    norm = figure_png(
        plot_confusion, cm, classes, title="row-normalised (recall per class)", normalize=True
    )
    return (
        '<div class="figs">'
        + figure(counts, "confusion matrix, counts", "Clips per (true, predicted) class.")
        + figure(
            norm, "confusion matrix, row-normalised", "Each row divided by the class's test clips."
        )
        + "</div>"
    )


def _embeddings(clips: Sequence[ClipScores], classes: list[str]) -> str:
    labels = [c.entry.label for c in clips]
    if len(clips) < MIN_TSNE_POINTS:
        return f'<div class="missing">t-SNE needs at least {MIN_TSNE_POINTS} clips; this split has {len(clips)}.</div>'
    figs = []
    spaces = [
        (
            "input",
            [c.inputs for c in clips],
            "clip features (mean over segments of the model's normalised input)",
        )
    ]
    if all(c.hidden is not None for c in clips):
        spaces.append(
            (
                "hidden",
                [c.hidden for c in clips],
                "temporal model's penultimate features (mean over segments)",
            )
        )
    for name, vectors, caption in spaces:
        xy = tsne_2d(np.stack(vectors))
        png = figure_png(
            plot_embedding, xy, labels, classes, title=f"t-SNE of {caption.split(' (')[0]}"
        )
        figs.append(
            figure(png, f"t-SNE of {name} features", f"t-SNE of {caption}, coloured by true class.")
        )
    note = (
        ""
        if len(spaces) == 2
        else '<div class="missing">This model has no penultimate-feature method.</div>'
    )
    return '<div class="figs">' + "".join(figs) + "</div>" + note


def _strip(frames: list[np.ndarray], times: list[float], preds: list[str], truth: str) -> str:
    cells = []
    for f, t, p in zip(frames, times, preds, strict=True):
        wrong = p != truth
        cells.append(
            f'<div class="frame{" wrong" if wrong else ""}">'
            + img(jpeg_bytes(f), f"frame at {t:.1f} s", "image/jpeg")
            + f"{t:.1f} s · {esc(p)}</div>"
        )
    return '<div class="strip">' + "".join(cells) + "</div>"


def _errors(
    clips: Sequence[ClipScores], classes: list[str], store: FeatureStore, seg: float
) -> str:
    wrong = [c for c in clips if classes[int(c.steps.mean(0).argmax())] != c.entry.label]
    if not wrong:
        return "<p>Every clip of the split is classified correctly.</p>"
    out = [
        f"<p>{len(wrong)} of {len(clips)} clips misclassified. Frames at evenly spaced segments; "
        "each frame is captioned with its segment's predicted class, red where it differs from "
        "the truth.</p>"
    ]
    if len(wrong) > MAX_ERRORS:
        out.append(f'<p class="meta">Showing the first {MAX_ERRORS}.</p>')
    for c in wrong[:MAX_ERRORS]:
        probs = c.steps.mean(0)
        pred = classes[int(probs.argmax())]
        T = len(c.steps)
        idx = np.unique(np.linspace(0, T - 1, min(STRIP_FRAMES, T)).round().astype(int))
        times = [min((i + 0.5) * seg, c.entry.duration) for i in idx]
        seg_preds = [classes[int(c.steps[i].argmax())] for i in idx]
        out.append(
            f'<h3>{esc(c.entry.source or c.entry.id)}: true <span class="ok-text">{esc(c.entry.label)}</span>,'
            f' predicted <span class="wrong-text">{esc(pred)}</span> ({probs.max():.2f})</h3>'
        )
        frames, why = grab_frames(video_path(store, c.entry), times)
        out.append(
            _strip(frames, times, seg_preds, c.entry.label)
            if frames
            else f'<div class="missing">{esc(why)}; no frames shown.</div>'
        )
    return "".join(out)


def _curves(
    clips: Sequence[ClipScores], classes: list[str], store: FeatureStore, seg: float
) -> str:
    out = []
    for k, cls in enumerate(classes):
        mine = [c for c in clips if c.entry.label == cls]
        if not mine:
            out.append(f'<h3>{esc(cls)}</h3><div class="missing">No test clip of this class.</div>')
            continue
        # the clip the model is surest about (right if any is right)
        c = max(mine, key=lambda c: (int(c.steps.mean(0).argmax() == k), float(c.steps.mean(0)[k])))
        pred = build_prediction(
            c.entry.source or c.entry.id, c.steps, classes, seg, c.entry.duration
        )
        scores = np.array([s["anomaly_score"] for s in pred["segments"]])
        peaks = peak_indices(scores, PEAK_THUMBS)
        times = [min((i + 0.5) * seg, c.entry.duration) for i in peaks]
        frames, why = grab_frames(video_path(store, c.entry), times, edge=THUMB_EDGE + 32)
        thumbs = list(zip(times, frames, strict=True)) if frames else None
        png = figure_png(plot_timeline, pred, thumbnails=thumbs)
        note = (
            ""
            if frames
            else f'<div class="missing">{esc(why)}; curve shown without thumbnails.</div>'
        )
        out.append(
            f"<h3>{esc(cls)}: {esc(c.entry.source or c.entry.id)}</h3>"
            + figure(png, f"anomaly-score curve of a {cls} clip")
            + note
        )
    return "".join(out)


def write_evaluation_report(
    out: str | Path,
    metrics: dict,
    clips: Sequence[ClipScores],
    classes: list[str],
    store: FeatureStore,
    segment_seconds: float,
) -> Path:
    """Write ``OUT/report.html`` (one self-contained page) and return its path."""
    classes = list(classes)
    m = metrics
    title = f"Evaluation: {m.get('model')} / {m.get('modality')} on the {m.get('split')} split"
    banner = ""
    if m.get("weights") == "random":
        banner = (
            '<div class="warn"><b>RANDOM WEIGHTS.</b> The features come from randomly initialised '
            "backbones; these numbers test the pipeline, not the paper's models.</div>"
        )
    dropped = f", {esc(m['dropped_sense'])} blanked at test time" if m.get("dropped_sense") else ""
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{m["n"]} clips, {len(classes)} classes{dropped}. Checkpoint: '
        f"<code>{esc(m.get('checkpoint'))}</code>. Features: <code>{esc(m.get('features'))}</code>.</p>",
        banner,
        "<h2>Headline metrics</h2>",
        _headline(m),
        _undefined(m),
        "<h2>Per class</h2>",
        _per_class(m),
        "<h2>Confusion matrix (Figs. 6, 7)</h2>",
        _confusion(m, classes),
        "<h2>Feature space (Fig. 3)</h2>",
        _embeddings(clips, classes),
        "<h2>Misclassified clips (Fig. 4)</h2>",
        _errors(clips, classes, store, segment_seconds),
        "<h2>Anomaly-score curves, one clip per class (Fig. 5)</h2>",
        '<p class="meta">Anomaly score = 1 − p(normal) per segment; the coloured band at the bottom '
        "is each segment's predicted class; thumbnails are the frames at the curve's peaks.</p>",
        _curves(clips, classes, store, segment_seconds),
    ]
    return write_page(Path(out) / REPORT_FILE, title, "\n".join(body))
