"""`train`, `evaluate`, `models` and `ablate`: temporal models on a feature store."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEVICES, FUSIONS, MODALITIES, SENSES, SPLITS, TrainConfig
from .common import (
    DEVICE,
    EXIT_OK,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    PROBABILITY,
    SEED,
    SEQ_LEN,
    THREADS,
    evaluation,
    model_name,
    trained,
)


def _train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument(
        "--model", default=d.model, type=model_name, help="temporal model (see `avarnet models`)"
    )
    p.add_argument("--modality", choices=MODALITIES, default=d.modality)
    p.add_argument("--fusion", choices=FUSIONS, default=d.fusion)
    p.add_argument("--seq-len", type=SEQ_LEN, default=d.seq_len, help="segments per window (L)")
    p.add_argument(
        "--windows",
        choices=("offline", "live"),
        default=d.windows,
        help="live: train on the windows a stream scores each segment with (the window ending "
        "at it, read at its last step), so evaluation's live accuracy is what is optimised",
    )
    p.add_argument("--epochs", type=POSITIVE_INT, default=d.epochs)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size)
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=d.lr)
    p.add_argument(
        "--modality-dropout",
        type=PROBABILITY,
        default=d.modality_dropout,
        help="probability of blanking one sense per training window",
    )
    p.add_argument("--seed", type=SEED, default=d.seed)
    p.add_argument("--device", choices=DEVICES, default=DEVICE)


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a temporal model on a feature store")
    p.add_argument("feats", type=Path)
    p.add_argument("--out", type=Path, required=True)
    _train_args(p)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics.json and plots for a split of a feature store")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("feats", type=Path)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--drop", choices=SENSES, help="evaluate with one sense blanked")
    p.add_argument("--device", choices=DEVICES, default=DEVICE)
    p.add_argument(
        "--no-report", action="store_true", help="skip report.html (figures, t-SNE, frame strips)"
    )


def add_models(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list the registered temporal models")


def add_ablate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="the paper's ablation grid on a feature store: results.csv/.md/.png/.html"
    )
    p.add_argument("feats", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--models", nargs="+", type=model_name, help="temporal models (default: all registered)"
    )
    p.add_argument(
        "--modalities",
        nargs="+",
        choices=MODALITIES,
        default=list(MODALITIES),
    )
    p.add_argument(
        "--fusions",
        nargs="+",
        choices=FUSIONS,
        default=[TrainConfig().fusion],
        help="with late: an early-vs-late table on fused input",
    )
    p.add_argument(
        "--seq-lens",
        nargs="+",
        type=SEQ_LEN,
        default=[TrainConfig().seq_len],
        help="with several: a sequence-length table on fused input",
    )
    p.add_argument("--seeds", nargs="+", type=SEED, default=[0, 1, 2])
    p.add_argument(
        "--epochs",
        type=POSITIVE_INT,
        default=TrainConfig().epochs,
        help="epochs per run (early stopping may end it sooner)",
    )
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=TrainConfig().batch_size)
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=TrainConfig().lr)
    p.add_argument(
        "--hidden", type=POSITIVE_INT, help="model width override (default: ModelConfig's)"
    )
    p.add_argument(
        "--layers", type=POSITIVE_INT, help="model depth override (default: ModelConfig's)"
    )
    p.add_argument(
        "--stages", type=POSITIVE_INT, help="MTCN stages override (default: ModelConfig's)"
    )
    p.add_argument(
        "--threads",
        type=THREADS,
        default=1,
        help="torch CPU threads per run (small models: 1 is fastest)",
    )
    p.add_argument("--device", choices=DEVICES, default=DEVICE)


def cmd_train(a: argparse.Namespace) -> int:
    from ..train import train

    cfg = TrainConfig(
        model=a.model,
        modality=a.modality,
        fusion=a.fusion,
        seq_len=a.seq_len,
        windows=a.windows,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        modality_dropout=a.modality_dropout,
        seed=a.seed,
        device=a.device,
    )
    r = train(a.feats, a.out, cfg, progress=not a.quiet)
    return trained(r)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..weak import untrimmed_metrics

    m = evaluate(
        a.checkpoint, a.feats, report=not a.no_report, extra=untrimmed_metrics, **evaluation(a)
    )

    def f4(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    extra = f", binary AP {f4(m['binary_ap'])}" if "binary_ap" in m else ""
    print(f"{a.split}: n={m['n']} accuracy {f4(m['accuracy'])}, macro AP {f4(m['ap'])}{extra}")
    print(
        f"  macro    P {f4(m['precision'])}  R {f4(m['recall'])}  F1 {f4(m['f1'])}  (mean over classes)"
    )
    print(
        f"  weighted P {f4(m['precision_weighted'])}  R {f4(m['recall_weighted'])}  F1 {f4(m['f1_weighted'])}"
        "  (weighted by test clips per class)"
    )
    live = m["live"]
    print(
        f"  live     accuracy {f4(live['accuracy'])}  F1 {f4(live['f1'])}  (each segment from the "
        f"window ending at it, as stream and predict --causal score it; trained on "
        f"{m['train_windows']} windows)"
    )
    print(
        f"metrics: {a.out / 'metrics.json'}"
        + ("" if a.no_report else f", report: {a.out / 'report.html'}")
    )
    return EXIT_OK


def cmd_models(a: argparse.Namespace) -> int:
    from ..config import ModelConfig, TrainConfig
    from ..models import count_parameters, create_model, list_models
    from ..train import mtcn_layers_for

    L = TrainConfig().seq_len
    for name in list_models():
        cfg = ModelConfig(name=name)
        if name == "mtcn":  # as `train` builds it: depth follows the window
            cfg = cfg.replace(layers=mtcn_layers_for(L))
        print(
            f"{name:12s} {count_parameters(create_model(cfg)):>10,d} parameters (default sizes, L = {L})"
        )
    return EXIT_OK


def cmd_ablate(a: argparse.Namespace) -> int:
    from ..apps.ablate import AblationGrid, run_ablation

    grid = AblationGrid(
        models=tuple(a.models or ()),
        modalities=tuple(a.modalities),
        fusions=tuple(a.fusions),
        seq_lens=tuple(a.seq_lens),
        seeds=tuple(a.seeds),
    )
    overrides = {
        k: v
        for k, v in (("hidden", a.hidden), ("layers", a.layers), ("stages", a.stages))
        if v is not None
    }
    base = TrainConfig(batch_size=a.batch_size, lr=a.lr, device=a.device, num_threads=a.threads)
    r = run_ablation(
        a.feats,
        a.out,
        grid,
        epochs=a.epochs,
        split=a.split,
        model_overrides=overrides,
        base=base,
        progress=not a.quiet,
    )
    print(f"ablation: {len(r.rows)} runs ({len(r.ran)} run now, {len(r.reused)} reused) -> {a.out}")
    print(r.winner)
    print(
        f"tables: {r.markdown}\nper run: {r.csv}"
        + (f"\nchart: {r.figure}" if r.figure else "")
        + (f"\npage: {r.page}" if r.page else "")
    )
    return EXIT_OK


PARSERS = {
    "train": add_train,
    "evaluate": add_evaluate,
    "models": add_models,
    "ablate": add_ablate,
}

COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "models": cmd_models,
    "ablate": cmd_ablate,
}
