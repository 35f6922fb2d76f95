"""An ablation grid's results for people: results.csv, results.md (the paper's tables, mean ± std
over seeds), results.png and results.html (each table with a bar chart, std error bars)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avarnet.io import atomic_write_text
from avarnet.plots import plot_grouped_bars
from avarnet.report.html import esc, figure, figure_png, markdown_table, pipe_table, write_page
from avarnet.store import FeatureStore

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
RESULTS_HTML = "results.html"

MODEL_TITLES = {
    "gru": "GRU",
    "bigru": "Bi-GRU",
    "lstm": "LSTM",
    "bilstm": "Bi-LSTM",
    "transformer": "Transformer",
    "mtcn": "MTCN",
}
MODALITY_ORDER: tuple[str, ...] = ("audio", "video", "fused")
MAIN_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Acc"),
    ("precision", "Pre"),
    ("recall", "Rec"),
    ("f1", "F1"),
)
# The paper's Table 2 precision / recall / F1 match support-weighted averaging.
WEIGHTED_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Acc"),
    ("precision_weighted", "wPre"),
    ("recall_weighted", "wRec"),
    ("f1_weighted", "wF1"),
)

CSV_COLUMNS: tuple[str, ...] = (
    "model",
    "modality",
    "fusion",
    "seq_len",
    "seed",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "ap",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "params",
    "train_seconds",
    "accuracy_no_audio",
    "accuracy_no_video",
    "best_epoch",
    "epochs_run",
)


@dataclass(frozen=True)
class GridLayout:
    """The shape of an ablation grid that its tables follow."""

    models: tuple[str, ...]  # in row order
    modalities: tuple[str, ...]
    fusions: tuple[str, ...]
    seq_lens: tuple[int, ...]
    base_seq_len: int  # of the main, fusion and missing-sense tables


def model_title(name: str) -> str:
    return MODEL_TITLES.get(name, name)


# -- running cells -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BarChart:
    """Grouped bars: one cluster per label, one bar per group; means / stds (labels, groups), NaN = no bar."""

    labels: list[str]
    groups: list[str]
    means: np.ndarray
    stds: np.ndarray
    ylabel: str
    title: str


@dataclass(frozen=True)
class Section:
    """One table of the page (as markdown pipe-table lines) and its chart."""

    title: str
    table: list[str]
    chart: BarChart | None = None
    note: str = ""


def write_results_page(
    path: str | Path, title: str, intro: Sequence[str], sections: Sequence[Section]
) -> Path:
    """Write the page; ``intro`` holds paragraphs of plain text (escaped here)."""
    body = [f"<h1>{esc(title)}</h1>"]
    for p in intro:
        cls = ' class="warn"' if p.startswith("WARNING") else ""
        body.append(f"<p{cls}>{esc(p)}</p>")
    for s in sections:
        body.append(f"<h2>{esc(s.title)}</h2>")
        if s.note:
            body.append(f'<p class="meta">{esc(s.note)}</p>')
        body.append(markdown_table(s.table))
        c = s.chart
        if c is not None and np.isfinite(c.means).any():
            png = figure_png(
                plot_grouped_bars,
                c.labels,
                c.groups,
                c.means,
                c.stds,
                ylabel=c.ylabel,
                title=c.title,
            )
            body.append(figure(png, c.title))
    return write_page(Path(path), title, "\n".join(body))


# -- aggregation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (std is NaN for one seed); values in [0, 1]."""

    mean: float
    std: float
    n: int

    def pct(self) -> str:
        """``89.29 ± 1.20`` in percent; the mean alone when there is a single seed."""
        if math.isnan(self.mean):
            return "–"
        return (
            f"{100 * self.mean:.2f}"
            if self.n < 2
            else f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"
        )


def summarize(rows: Sequence[dict], metric: str) -> dict[tuple[str, str, str, int], Stat]:
    """Stat of ``metric`` per setting (model, modality, fusion, seq_len), over the seeds present."""
    groups: dict[tuple[str, str, str, int], list[float]] = {}
    for r in rows:
        value = r.get(metric)
        if value is not None:
            groups.setdefault(
                (r["model"], r["modality"], r["fusion"], int(r["seq_len"])), []
            ).append(float(value))
    return {k: stat_of(v) for k, v in groups.items()}


