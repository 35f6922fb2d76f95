"""`predict` and `demo`: one video's verdict, and the whole job in one folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import (
    DEFAULT_AUDIO_CONTEXT_S,
    DEVICES,
    ONNX_PRECISIONS,
    PRECISIONS,
    RUNTIMES,
    WEIGHTS,
)
from ..errors import InvalidArgumentError
from .common import (
    DEVICE,
    EXIT_OK,
    POSITIVE_INT,
    SEED,
    SPEC,
    add_backbone_overrides,
    checkpoint_with_backbones,
    seconds,
)


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="verdict and anomaly-score timeline for one video")
    p.add_argument("video", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("prediction"))
    p.add_argument(
        "--causal",
        action="store_true",
        help="score each segment from it and the ones before it only",
    )
    add_backbone_overrides(p)
    p.add_argument(
        "--audio-context",
        type=seconds,
        metavar="S",
        help="with --causal: audio look-back in seconds (default: the checkpoint's, else "
        f"{DEFAULT_AUDIO_CONTEXT_S:g})",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=RUNTIMES[0],
        help="onnx: ONNX Runtime on a folder written by `avarnet export` (give it as --checkpoint)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="encoder arithmetic, as for stream (onnx: fp32 or int8); recorded in prediction.json",
    )
    p.add_argument("--device", choices=DEVICES, default=DEVICE)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="synth -> extract -> train -> evaluate -> predict, in one folder"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--clips-per-class", type=POSITIVE_INT, default=10)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--weights", choices=WEIGHTS, default=SPEC.weights)
    p.add_argument("--epochs", type=POSITIVE_INT, default=50)
    p.add_argument("--device", choices=DEVICES, default=DEVICE)


def cmd_predict(a: argparse.Namespace) -> int:
    from ..predict import predict_video

    if a.audio_context is not None and not a.causal:
        raise InvalidArgumentError("--audio-context applies to --causal predictions")
    ckpt, extractor = None, None
    if a.runtime == "onnx":
        from ..export import load_onnx

        if a.precision not in ONNX_PRECISIONS:
            raise InvalidArgumentError(f"--runtime onnx runs {' or '.join(ONNX_PRECISIONS)}")
        bundle = load_onnx(a.checkpoint, a.precision)
        ckpt, extractor = bundle.checkpoint, bundle.extractor
    pred = predict_video(
        a.video,
        ckpt or checkpoint_with_backbones(a),
        out=a.out,
        device=a.device,
        causal=a.causal,
        extractor=extractor,
        audio_context_seconds=a.audio_context,
        runtime=a.runtime,
        precision=a.precision,
    )
    top = sorted(pred["probabilities"].items(), key=lambda kv: -kv[1])[:3]
    peak = max(s["anomaly_score"] for s in pred["segments"])
    print(
        f"{a.video}: {pred['label']}  ("
        + ", ".join(f"{c} {p:.2f}" for c, p in top)
        + f"); peak anomaly score {peak:.2f}"
    )
    print(f"timeline: {a.out / 'prediction.json'}, {a.out / 'timeline.png'}")
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    from ..apps.demo import DemoOptions, run_demo

    s = run_demo(
        a.out,
        DemoOptions(
            clips_per_class=a.clips_per_class,
            seed=a.seed,
            weights=a.weights,
            epochs=a.epochs,
            device=a.device,
        ),
        progress=not a.quiet,
    )
    print()
    print(f"avarnet demo finished in {s['seconds']:.0f}s  [{s['weights_note']}]")
    print(
        f"  test accuracy {s['test_accuracy']:.3f}, macro F1 {s['test_macro_f1']:.3f} on {s['test_clips']} held-out clips"
    )
    print(
        f"  prediction for {s['predicted_video']}: {s['predicted_label']} (true: {s['true_label']})"
    )
    print(
        f"  report: {s['report']}\n  confusion matrix: {s['confusion_matrix']}\n  timeline: {s['timeline']}"
    )
    print(f"  pages: {s['evaluation_page']}, {s['timeline_page']}")
    return EXIT_OK


PARSERS = {
    "predict": add_predict,
    "demo": add_demo,
}

COMMANDS = {
    "predict": cmd_predict,
    "demo": cmd_demo,
}
