"""`xdv train`: weakly supervised training, its options unset unless given (they then take
WeakConfig's defaults)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEVICES, FUSIONS, MODALITIES, SCORER_INPUTS, WEAK_OBJECTIVES
from .common import (
    NON_NEGATIVE_FLOAT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    SEQ_LEN,
    model_name,
    trained,
)


def add_xdv_train(xdv: argparse._SubParsersAction) -> None:
    q = xdv.add_parser(
        "train",
        help="weakly supervised (MIL) training from video-level labels",
        description="Unset options take the defaults of avarnet.weak.WeakConfig.",
    )
    q.add_argument("feats", type=Path)
    q.add_argument("--out", type=Path, required=True)
    weak_args(q)


def weak_args(p: argparse.ArgumentParser) -> None:
    """Options of `xdv train`; unset ones take WeakConfig's defaults (weak.py stays unimported here)."""
    p.add_argument(
        "--model", type=model_name, help="temporal model (see `avarnet models`; default mtcn)"
    )
    p.add_argument("--modality", choices=MODALITIES)
    p.add_argument("--fusion", choices=FUSIONS)
    p.add_argument("--epochs", type=POSITIVE_INT)
    p.add_argument("--batch-size", type=POSITIVE_INT)
    p.add_argument("--lr", type=POSITIVE_FLOAT)
    p.add_argument(
        "--max-seq-len",
        type=SEQ_LEN,
        help="longer training videos are subsampled uniformly (default 200)",
    )
    p.add_argument(
        "--smooth-weight", type=NON_NEGATIVE_FLOAT, help="weight of the score smoothness term"
    )
    p.add_argument(
        "--sparsity-weight", type=NON_NEGATIVE_FLOAT, help="weight of the score sparsity term"
    )
    p.add_argument(
        "--reversal-weight",
        type=NON_NEGATIVE_FLOAT,
        help="weight of the time-reversal consistency term",
    )
    p.add_argument(
        "--objective",
        choices=WEAK_OBJECTIVES,
        help="refine (default): per-snippet MIL scorer, then the model trained on its pseudo-labels; "
        "mil: the model trained by MIL directly (the reference)",
    )
    p.add_argument(
        "--permutation-weight",
        type=NON_NEGATIVE_FLOAT,
        help="weight of the random-reordering consistency term",
    )
    p.add_argument(
        "--layers", type=POSITIVE_INT, help="dilated layers per MTCN stage (default: the model's)"
    )
    p.add_argument(
        "--local-epochs", type=POSITIVE_INT, help="epochs of the per-snippet scorer (refine)"
    )
    p.add_argument(
        "--scorer-inputs",
        choices=SCORER_INPUTS,
        help="what the per-snippet scorer reads (refine): context (default: the snippet, the "
        "snippet minus its video's mean, its local roughness) or snippet (the snippet alone)",
    )
    p.add_argument(
        "--scorer-restarts",
        type=POSITIVE_INT,
        help="per-snippet scorers trained from different initial weights, the one with the lowest "
        "validation MIL loss kept (refine; default 3)",
    )
    p.add_argument(
        "--pseudo-weight", type=NON_NEGATIVE_FLOAT, help="weight of the pseudo-label term (refine)"
    )
    p.add_argument("--centre-crop-only", action="store_true", help="train on the centre crop only")
    p.add_argument(
        "--autocast",
        choices=("fp32", "bf16"),
        help="fp32 (default); bf16: the model under bfloat16 autocast, the loss in float32",
    )
    p.add_argument(
        "--processes",
        type=POSITIVE_INT,
        help="CPU training processes, each on its share of every batch (default: 2 where two or "
        "more cores are free and an epoch has at least 64 batches, else 1)",
    )
    p.add_argument("--seed", type=SEED)
    p.add_argument("--device", choices=DEVICES)


WEAK_FIELDS = (
    "model",
    "modality",
    "fusion",
    "epochs",
    "batch_size",
    "lr",
    "max_seq_len",
    "smooth_weight",
    "sparsity_weight",
    "reversal_weight",
    "objective",
    "permutation_weight",
    "layers",
    "local_epochs",
    "scorer_inputs",
    "scorer_restarts",
    "pseudo_weight",
    "seed",
    "device",
    "autocast",
    "processes",
)


def cmd_xdv_train(a: argparse.Namespace) -> int:
    from ..weak import WeakConfig, train_weak

    given = {k: getattr(a, k) for k in WEAK_FIELDS if getattr(a, k) is not None}
    cfg = WeakConfig(**given, all_crops=not a.centre_crop_only)
    r = train_weak(a.feats, a.out, cfg, progress=not a.quiet)
    return trained(r)