def stat_of(values: Sequence[float]) -> Stat:
    a = np.asarray(values, dtype=np.float64)
    std = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
    return Stat(float(a.mean()), std, len(a))


def winner_line(rows: Sequence[dict], L0: int) -> str:
    """Which model + modality had the best mean accuracy in the main table, and its margin over the next model."""
    acc = {k: s for k, s in summarize(rows, "accuracy").items() if k[2] == "early" and k[3] == L0}
    if not acc:
        return "No finished runs yet."
    ranked = sorted(acc.items(), key=lambda kv: -kv[1].mean)
    (model, modality, _, _), best = ranked[0]
    head = (
        f"Best mean accuracy: {model_title(model)} on {modality} input, {100 * best.mean:.2f}% "
        f"over {best.n} seed{'s' if best.n != 1 else ''}"
    )
    others = [(k, s) for k, s in ranked if k[0] != model]
    if not others:
        return head + " (the only model in the grid)."
    (m2, mod2, _, _), second = others[0]
    margin = 100 * (best.mean - second.mean)
    relation = "tied with" if round(margin, 2) == 0 else f"{margin:.2f} points above"
    return (
        f"{head}; {relation} the runner-up model, {model_title(m2)} "
        f"({100 * second.mean:.2f}% on {mod2} input)."
    )


# -- tables ------------------------------------------------------------------------------------


def main_table(
    rows: Sequence[dict],
    models: Sequence[str],
    modalities: Sequence[str],
    L0: int,
    metrics: Sequence[tuple[str, str]] = MAIN_METRICS,
) -> list[str]:
    """Table 2 layout: rows = models; per modality group Acc, Pre, Rec, F1 (mean ± std, %).

    ``metrics``: MAIN_METRICS (macro averages) or WEIGHTED_METRICS (support-weighted).
    """
    groups = [m for m in MODALITY_ORDER if m in modalities]
    stats = {metric: summarize(rows, metric) for metric, _ in metrics}
    header = ["Model"] + [
        f"{g.capitalize()}: {short}" if i == 0 else short
        for g in groups
        for i, (_, short) in enumerate(metrics)
    ]
    body = []
    for m in models:
        cells = [stats[metric].get((m, g, "early", L0)) for g in groups for metric, _ in metrics]
        body.append([model_title(m)] + [s.pct() if s else "–" for s in cells])
    return pipe_table(header, body)


def accuracy_table(
    rows: Sequence[dict],
    models: Sequence[str],
    first: str,
    columns: Sequence[tuple[str, tuple[str, str, int], str]],
) -> list[str]:
    """Rows = models; columns (title, (modality, fusion, L), metric) of mean ± std in %."""
    stats = {metric: summarize(rows, metric) for metric in {c[2] for c in columns}}
    body = []
    for m in models:
        cells = [stats[metric].get((m, *setting)) for _, setting, metric in columns]
        body.append([model_title(m)] + [s.pct() if s else "–" for s in cells])
    return pipe_table([first] + [c[0] for c in columns], body)


def seq_len_table(
    rows: Sequence[dict], models: Sequence[str], seq_lens: Sequence[int]
) -> list[str]:
    """Table 3 layout: accuracy per sequence length (fused input, early fusion)."""
    cols = [(f"L = {L}", ("fused", "early", L), "accuracy") for L in sorted(seq_lens)]
    return accuracy_table(rows, models, "Model", cols)


def fusion_table(rows: Sequence[dict], models: Sequence[str], L0: int) -> list[str]:
    """Accuracy and F1 of early vs late fusion on fused input."""
    cols = [
        (f"{f.capitalize()} {short}", ("fused", f, L0), metric)
        for metric, short in (("accuracy", "Acc"), ("f1", "F1"))
        for f in ("early", "late")
    ]
    return accuracy_table(rows, models, "Model", cols)


def missing_sense_table(rows: Sequence[dict], models: Sequence[str], L0: int) -> list[str]:
    """Accuracy of the fused early-fusion models with both senses, and with one blanked at test time."""
    setting = ("fused", "early", L0)
    cols = [
        ("Both senses", setting, "accuracy"),
        ("Audio missing", setting, "accuracy_no_audio"),
        ("Video missing", setting, "accuracy_no_video"),
    ]
    return accuracy_table(rows, models, "Model", cols)


