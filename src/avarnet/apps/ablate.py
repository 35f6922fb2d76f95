"""Ablation grid of the paper's Tables 2 and 3: models x modalities x fusions x sequence lengths x seeds.

Every cell trains one temporal model on an existing feature store (features are never re-extracted)
and evaluates it on one split. A cell lives in ``OUT/runs/<cell key>/``; its ``result.json`` is
written atomically after training and evaluation, so a cell without it (a run killed at any point)
is rerun from scratch, and a rerun of the same command completes only the missing cells. After every
cell ``results.csv`` and ``results.md`` are rebuilt from the ``result.json`` files of the grid; the
bar chart ``results.png`` and the page ``results.html`` (every table with its bar chart) are
drawn at the end, by :mod:`avarnet.report.ablation`.

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

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import Checkpoint, load_checkpoint
from ..config import TrainConfig
from ..data import MODALITIES
from ..errors import AvarnetError
from ..evaluate import SENSES, evaluate
from ..io import atomic_write_text, write_json
from ..metrics import strict_metrics_json
from ..models import list_models
from ..models.registry import FUSIONS
from ..progress import progress_bar
from ..report.ablation import (
    RESULTS_CSV,
    RESULTS_HTML,
    RESULTS_MD,
    RESULTS_PNG,
    GridLayout,
    write_figure,
    write_results_html,
    write_tables,
)
from ..runtime import resolve_device
from ..store import FeatureStore
from ..train import train

log = logging.getLogger("avarnet")

RUNS_DIR = "runs"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.json"

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

    def layout(self) -> GridLayout:
        """The shape its tables follow (models resolved, in row order)."""
        return GridLayout(
            self.resolved_models(), self.modalities, self.fusions, self.seq_lens, self.base_seq_len
        )

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
    epochs, layout = base.epochs, grid.layout()
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
    bar = progress_bar(
        total=len(cells), initial=len(reused), unit="run", smoothing=0, disable=not progress
    )
    for c in todo:
        bar.set_description_str(c.key)
        rows[c] = run_cell(store, c, out / RUNS_DIR / c.key, base, model_overrides, split, settings)
        seconds += rows[c]["train_seconds"]
        write_tables(out, [rows[k] for k in cells if k in rows], store, layout, split, epochs)
        bar.set_postfix(acc=f"{rows[c]['accuracy']:.3f}")
        bar.update(1)
    bar.close()
    ordered = [rows[c] for c in cells]
    winner = write_tables(out, ordered, store, layout, split, epochs)
    figure = out / RESULTS_PNG if write_figure(out / RESULTS_PNG, ordered, layout) else None
    page = write_results_html(out / RESULTS_HTML, ordered, store, layout, split, epochs)
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
