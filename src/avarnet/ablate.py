"""Ablation grid of the paper's Tables 2 and 3: models x modalities x fusions x sequence lengths x seeds.

Every cell trains one temporal model on an existing feature store (features are never re-extracted)
and evaluates it on one split. A cell lives in ``OUT/runs/<cell key>/``; its ``result.json`` is
written atomically after training and evaluation, so a cell without it (a run killed at any point)
is rerun from scratch, and a rerun of the same command completes only the missing cells. After every
cell ``results.csv`` and ``results.md`` are rebuilt from the ``result.json`` files of the grid; the
bar chart ``results.png`` and the page ``results.html`` (every table with its bar chart) are
drawn at the end.

Which cells make up the grid:

- main table (Table 2): every model x every modality, early fusion, the base sequence length;
- fusion table: with ``late`` among the fusions, every model x {early, late} on fused input
  (late fusion needs both senses, so it is never paired with audio or video alone);
- sequence-length table (Table 3): with more than one length, every model x every length on fused
  input with early fusion;

each over every seed; the union is deduplicated. The base sequence length is TrainConfig's default
(10, the paper's choice) when it is among the lengths, else the first length given.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import Checkpoint, load_checkpoint
from .config import TrainConfig
from .data import MODALITIES
from .errors import AvarnetError
from .evaluate import SENSES, evaluate
from .io import atomic_write_text, write_json
from .metrics import strict_metrics_json
from .models import list_models
from .models.registry import FUSIONS
from .report.html import pipe_table
from .runtime import resolve_device
from .store import FeatureStore
from .train import train

log = logging.getLogger("avarnet")

RUNS_DIR = "runs"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
RESULTS_HTML = "results.html"

DEFAULT_MODALITIES: tuple[str, ...] = MODALITIES
DEFAULT_FUSIONS: tuple[str, ...] = ("early",)
DEFAULT_SEQ_LENS: tuple[int, ...] = (TrainConfig().seq_len,)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
# The 54 default runs (6 models x 3 modalities x 3 seeds) on 10 classes x 20 clips must fit 30 minutes
# on 2 CPU cores (about 30 s per run). Measured there with 640/768-d features, one thread per run and
# 50 epochs: MTCN about 24 s of CPU per run, the baselines 3-5 s (early stopping ends most sooner); the
# whole default grid took 13 min wall (6.5 min CPU) while other jobs kept the machine busy. The same
# epochs as `avarnet train` keep ablation numbers comparable with single runs.
DEFAULT_EPOCHS = TrainConfig().epochs
# Torch threads per run: these small models train fastest on one, and two threads on a busy 2-core
# machine spent more than ten times the CPU time in a measurement.
DEFAULT_THREADS = 1
RANDOM_WEIGHTS_PREFIX = "RANDOM WEIGHTS"  # train's per-run warning, said once per grid here instead

# Paper order of the rows and the column groups; models outside it follow alphabetically.
PAPER_MODEL_ORDER: tuple[str, ...] = ("gru", "bigru", "lstm", "bilstm", "transformer", "mtcn")
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


# TrainConfig fields set by each cell, or that do not change results (where and how fast it runs).
PER_CELL_FIELDS = frozenset(
    {"model", "modality", "fusion", "seq_len", "seed", "device", "num_threads"}
)


class AblationError(AvarnetError):
    """The ablation grid or its options are invalid."""


@dataclass(frozen=True, order=True)
class Cell:
    """One run of the grid."""

    model: str
    modality: str
    fusion: str
    seq_len: int
    seed: int

    @property
    def key(self) -> str:
        """Folder name under ``OUT/runs``, e.g. ``mtcn-fused-early-L10-s0``."""
        return f"{self.model}-{self.modality}-{self.fusion}-L{self.seq_len}-s{self.seed}"


@dataclass(frozen=True)
class AblationGrid:
    """What to compare; ``models`` empty means every registered model."""

    models: tuple[str, ...] = ()
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    fusions: tuple[str, ...] = DEFAULT_FUSIONS
    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS
    seeds: tuple[int, ...] = DEFAULT_SEEDS

    def resolved_models(self) -> tuple[str, ...]:
        """Models in paper order (registered ones only)."""
        return order_models(self.models or list_models())

    @property
    def base_seq_len(self) -> int:
        """Sequence length of the main and fusion tables."""
        default = TrainConfig().seq_len
        return default if default in self.seq_lens else self.seq_lens[0]

    def validate(self) -> None:
        """Raise AblationError on unknown names or empty / invalid lists."""
        _check_known("model", self.models, list_models())
        _check_known("modality", self.modalities, MODALITIES)
        _check_known("fusion", self.fusions, FUSIONS)
        for name, values in (
            ("modalities", self.modalities),
            ("fusions", self.fusions),
            ("seq_lens", self.seq_lens),
            ("seeds", self.seeds),
        ):
            if not values:
                raise AblationError(f"the grid needs at least one value in {name}")
        if any(L < 1 for L in self.seq_lens):
            raise AblationError(f"sequence lengths must be positive, got {list(self.seq_lens)}")

    def cells(self) -> list[Cell]:
        """The deduplicated union of the main, fusion and sequence-length cells, in run order."""
        self.validate()
        models, L0 = self.resolved_models(), self.base_seq_len
        wanted: list[Cell] = []
        for seed in self.seeds:
            for m in models:
                wanted += [Cell(m, mod, "early", L0, seed) for mod in self.modalities]
                if "late" in self.fusions:
                    wanted += [Cell(m, "fused", f, L0, seed) for f in ("early", "late")]
                if len(self.seq_lens) > 1:
                    wanted += [Cell(m, "fused", "early", L, seed) for L in self.seq_lens]
        return list(dict.fromkeys(wanted))


@dataclass
class AblationResult:
    """Outcome of :func:`run_ablation`: one row per finished cell (results.csv's columns)."""

    rows: list[dict]
    ran: list[Cell]
    reused: list[Cell]
    csv: Path
    markdown: Path
    figure: Path | None
    winner: str
    train_seconds: float = 0.0  # training time of the cells run now
    page: Path | None = None  # results.html


def _check_known(what: str, values: Iterable[str], known: Sequence[str]) -> None:
    unknown = [v for v in values if v not in known]
    if unknown:
        raise AblationError(f"unknown {what} {unknown}; available: {', '.join(known)}")


def order_models(names: Iterable[str]) -> tuple[str, ...]:
    """Unique names in the paper's row order, then any others alphabetically."""
    names = list(dict.fromkeys(names))
    known = [m for m in PAPER_MODEL_ORDER if m in names]
    return tuple(known + sorted(set(names) - set(known)))


def model_title(name: str) -> str:
    return MODEL_TITLES.get(name, name)


# -- running cells -----------------------------------------------------------------------------


def run_settings(
    store: FeatureStore, base: TrainConfig, model_overrides: dict | None, split: str
) -> dict:
    """Everything besides the cell that shapes a result; a result.json made with other settings is stale."""
    train_cfg = {k: v for k, v in base.to_dict().items() if k not in PER_CELL_FIELDS}
    return {
        "train": train_cfg,
        "model_overrides": dict(sorted((model_overrides or {}).items())),
        "split": split,
        "features": store.spec.replace(random_init={}).to_dict(),
        "classes": list(store.classes),
    }


def load_result(run_dir: Path, settings: dict) -> dict | None:
    """The row of a finished cell, or None if it is missing, unreadable or made with other settings."""
    path = run_dir / RESULT_FILE
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec["row"] if rec.get("settings") == settings and "row" in rec else None


def _sense_accuracy(ckpt: Checkpoint, store: FeatureStore, split: str, sense: str) -> float | None:
    """Accuracy of a fused model with one sense blanked at test time; None for single-sense models."""
    if ckpt.modality != "fused":
        return None
    return float(evaluate(ckpt, store, split=split, drop=sense)["accuracy"])


def run_cell(
    store: FeatureStore,
    cell: Cell,
    run_dir: Path,
    base: TrainConfig,
    model_overrides: dict | None,
    split: str,
    settings: dict,
) -> dict:
    """Train + evaluate one cell from scratch in ``run_dir``; writes metrics.json, then result.json last."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # leftovers of an interrupted run
    cfg = base.replace(
        model=cell.model,
        modality=cell.modality,
        fusion=cell.fusion,
        seq_len=cell.seq_len,
        seed=cell.seed,
    )
    tr = train(store, run_dir, cfg, model_overrides, progress=False)
    ckpt = load_checkpoint(tr.checkpoint, resolve_device(cfg.device))
    metrics = evaluate(ckpt, store, split=split)
    metrics["checkpoint"] = str(tr.checkpoint)
    drops = {s: _sense_accuracy(ckpt, store, split, s) for s in SENSES}
    row = {
        "model": cell.model,
        "modality": cell.modality,
        "fusion": cell.fusion,
        "seq_len": cell.seq_len,
        "seed": cell.seed,
        **{k: float(metrics[k]) for k in ("accuracy", "precision", "recall", "f1", "ap")},
        **{k: metrics.get(k) for k in ("precision_weighted", "recall_weighted", "f1_weighted")},
        "params": tr.params,
        "train_seconds": round(tr.seconds, 2),
        "accuracy_no_audio": drops["audio"],
        "accuracy_no_video": drops["video"],
        "best_epoch": tr.best_epoch,
        "epochs_run": len(tr.history),
    }
    atomic_write_text(run_dir / METRICS_FILE, strict_metrics_json(metrics))
    write_json(run_dir / RESULT_FILE, {"cell": cell.key, "settings": settings, "row": row})
    return row


def run_ablation(
    feats: str | Path | FeatureStore,
    out: str | Path,
    grid: AblationGrid = AblationGrid(),
    epochs: int = DEFAULT_EPOCHS,
    split: str = "test",
    model_overrides: dict | None = None,
    base: TrainConfig | None = None,
    progress: bool = True,
) -> AblationResult:
    """Run (or finish) the grid on a feature store; writes results.csv, results.md and results.png to ``out``.

    ``base`` holds the training settings shared by all cells (its model, modality, fusion, seq_len
    and seed are replaced per cell; its epochs by ``epochs``). Finished cells with the same settings
    are reused, not rerun.
    """
    store = feats if isinstance(feats, FeatureStore) else FeatureStore.open(feats)
    if not store.split(split):
        raise AblationError(f"split {split!r} of {store.root} is empty; nothing to evaluate on")
    base = (base or TrainConfig(num_threads=DEFAULT_THREADS)).replace(epochs=epochs)
    cells = grid.cells()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if store.spec.weights == "random":
        log.warning(
            "%s: every run of this grid uses features of randomly initialised backbones",
            RANDOM_WEIGHTS_PREFIX,
        )
    quiet, threads = _GridLogFilter(RANDOM_WEIGHTS_PREFIX), torch.get_num_threads()
    log.addFilter(quiet)
    try:
        return _run_grid(store, out, grid, cells, base, model_overrides, split, progress)
    finally:
        log.removeFilter(quiet)
        torch.set_num_threads(threads)


class _GridLogFilter(logging.Filter):
    """Keeps the progress bar readable during a grid: drops the per-run chatter of the runs (info
    from training, e.g. early stops, which history.json records) and a warning given once for the
    whole grid (records starting with ``repeated``)."""

    def __init__(self, repeated: str):
        super().__init__()
        self.repeated = repeated

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.repeated):
            return False
        return record.levelno >= logging.WARNING or record.module == __name__.rsplit(".", 1)[-1]


def _run_grid(
    store: FeatureStore,
    out: Path,
    grid: AblationGrid,
    cells: list[Cell],
    base: TrainConfig,
    model_overrides: dict | None,
    split: str,
    progress: bool,
) -> AblationResult:
    """Reuse finished cells, run the others with a progress bar, write the tables and the chart."""
    epochs = base.epochs
    settings = run_settings(store, base, model_overrides, split)
    rows: dict[Cell, dict] = {}
    for c in cells:
        row = load_result(out / RUNS_DIR / c.key, settings)
        if row is not None:
            rows[c] = row
    reused, todo = [c for c in cells if c in rows], [c for c in cells if c not in rows]
    if reused:
        log.info(
            "ablation: %d of %d cells already finished, %d to run",
            len(reused),
            len(cells),
            len(todo),
        )
    seconds = 0.0
    # smoothing=0: the ETA uses the mean time per run so far, steadier across models of unequal cost
    bar = tqdm(total=len(cells), initial=len(reused), unit="run", smoothing=0, disable=not progress)
    for c in todo:
        bar.set_description_str(c.key)
        rows[c] = run_cell(store, c, out / RUNS_DIR / c.key, base, model_overrides, split, settings)
        seconds += rows[c]["train_seconds"]
        write_tables(out, [rows[k] for k in cells if k in rows], store, grid, split, epochs)
        bar.set_postfix(acc=f"{rows[c]['accuracy']:.3f}")
        bar.update(1)
    bar.close()
    ordered = [rows[c] for c in cells]
    winner = write_tables(out, ordered, store, grid, split, epochs)
    figure = out / RESULTS_PNG if write_figure(out / RESULTS_PNG, ordered, grid) else None
    page = write_results_html(out / RESULTS_HTML, ordered, store, grid, split, epochs)
    return AblationResult(
        ordered,
        todo,
        reused,
        out / RESULTS_CSV,
        out / RESULTS_MD,
        figure,
        winner,
        seconds,
        page=page,
    )


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
    return {k: _stat(v) for k, v in groups.items()}


def _stat(values: Sequence[float]) -> Stat:
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


def _accuracy_table(
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
    return _accuracy_table(rows, models, "Model", cols)


def fusion_table(rows: Sequence[dict], models: Sequence[str], L0: int) -> list[str]:
    """Accuracy and F1 of early vs late fusion on fused input."""
    cols = [
        (f"{f.capitalize()} {short}", ("fused", f, L0), metric)
        for metric, short in (("accuracy", "Acc"), ("f1", "F1"))
        for f in ("early", "late")
    ]
    return _accuracy_table(rows, models, "Model", cols)


def missing_sense_table(rows: Sequence[dict], models: Sequence[str], L0: int) -> list[str]:
    """Accuracy of the fused early-fusion models with both senses, and with one blanked at test time."""
    setting = ("fused", "early", L0)
    cols = [
        ("Both senses", setting, "accuracy"),
        ("Audio missing", setting, "accuracy_no_audio"),
        ("Video missing", setting, "accuracy_no_video"),
    ]
    return _accuracy_table(rows, models, "Model", cols)


def _weights_banner(store: FeatureStore) -> list[str]:
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
    rows: Sequence[dict], store: FeatureStore, grid: AblationGrid, split: str, epochs: int
) -> str:
    """results.md: the main table, then the fusion, sequence-length and missing-sense tables when present."""
    models, L0 = grid.resolved_models(), grid.base_seq_len
    n_seeds = len({r["seed"] for r in rows})
    lines = [
        "# Ablation results",
        "",
        *_weights_banner(store),
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
    grid: AblationGrid,
    split: str,
    epochs: int,
) -> str:
    """Rewrite results.csv and results.md from ``rows``; returns the winner line."""
    atomic_write_text(out / RESULTS_CSV, results_csv(rows))
    atomic_write_text(out / RESULTS_MD, results_markdown(rows, store, grid, split, epochs))
    return winner_line(rows, grid.base_seq_len)


def write_figure(path: Path, rows: Sequence[dict], grid: AblationGrid) -> bool:
    """Grouped bar chart of the main table's mean accuracy (std error bars); False when there is nothing to draw."""
    from .plots import plot_grouped_bars

    L0, models = grid.base_seq_len, grid.resolved_models()
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


def _bars(
    rows: Sequence[dict],
    models: Sequence[str],
    columns: Sequence[tuple[str, tuple[str, str, int], str]],
    ylabel: str,
    title: str,
):
    """BarChart of (group title, (modality, fusion, L), metric) columns per model, in %."""
    from .report import BarChart

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
    grid: AblationGrid,
    split: str,
    epochs: int,
) -> Path:
    """results.html: every table of results.md, each with a bar chart (mean, std error bars over seeds)."""
    from .report import Section, write_results_page

    models, L0 = grid.resolved_models(), grid.base_seq_len
    n_seeds = len({r["seed"] for r in rows})
    over = f"mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    groups = [m for m in MODALITY_ORDER if m in grid.modalities]
    by_modality = [(g.capitalize(), (g, "early", L0)) for g in groups]
    sections = [
        Section(
            f"Modalities (early fusion, L = {L0}): accuracy, macro precision / recall / F1",
            main_table(rows, models, grid.modalities, L0),
            _bars(
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
            _bars(
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
                _bars(rows, models, cols, "accuracy (%)", f"Early vs late fusion ({over})"),
            )
        )
    if len(grid.seq_lens) > 1:
        cols = [(f"L = {L}", ("fused", "early", L), "accuracy") for L in sorted(grid.seq_lens)]
        sections.append(
            Section(
                "Sequence length (fused input, early fusion; accuracy)",
                seq_len_table(rows, models, grid.seq_lens),
                _bars(rows, models, cols, "accuracy (%)", f"Accuracy by sequence length ({over})"),
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
                _bars(
                    rows, models, cols, "accuracy (%)", f"Accuracy with a sense blanked ({over})"
                ),
            )
        )
    intro = [
        *[
            ln.replace("> **WARNING — RANDOM WEIGHTS.**", "WARNING — RANDOM WEIGHTS.").replace(
                "`", ""
            )
            for ln in _weights_banner(store)
        ],
        f"Feature store: {store.root} ({len(store.classes)} classes). Evaluated on the {split} split "
        f"({len(store.split(split))} clips); {len(rows)} runs, up to {epochs} epochs each. Values are clip-level "
        f"metrics in %, {over}; error bars are the sample standard deviation.",
        winner_line(rows, L0),
    ]
    return write_results_page(path, "Ablation results", intro, sections)