def weights_banner(store: FeatureStore) -> list[str]:
    if store.spec.weights != "random":
        return [
            f"Features: `{store.spec.video_backbone}` (video) + `{store.spec.audio_backbone}` (audio), "
            f"{store.spec.weights} weights."
        ]
    return [
        "> **WARNING — RANDOM WEIGHTS.** These features come from randomly initialised backbones "
        f"(`--weights random`, seed {store.spec.seed}), not the pretrained MobileViT and Wav2Vec2. The numbers "
        "below test the pipeline; they say nothing about the paper's models or results."
    ]


def results_markdown(
    rows: Sequence[dict], store: FeatureStore, grid: GridLayout, split: str, epochs: int
) -> str:
    """results.md: the main table, then the fusion, sequence-length and missing-sense tables when present."""
    models, L0 = grid.models, grid.base_seq_len
    n_seeds = len({r["seed"] for r in rows})
    lines = [
        "# Ablation results",
        "",
        *weights_banner(store),
        "",
        f"Feature store: `{store.root}` ({len(store.classes)} classes). Evaluated on the `{split}` split "
        f"({len(store.split(split))} clips); {len(rows)} runs, up to {epochs} epochs each. Values are clip-level "
        f"metrics in %, mean ± sample std over {n_seeds} seed{'s' if n_seeds != 1 else ''} "
        "(precision, recall, F1 macro-averaged).",
        "",
        f"**{winner_line(rows, L0)}**",
        "",
        f"## Modalities (early fusion, sequence length {L0}; macro precision, recall, F1)",
        "",
        *main_table(rows, models, grid.modalities, L0),
        "",
        f"## Modalities, support-weighted (early fusion, sequence length {L0}; wPre, wRec, wF1)",
        "",
        "Precision, recall and F1 weighted by each class's test clips, the averaging that matches "
        "the paper's Table 2 (weighted recall equals accuracy).",
        "",
        *main_table(rows, models, grid.modalities, L0, WEIGHTED_METRICS),
    ]
    if "late" in grid.fusions:
        lines += [
            "",
            f"## Fusion strategy (fused input, sequence length {L0})",
            "",
            *fusion_table(rows, models, L0),
        ]
    if len(grid.seq_lens) > 1:
        lines += [
            "",
            "## Sequence length (fused input, early fusion; accuracy)",
            "",
            *seq_len_table(rows, models, grid.seq_lens),
        ]
    if "fused" in grid.modalities:
        lines += [
            "",
            f"## Missing sense at test time (fused early-fusion models, sequence length {L0}; accuracy)",
            "",
            *missing_sense_table(rows, models, L0),
        ]
    return "\n".join(lines) + "\n"


def results_csv(rows: Sequence[dict]) -> str:
    """One line per run with CSV_COLUMNS; empty fields where a value does not apply."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def write_tables(
    out: Path,
    rows: Sequence[dict],
    store: FeatureStore,
    grid: GridLayout,
    split: str,
    epochs: int,
) -> str:
    """Rewrite results.csv and results.md from ``rows``; returns the winner line."""
    atomic_write_text(out / RESULTS_CSV, results_csv(rows))
    atomic_write_text(out / RESULTS_MD, results_markdown(rows, store, grid, split, epochs))
    return winner_line(rows, grid.base_seq_len)


def write_figure(path: Path, rows: Sequence[dict], grid: GridLayout) -> bool:
    """Grouped bar chart of the main table's mean accuracy (std error bars); False when there is nothing to draw."""
    L0, models = grid.base_seq_len, grid.models
    groups = [m for m in MODALITY_ORDER if m in grid.modalities]
    acc = summarize(rows, "accuracy")
    if not rows or not groups:
        return False
    means = np.full((len(models), len(groups)), np.nan)
    stds = np.zeros_like(means)
    for i, m in enumerate(models):
        for j, g in enumerate(groups):
            s = acc.get((m, g, "early", L0))
            if s is not None:
                means[i, j], stds[i, j] = 100 * s.mean, (100 * s.std if s.n > 1 else 0.0)
    n_seeds = len({r["seed"] for r in rows})
    plot_grouped_bars(
        [model_title(m) for m in models],
        [g.capitalize() for g in groups],
        means,
        stds,
        path,
        ylabel="accuracy (%)",
        title=f"Clip accuracy by model and modality (mean ± std over {n_seeds} seeds)",
    )
    return True


