"""`xdv`: XD-Violence import, feature extraction, recognition store, weak training and
frame-level evaluation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import DEVICES, SENSES, SPLITS
from .common import COUNT, DEVICE, EXIT_OK, EXIT_PARTIAL, FRACTION, SEED, evaluation
from .xdv_train import add_xdv_train, cmd_xdv_train


def add_xdv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "xdv",
        help="XD-Violence: import features, weakly supervised training, frame-level evaluation",
    )
    xdv = p.add_subparsers(dest="xdv_command", required=True)
    q = xdv.add_parser(
        "import", help="official features (list files) or an extracted store -> XD-Violence store"
    )
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--rgb-list", type=Path, help="training RGB list (<name>__<crop>.npy lines)")
    q.add_argument("--audio-list", type=Path, help="training audio list (<name>__vggish.npy lines)")
    q.add_argument("--test-rgb-list", type=Path)
    q.add_argument("--test-audio-list", type=Path)
    q.add_argument(
        "--features-root",
        type=Path,
        help="folder holding the .npy files when the lists name other paths",
    )
    q.add_argument(
        "--extracted",
        type=Path,
        help="a store made by `avarnet extract` from DATA/train, DATA/test videos",
    )
    truth = q.add_mutually_exclusive_group()
    truth.add_argument("--gt", type=Path, help="official flat frame-level ground truth (gt.npy)")
    truth.add_argument(
        "--annotations",
        type=Path,
        help="annotations.txt: name start1 end1 start2 end2 ... (frames)",
    )
    q.add_argument("--no-crops", action="store_true", help="keep the centre crop only")
    q.add_argument(
        "--val-fraction",
        type=FRACTION,
        default=0.1,
        help="training videos held out for early stopping",
    )
    q.add_argument(
        "--max-mismatch",
        type=COUNT,
        default=1,
        help="snippets visual and audio features may differ by",
    )
    q.add_argument("--seed", type=SEED, default=0)
    q = xdv.add_parser(
        "extract",
        help="features of your own videos in the official layout (16-frame snippets at 24 fps, "
        "five crops, aligned 0.96-s audio patches) and their list files",
    )
    q.add_argument("data", type=Path, help="videos (DATA/train/*, DATA/test/* or any folder)")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument(
        "--video-backbone", required=True, help="onnx:PATH of a 16-frame clip encoder (I3D)"
    )
    q.add_argument(
        "--audio-backbone", required=True, help="onnx:PATH of an audio encoder (VGGish, logmel)"
    )
    q = xdv.add_parser(
        "recognition", help="six-class recognition store (violent videos, class = first code)"
    )
    q.add_argument("feats", type=Path)
    q.add_argument("--out", type=Path, required=True)
    add_xdv_train(xdv)
    q = xdv.add_parser(
        "evaluate", help="frame-level AP (both definitions), ROC-AUC and score curves"
    )
    q.add_argument("checkpoint", type=Path)
    q.add_argument("feats", type=Path)
    q.add_argument("--split", default="test", choices=SPLITS)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--drop", choices=SENSES, help="evaluate with one sense blanked")
    q.add_argument("--plots", type=COUNT, default=12, help="per-video score curves to draw")
    q.add_argument("--device", choices=DEVICES, default=DEVICE)


def cmd_xdv_import(a: argparse.Namespace) -> int:
    from ..apps.xdv import XdvError, import_extracted, import_official

    if a.extracted is not None:
        if a.rgb_list or a.audio_list or a.gt:
            raise XdvError("--extracted takes --annotations only (no list files, no gt.npy)")
        r = import_extracted(
            a.extracted,
            a.out,
            annotations=a.annotations,
            val_fraction=a.val_fraction,
            seed=a.seed,
            progress=not a.quiet,
        )
    else:
        if a.rgb_list is None or a.audio_list is None:
            raise XdvError(
                "give --rgb-list and --audio-list (official features) or --extracted FEATS"
            )
        r = import_official(
            a.out,
            a.rgb_list,
            a.audio_list,
            a.test_rgb_list,
            a.test_audio_list,
            gt=a.gt,
            annotations=a.annotations,
            features_root=a.features_root,
            keep_crops=not a.no_crops,
            val_fraction=a.val_fraction,
            seed=a.seed,
            max_mismatch=a.max_mismatch,
            progress=not a.quiet,
        )
    splits = ", ".join(f"{k} {v}" for k, v in sorted(r.splits.items()))
    print(
        f"imported {r.written}, already done {r.skipped} ({splits}); {r.trimmed} trimmed to the shorter sense; "
        f"frame-level truth: {'yes' if r.frame_level else 'no'} -> {a.out}"
    )
    return EXIT_OK


def cmd_xdv_extract(a: argparse.Namespace) -> int:
    from ..encoders import AudioEncoder, VideoEncoder
    from ..encoders.presets import XdvExtractor, extract_xdv_folder

    extractor = XdvExtractor(
        VideoEncoder.load(a.video_backbone, device="cpu"),
        AudioEncoder.load(a.audio_backbone, device="cpu"),
    )
    result = extract_xdv_folder(a.data, a.out, extractor)
    for video, reason in result.failures:
        print(f"failed: {video}: {reason}", file=sys.stderr)
    print(f"extracted {result.written} videos -> {', '.join(str(p) for p in result.lists)}")
    return EXIT_PARTIAL if result.failures else EXIT_OK


def cmd_xdv_recognition(a: argparse.Namespace) -> int:
    from ..apps.xdv import recognition_store

    r = recognition_store(a.feats, a.out, progress=not a.quiet)
    print(f"recognition store: {r.written + r.skipped} violent videos -> {a.out}")
    return EXIT_OK


def cmd_xdv_evaluate(a: argparse.Namespace) -> int:
    from ..weak import evaluate_weak

    m = evaluate_weak(a.checkpoint, a.feats, plots=a.plots, progress=not a.quiet, **evaluation(a))
    c = m["constant_baseline"]
    print(
        f"{a.split}: {m['n']} videos, {m['frames']} frames ({m['frame_positive_rate']:.3f} violent)"
    )
    rows = (
        ("AP (trapezoid, as published)", "frame_pr_auc"),
        ("AP (step-wise, scikit-learn)", "frame_ap"),
        ("ROC-AUC", "frame_roc_auc"),
    )
    for title, key in rows:
        print(f"  frame {title:<29} {m[key]:.4f}   constant score {c[key]:.4f}")
    print("  (definitions: ap_definitions in metrics.json)")
    for w in m["warnings"]:
        print(w)
    print(
        f"report: {a.out / 'metrics.json'}, curves: {a.out / 'curves'}, page: {a.out / 'report.html'}"
    )
    return EXIT_OK


XDV_COMMANDS = {
    "extract": cmd_xdv_extract,
    "import": cmd_xdv_import,
    "recognition": cmd_xdv_recognition,
    "train": cmd_xdv_train,
    "evaluate": cmd_xdv_evaluate,
}


def cmd_xdv(a: argparse.Namespace) -> int:
    return XDV_COMMANDS[a.xdv_command](a)


PARSERS = {
    "xdv": add_xdv,
}

COMMANDS = {
    "xdv": cmd_xdv,
}