def bar_chart(
    rows: Sequence[dict],
    models: Sequence[str],
    columns: Sequence[tuple[str, tuple[str, str, int], str]],
    ylabel: str,
    title: str,
):
    """BarChart of (group title, (modality, fusion, L), metric) columns per model, in %."""
    stats = {metric: summarize(rows, metric) for metric in {c[2] for c in columns}}
    means = np.full((len(models), len(columns)), np.nan)
    stds = np.zeros_like(means)
    for i, m in enumerate(models):
        for j, (_, setting, metric) in enumerate(columns):
            s = stats[metric].get((m, *setting))
            if s is not None:
                means[i, j], stds[i, j] = 100 * s.mean, (100 * s.std if s.n > 1 else 0.0)
    return BarChart(
        [model_title(m) for m in models], [c[0] for c in columns], means, stds, ylabel, title
    )


def write_results_html(
    path: Path,
    rows: Sequence[dict],
    store: FeatureStore,
    grid: GridLayout,
    split: str,
    epochs: int,
) -> Path:
    """results.html: every table of results.md, each with a bar chart (mean, std error bars over seeds)."""
    models, L0 = grid.models, grid.base_seq_len
    n_seeds = len({r["seed"] for r in rows})
    over = f"mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    groups = [m for m in MODALITY_ORDER if m in grid.modalities]
    by_modality = [(g.capitalize(), (g, "early", L0)) for g in groups]
    sections = [
        Section(
            f"Modalities (early fusion, L = {L0}): accuracy, macro precision / recall / F1",
            main_table(rows, models, grid.modalities, L0),
            bar_chart(
                rows,
                models,
                [(t, st, "accuracy") for t, st in by_modality],
                "accuracy (%)",
                f"Accuracy by model and modality ({over})",
            ),
        ),
        Section(
            f"Modalities (early fusion, L = {L0}): accuracy, support-weighted precision / recall / F1",
            main_table(rows, models, grid.modalities, L0, WEIGHTED_METRICS),
            bar_chart(
                rows,
                models,
                [(t, st, "f1_weighted") for t, st in by_modality],
                "weighted F1 (%)",
                f"Support-weighted F1 by model and modality ({over})",
            ),
            note="Weighted by each class's test clips, the averaging of the paper's Table 2.",
        ),
    ]
    if "late" in grid.fusions:
        cols = [(f.capitalize(), ("fused", f, L0), "accuracy") for f in ("early", "late")]
        sections.append(
            Section(
                f"Fusion strategy (fused input, L = {L0})",
                fusion_table(rows, models, L0),
                bar_chart(rows, models, cols, "accuracy (%)", f"Early vs late fusion ({over})"),
            )
        )
    if len(grid.seq_lens) > 1:
        cols = [(f"L = {L}", ("fused", "early", L), "accuracy") for L in sorted(grid.seq_lens)]
        sections.append(
            Section(
                "Sequence length (fused input, early fusion; accuracy)",
                seq_len_table(rows, models, grid.seq_lens),
                bar_chart(
                    rows, models, cols, "accuracy (%)", f"Accuracy by sequence length ({over})"
                ),
            )
        )
    if "fused" in grid.modalities:
        setting = ("fused", "early", L0)
        cols = [
            ("Both senses", setting, "accuracy"),
            ("Audio missing", setting, "accuracy_no_audio"),
            ("Video missing", setting, "accuracy_no_video"),
        ]
        sections.append(
            Section(
                f"Missing sense at test time (fused early-fusion models, L = {L0}; accuracy)",
                missing_sense_table(rows, models, L0),
                bar_chart(
                    rows, models, cols, "accuracy (%)", f"Accuracy with a sense blanked ({over})"
                ),
            )
        )
    intro = [
        *[
            ln.replace("> **WARNING — RANDOM WEIGHTS.**", "WARNING — RANDOM WEIGHTS.").replace(
                "`", ""
            )
            for ln in weights_banner(store)
        ],
        f"Feature store: {store.root} ({len(store.classes)} classes). Evaluated on the {split} split "
        f"({len(store.split(split))} clips); {len(rows)} runs, up to {epochs} epochs each. Values are clip-level "
        f"metrics in %, {over}; error bars are the sample standard deviation.",
        winner_line(rows, L0),
    ]
    return write_results_page(path, "Ablation results", intro, sections)
