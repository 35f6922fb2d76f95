"""Command line: parses, calls the library, prints, sets exit codes.

Exit codes: 0 success, 1 partial failure (some inputs failed; listed), 2 usage or input error.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from .alerts import AlertRule
from .config import (
    AUDIO_MODES,
    DEFAULT_AUDIO_BACKBONE,
    DEFAULT_VIDEO_BACKBONE,
    DEVICES,
    ENCODER_PRECISIONS,
    EXTRACT_ENGINES,
    FUSIONS,
    MODALITIES,
    ONNX_PRECISIONS,
    PRECISIONS,
    RUNTIMES,
    SENSES,
    SPLITS,
    WEAK_OBJECTIVES,
    WEIGHTS,
    FeatureSpec,
    TrainConfig,
)
from .errors import InvalidArgumentError

log = logging.getLogger("avarnet")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3
MIN_SEGMENT_SECONDS = 0.02  # one Wav2Vec2 frame (20 ms); shorter segments could hold no audio frame
MAX_SEQ_LEN = 100_000  # segments per window (about 28 h of 1-s segments)
MAX_FRAMES_PER_SEGMENT = 64
# Choices come from the configuration's lists (config.py) and defaults from its dataclasses;
# tests/test_cli.py checks every option against them.
DEVICE = TrainConfig().device
SPEC = FeatureSpec()
RULE = AlertRule()
BENCH_PRECISIONS = tuple(p for p in PRECISIONS if p != "fp16")  # CPU rows; a GPU adds fp16


def _number(
    kind: type, low: float | None = None, high: float | None = None, low_open: bool = False
):
    """An argparse ``type`` that parses ``kind`` and checks the range at parse time (finite only)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(
                f"must be {' and '.join(x for x in (lo, hi) if x)}, got {text}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)
SEED = _number(int, 0, 2**32 - 1)
THREADS = _number(int, 0, 1024)
WORKERS = _number(int, 0, 1024)
SEQ_LEN = _number(int, 1, MAX_SEQ_LEN)
FRAMES_PER_SEGMENT = _number(int, 1, MAX_FRAMES_PER_SEGMENT)
POSITIVE_FLOAT = _number(float, 0, low_open=True)
NON_NEGATIVE_FLOAT = _number(float, 0)
SEGMENT_SECONDS = _number(float, MIN_SEGMENT_SECONDS)
PROBABILITY = _number(float, 0, 1)
FRACTION = _number(float, 0, 0.99)


def _key_value(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def _model_name(text: str) -> str:
    from .models import list_models  # imported only when a model is named

    if text not in list_models():
        raise argparse.ArgumentTypeError(
            f"unknown model {text!r}; available: {', '.join(list_models())}"
        )
    return text


def _frame_size(text: str) -> str:
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return text


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        default=SPEC.weights,
        help="pretrained backbones (hub id or local folder) or the same architectures with random weights (offline)",
    )
    p.add_argument(
        "--video-backbone", default=DEFAULT_VIDEO_BACKBONE, help="MobileViT hub id or local folder"
    )
    p.add_argument(
        "--audio-backbone", default=DEFAULT_AUDIO_BACKBONE, help="Wav2Vec2 hub id or local folder"
    )
    p.add_argument("--device", choices=DEVICES, default=DEVICE)


def _add_backbone_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--video-backbone",
        help="MobileViT folder or hub id to use instead of the one the checkpoint "
        "records (must be the same backbone: checked)",
    )
    p.add_argument(
        "--audio-backbone", help="Wav2Vec2 folder or hub id instead of the recorded one (checked)"
    )


def _checkpoint_with_backbones(a: argparse.Namespace):
    """The checkpoint of ``a.checkpoint``, its feature spec pointing at --video/--audio-backbone if given."""
    from .checkpoint import load_checkpoint
    from .runtime import resolve_device

    ckpt = load_checkpoint(a.checkpoint, resolve_device(a.device))
    changes = {
        k: v
        for k, v in (("video_backbone", a.video_backbone), ("audio_backbone", a.audio_backbone))
        if v
    }
    ckpt.spec = ckpt.spec.replace(**changes)
    return ckpt


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument(
        "--model", default=d.model, type=_model_name, help="temporal model (see `avarnet models`)"
    )
    p.add_argument("--modality", choices=MODALITIES, default=d.modality)
    p.add_argument("--fusion", choices=FUSIONS, default=d.fusion)
    p.add_argument("--seq-len", type=SEQ_LEN, default=d.seq_len, help="segments per window (L)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avarnet", description="Audio-visual anomaly recognition (AVAR-Net)."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic audio-visual dataset OUT/<class>/*.mp4")
    p.add_argument("out", type=Path)
    p.add_argument("--clips-per-class", type=POSITIVE_INT, default=20)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--min-seconds", type=POSITIVE_FLOAT, default=8.0)
    p.add_argument("--max-seconds", type=POSITIVE_FLOAT, default=12.0)

    p = sub.add_parser("extract", help="feature store for a dataset folder DATA/<class>/<video>")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True)
    _add_backbone_args(p)
    p.add_argument("--segment-seconds", type=SEGMENT_SECONDS, default=SPEC.segment_seconds)
    p.add_argument("--frames-per-segment", type=FRAMES_PER_SEGMENT, default=SPEC.frames_per_segment)
    p.add_argument(
        "--audio-features",
        choices=AUDIO_MODES,
        default=SPEC.audio_mode,
        help="chunked: Wav2Vec2 over 10-s chunks (sees ahead); causal: per segment with --audio-context "
        "of look-back, exactly what `stream` computes (docs/live.md)",
    )
    p.add_argument(
        "--audio-context",
        type=_seconds,
        default=None,
        metavar="S",
        help="causal audio look-back in seconds (0 allowed; default 0)",
    )
    p.add_argument("--seed", type=SEED, default=SPEC.seed, help="split seed and random-weight seed")
    p.add_argument(
        "--workers",
        type=WORKERS,
        help="decoding processes (default: one per core; 0: one video at a time in-process)",
    )
    p.add_argument(
        "--precision",
        choices=ENCODER_PRECISIONS,
        default=SPEC.precision,
        help="encoder precision (bf16: GPUs and CPUs with bf16 instructions; fp16: GPUs)",
    )
    p.add_argument(
        "--engine",
        choices=EXTRACT_ENGINES,
        default=EXTRACT_ENGINES[0],
        help="ray: a Ray Data pipeline (pip install avarnet[ray])",
    )
    p.add_argument(
        "--address", help="Ray cluster to join (auto, ray://HOST:10001); default: start a local one"
    )

    p = sub.add_parser("train", help="train a temporal model on a feature store")
    p.add_argument("feats", type=Path)
    p.add_argument("--out", type=Path, required=True)
    _train_args(p)

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

    p = sub.add_parser("predict", help="verdict and anomaly-score timeline for one video")
    p.add_argument("video", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("prediction"))
    p.add_argument(
        "--causal",
        action="store_true",
        help="score each segment from it and the ones before it only",
    )
    _add_backbone_overrides(p)
    p.add_argument(
        "--audio-context",
        type=_seconds,
        metavar="S",
        help="with --causal: audio look-back in seconds (default: the checkpoint's, else 0)",
    )
    p.add_argument("--device", choices=DEVICES, default=DEVICE)

    p = sub.add_parser(
        "demo", help="synth -> extract -> train -> evaluate -> predict, in one folder"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--clips-per-class", type=POSITIVE_INT, default=10)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--weights", choices=WEIGHTS, default=SPEC.weights)
    p.add_argument("--epochs", type=POSITIVE_INT, default=50)
    p.add_argument("--device", choices=DEVICES, default=DEVICE)

    sub.add_parser("models", help="list the registered temporal models")

    p = sub.add_parser(
        "ablate", help="the paper's ablation grid on a feature store: results.csv/.md/.png/.html"
    )
    p.add_argument("feats", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--models", nargs="+", type=_model_name, help="temporal models (default: all registered)"
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
        "recognition", help="six-class recognition store (violent videos, class = first code)"
    )
    q.add_argument("feats", type=Path)
    q.add_argument("--out", type=Path, required=True)
    q = xdv.add_parser(
        "train",
        help="weakly supervised (MIL) training from video-level labels",
        description="Unset options take the defaults of avarnet.weak.WeakConfig.",
    )
    q.add_argument("feats", type=Path)
    q.add_argument("--out", type=Path, required=True)
    _weak_args(q)
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

    p = sub.add_parser(
        "stream",
        help="live predictions, one per segment, with alerts: a video file, URL or capture device",
    )
    p.add_argument(
        "source", help="video file, rtsp:// / http(s):// URL, or capture device (/dev/video0)"
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument(
        "--realtime",
        action="store_true",
        help="files: read at the file's own speed (live sources always are)",
    )
    p.add_argument("--jsonl", type=Path, help="write the JSON lines here instead of stdout")
    p.add_argument(
        "--threshold",
        type=PROBABILITY,
        default=RULE.threshold,
        help="anomaly score that counts as high",
    )
    p.add_argument(
        "--min-segments",
        type=POSITIVE_INT,
        default=RULE.min_segments,
        help="consecutive high segments that open an event",
    )
    p.add_argument(
        "--hysteresis",
        type=NON_NEGATIVE_FLOAT,
        default=RULE.hysteresis,
        help="an open event stays open while score >= threshold - this",
    )
    p.add_argument(
        "--close-segments",
        type=POSITIVE_INT,
        default=RULE.close_segments,
        help="consecutive segments below that level that close it",
    )
    p.add_argument("--webhook", help="POST each event record (JSON) to this http(s) URL")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=SPEC.precision,
        help="encoder arithmetic: bf16 (CPU with bf16 instructions, GPU), fp16 (GPU), int8 Wav2Vec2 (CPU);"
        " faster, features shift slightly (fp32 equals predict --causal)",
    )
    p.add_argument(
        "--threads", type=THREADS, default=0, help="torch CPU threads (0: torch's default)"
    )
    p.add_argument(
        "--audio-context",
        type=_seconds,
        metavar="S",
        help="audio look-back in seconds (default: the checkpoint's when trained on causal features, else 0)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse a checkpoint trained on features a stream cannot compute (chunked audio)",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=RUNTIMES[0],
        help="onnx: ONNX Runtime on a folder written by `avarnet export` (give it as --checkpoint)",
    )
    p.add_argument(
        "--format",
        dest="input_format",
        help="FFmpeg input format of a capture device (v4l2, avfoundation, dshow)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_key_value,
        help="FFmpeg input option (repeatable)",
    )
    p.add_argument(
        "--no-view",
        action="store_true",
        help="no live terminal view even when stdout is a terminal",
    )
    _add_backbone_overrides(p)
    p.add_argument("--device", choices=DEVICES, default=DEVICE)

    p = sub.add_parser(
        "export", help="ONNX encoders + temporal model + manifest for `stream --runtime onnx`"
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--no-int8", action="store_true", help="skip the dynamically quantised int8 copies"
    )
    p.add_argument(
        "--audio-context",
        type=_seconds,
        metavar="S",
        help="look-back of the exported live features (default: the checkpoint's, else 0)",
    )
    p = sub.add_parser(
        "serve",
        help="camera server: many cameras, events with clips, MQTT, review page (CONFIG.yaml)",
    )
    p.add_argument(
        "config", type=Path, help="YAML file: cameras, checkpoint, alerts, storage, mqtt, web"
    )
    p = sub.add_parser(
        "export-reviewed", help="reviewed event clips of a server as a class-per-folder dataset"
    )
    p.add_argument(
        "config", type=Path, help="the server's YAML file (its storage holds the events)"
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder: OUT/<class>/<clip>.mp4")

    p = sub.add_parser(
        "bench",
        help="throughput and latency of every stage on this machine; prints tables, writes JSON",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench"),
        help="folder for bench.json, bench.md and the test clip",
    )
    p.add_argument("--video", type=Path, help="benchmark this video instead of a generated clip")
    p.add_argument(
        "--seconds", type=POSITIVE_FLOAT, default=30.0, help="length of the generated clip"
    )
    p.add_argument(
        "--size", default="640x360", type=_frame_size, help="generated clip WIDTHxHEIGHT"
    )
    p.add_argument("--fps", type=POSITIVE_FLOAT, default=25.0, help="generated clip frame rate")
    p.add_argument(
        "--threads", type=THREADS, default=0, help="torch CPU threads (0: torch's default)"
    )
    p.add_argument(
        "--video-backbones",
        nargs="+",
        help="MobileViT variants (default: small, x-small, xx-small)",
    )
    p.add_argument("--audio-backbone", default=DEFAULT_AUDIO_BACKBONE)
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=BENCH_PRECISIONS,
        help="CPU precisions to measure (default: fp32, int8, and bf16 where the CPU has it); a GPU adds fp16",
    )
    p.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=list(RUNTIMES),
        help="inference runtimes of the end-to-end rows (onnx: fp32 and int8)",
    )
    p.add_argument(
        "--audio-contexts",
        nargs="+",
        type=_seconds,
        metavar="S",
        help="causal audio look-backs of the end-to-end rows (default 0)",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=DEVICE,
        help="GPU rows are added on cuda",
    )
    p.add_argument("--gpu-only", action="store_true", help="with a GPU: skip the CPU rows")
    return parser


def _weak_args(p: argparse.ArgumentParser) -> None:
    """Options of `xdv train`; unset ones take WeakConfig's defaults (weak.py stays unimported here)."""
    p.add_argument(
        "--model", type=_model_name, help="temporal model (see `avarnet models`; default mtcn)"
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
        "--pseudo-weight", type=NON_NEGATIVE_FLOAT, help="weight of the pseudo-label term (refine)"
    )
    p.add_argument("--centre-crop-only", action="store_true", help="train on the centre crop only")
    p.add_argument("--seed", type=SEED)
    p.add_argument("--device", choices=DEVICES)


_WEAK_FIELDS = (
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
    "pseudo_weight",
    "seed",
    "device",
)


def cmd_synth(a: argparse.Namespace) -> int:
    from .synth import synthesize_dataset

    if a.min_seconds > a.max_seconds:
        raise InvalidArgumentError(
            f"--min-seconds {a.min_seconds:g} exceeds --max-seconds {a.max_seconds:g}"
        )

    paths = synthesize_dataset(
        a.out,
        clips_per_class=a.clips_per_class,
        seed=a.seed,
        duration=(a.min_seconds, a.max_seconds),
        progress=not a.quiet,
    )
    print(f"wrote {len(paths)} clips to {a.out}")
    return EXIT_OK


def cmd_extract(a: argparse.Namespace) -> int:
    from .extract import extract_dataset

    if a.weights == "random":
        log.warning(
            "RANDOM WEIGHTS: backbones are randomly initialised (seed %d); features are for offline use only",
            a.seed,
        )
    common = dict(
        weights=a.weights,
        video_backbone=a.video_backbone,
        audio_backbone=a.audio_backbone,
        segment_seconds=a.segment_seconds,
        frames_per_segment=a.frames_per_segment,
        device=a.device,
        seed=a.seed,
        progress=not a.quiet,
        precision=a.precision,
    )
    if a.engine == "ray":
        from .extract_ray import extract_dataset_ray

        if a.audio_features != "chunked":
            raise InvalidArgumentError(
                "--engine ray extracts chunked audio features; use the local engine for causal"
            )
        r = extract_dataset_ray(a.data, a.out, address=a.address, **common)
    else:
        r = extract_dataset(
            a.data,
            a.out,
            audio_mode=a.audio_features,
            workers=a.workers,
            **common,
            **({} if a.audio_context is None else {"audio_context_seconds": a.audio_context}),
        )
    print(f"extracted {r.done}, already done {r.skipped}, failed {len(r.failures)} -> {a.out}")
    for f in r.failures:
        print(f"  failed: {f['path']}: {f['reason']}")
    return EXIT_PARTIAL if r.failures else EXIT_OK


def _trained(r) -> int:
    """The one line a finished training prints (supervised or weak)."""
    print(
        f"best epoch {r.best_epoch} (val loss {r.best_val_loss:.4f}), {r.params} parameters, "
        f"{r.seconds:.0f}s -> {r.checkpoint}"
    )
    return EXIT_OK


def _evaluation(a: argparse.Namespace) -> dict:
    """The arguments every evaluation command passes on as they are."""
    return {"split": a.split, "out": a.out, "drop": a.drop, "device": a.device}


def cmd_train(a: argparse.Namespace) -> int:
    from .train import train

    cfg = TrainConfig(
        model=a.model,
        modality=a.modality,
        fusion=a.fusion,
        seq_len=a.seq_len,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        modality_dropout=a.modality_dropout,
        seed=a.seed,
        device=a.device,
    )
    r = train(a.feats, a.out, cfg, progress=not a.quiet)
    return _trained(r)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .weak import untrimmed_metrics

    m = evaluate(
        a.checkpoint, a.feats, report=not a.no_report, extra=untrimmed_metrics, **_evaluation(a)
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
    print(
        f"metrics: {a.out / 'metrics.json'}"
        + ("" if a.no_report else f", report: {a.out / 'report.html'}")
    )
    return EXIT_OK


def cmd_predict(a: argparse.Namespace) -> int:
    from .predict import predict_video

    if a.audio_context is not None and not a.causal:
        raise InvalidArgumentError("--audio-context applies to --causal predictions")
    pred = predict_video(
        a.video,
        _checkpoint_with_backbones(a),
        out=a.out,
        device=a.device,
        causal=a.causal,
        audio_context_seconds=a.audio_context,
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
    from .demo import DemoOptions, run_demo

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


def cmd_models(a: argparse.Namespace) -> int:
    from .config import ModelConfig, TrainConfig
    from .models import count_parameters, create_model, list_models
    from .train import mtcn_layers_for

    L = TrainConfig().seq_len
    for name in list_models():
        cfg = ModelConfig(name=name)
        if name == "mtcn":  # as `train` builds it: depth follows the window
            cfg = cfg.replace(layers=mtcn_layers_for(L))
        print(
            f"{name:12s} {count_parameters(create_model(cfg)):>10,d} parameters (default sizes, L = {L})"
        )
    return EXIT_OK


def cmd_xdv_import(a: argparse.Namespace) -> int:
    from .xdv import XdvError, import_extracted, import_official

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


def cmd_xdv_recognition(a: argparse.Namespace) -> int:
    from .xdv import recognition_store

    r = recognition_store(a.feats, a.out, progress=not a.quiet)
    print(f"recognition store: {r.written + r.skipped} violent videos -> {a.out}")
    return EXIT_OK


def cmd_xdv_train(a: argparse.Namespace) -> int:
    from .weak import WeakConfig, train_weak

    given = {k: getattr(a, k) for k in _WEAK_FIELDS if getattr(a, k) is not None}
    cfg = WeakConfig(**given, all_crops=not a.centre_crop_only)
    r = train_weak(a.feats, a.out, cfg, progress=not a.quiet)
    return _trained(r)


def cmd_xdv_evaluate(a: argparse.Namespace) -> int:
    from .weak import evaluate_weak

    m = evaluate_weak(a.checkpoint, a.feats, plots=a.plots, progress=not a.quiet, **_evaluation(a))
    c = m["constant_baseline"]
    print(
        f"{a.split}: {m['n']} videos, {m['frames']} frames ({m['frame_positive_rate']:.3f} violent)"
    )
    print(f"  frame AP (scikit-learn)   {m['frame_ap']:.4f}   constant score {c['frame_ap']:.4f}")
    print(
        f"  frame PR-AUC (trapezoid)  {m['frame_pr_auc']:.4f}   constant score {c['frame_pr_auc']:.4f}"
    )
    print(
        f"  frame ROC-AUC             {m['frame_roc_auc']:.4f}   constant score {c['frame_roc_auc']:.4f}"
    )
    for w in m["warnings"]:
        print(w)
    print(
        f"report: {a.out / 'metrics.json'}, curves: {a.out / 'curves'}, page: {a.out / 'report.html'}"
    )
    return EXIT_OK


def cmd_stream(a: argparse.Namespace) -> int:
    import os

    os.environ.setdefault(
        "OMP_WAIT_POLICY", "PASSIVE"
    )  # before torch loads: idle threads sleep, not spin
    import threading

    from .alerts import WebhookPoster
    from .cli_stream import LiveView, StreamOutput, stop_on_sigint, summary_text
    from .runtime import configure_cpu, resolve_device
    from .stream import (
        FeatureMismatchError,
        StreamOptions,
        autocast_dtype,
        check_live_features,
        live_spec,
        open_source,
        run_stream,
        stream_extractor,
    )

    if a.runtime == "onnx" and a.precision not in ONNX_PRECISIONS:
        raise InvalidArgumentError(f"--runtime onnx runs {' or '.join(ONNX_PRECISIONS)}")
    rule = AlertRule(
        threshold=a.threshold,
        min_segments=a.min_segments,
        hysteresis=a.hysteresis,
        close_segments=a.close_segments,
    )
    device = resolve_device(a.device)
    try:  # a precision the device cannot run is a usage error
        dtype = autocast_dtype(a.precision, device) if a.runtime == "torch" else None
    except ValueError as e:
        raise InvalidArgumentError(f"--precision {a.precision}: {e}") from None
    webhook = WebhookPoster(a.webhook) if a.webhook else None
    configure_cpu(a.threads)
    model = bundle = None
    if a.runtime == "onnx":
        from .export import load_onnx, read_manifest

        read_manifest(a.checkpoint)  # one line when the folder is not an export
        bundle = load_onnx(a.checkpoint, a.precision, a.threads)
        ckpt, model = bundle.checkpoint, bundle.model
        context = (
            a.audio_context
            if a.audio_context is not None
            else bundle.extractor.spec.audio_context_seconds
        )
    else:
        ckpt = _checkpoint_with_backbones(a)
        context = a.audio_context
    live = live_spec(ckpt.spec, context)
    try:  # --strict refuses before anything loads
        check_live_features(ckpt, live, strict=a.strict)
    except FeatureMismatchError as e:
        raise FeatureMismatchError(
            f"{e} [--strict; extract --audio-features causal --audio-context "
            f"{live.audio_context_seconds:g}]"
        ) from None
    options = StreamOptions(
        realtime=a.realtime,
        rule=rule,
        input_format=a.input_format,
        options=dict(kv.split("=", 1) for kv in a.option),
        autocast_dtype=dtype,
        audio_context_seconds=live.audio_context_seconds,
    )
    stop = threading.Event()
    source = open_source(
        a.source, ckpt.spec, options, stop
    )  # a bad source fails before the encoders load
    extractor = (
        bundle.extractor if bundle is not None else stream_extractor(ckpt, a.device, a.precision)
    )
    view = LiveView(sys.stdout, rule.threshold) if sys.stdout.isatty() and not a.no_view else None
    jsonl = a.jsonl.open("w", encoding="utf-8") if a.jsonl else (None if view else sys.stdout)
    out = StreamOutput(jsonl, view, sys.stderr if jsonl is sys.stdout else sys.stdout)
    try:
        with stop_on_sigint(stop):
            result = run_stream(source, ckpt, extractor, out, options, webhook=webhook, model=model)
    finally:
        if a.jsonl:
            jsonl.close()
    print(summary_text(out.summary), file=out.text, flush=True)
    lost = webhook.stats.failed + webhook.stats.dropped if webhook else 0
    if lost:  # an alert nobody received is a partial failure
        print(
            f"webhook: {lost} of {lost + webhook.stats.delivered} event records were not delivered to "
            f"{webhook.display_url} (last error: {webhook.stats.last_error})",
            file=out.text,
            flush=True,
        )
    return EXIT_OK if result.complete and not lost else EXIT_PARTIAL


def cmd_export(a: argparse.Namespace) -> int:
    from .export import export_checkpoint

    manifest = export_checkpoint(
        a.checkpoint, a.out, int8=not a.no_int8, audio_context_seconds=a.audio_context
    )
    print(
        f"exported {a.checkpoint} -> {a.out} ({manifest.name}: video, audio and temporal ONNX models)"
    )
    return EXIT_OK


def cmd_bench(a: argparse.Namespace) -> int:
    import os

    os.environ.setdefault(
        "OMP_WAIT_POLICY", "PASSIVE"
    )  # before torch loads: idle threads sleep, not spin
    from .bench import MOBILEVIT_VARIANTS, BenchOptions, format_tables, run_bench
    from .io import atomic_write_text, write_json

    width, _, height = a.size.partition("x")
    if a.gpu_only:
        from .runtime import resolve_device

        if resolve_device(a.device).type != "cuda":
            raise InvalidArgumentError("--gpu-only needs a CUDA device")
    opts = BenchOptions(
        seconds=a.seconds,
        width=int(width),
        height=int(height),
        fps=a.fps,
        video=a.video,
        threads=a.threads,
        device=a.device,
        video_backbones=tuple(a.video_backbones or MOBILEVIT_VARIANTS),
        audio_backbone=a.audio_backbone,
        cpu=not a.gpu_only,
        runtimes=tuple(a.runtimes),
        **({"precisions": tuple(a.precisions)} if a.precisions else {}),
        **({"audio_contexts": tuple(a.audio_contexts)} if a.audio_contexts else {}),
    )
    result = run_bench(
        opts, a.out, progress=None if a.quiet else lambda m: print(f"bench: {m}", file=sys.stderr)
    )
    tables = format_tables(result)
    write_json(a.out / "bench.json", result)
    atomic_write_text(a.out / "bench.md", tables + "\n")
    print(tables)
    print(f"\nwritten: {a.out / 'bench.json'}, {a.out / 'bench.md'}")
    return EXIT_OK


XDV_COMMANDS = {
    "import": cmd_xdv_import,
    "recognition": cmd_xdv_recognition,
    "train": cmd_xdv_train,
    "evaluate": cmd_xdv_evaluate,
}


def cmd_xdv(a: argparse.Namespace) -> int:
    return XDV_COMMANDS[a.xdv_command](a)


def cmd_ablate(a: argparse.Namespace) -> int:
    from .ablate import AblationGrid, run_ablation

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


def _serve_config(a: argparse.Namespace):
    """The server's validated config, or None after printing one line per mistake."""
    from .serve.config import ConfigError, load_config

    try:
        return load_config(a.config)
    except ConfigError as e:
        for line in e.lines:
            print(f"avarnet {a.command}: {line}", file=sys.stderr)
        return None


def cmd_serve(a: argparse.Namespace) -> int:
    from .serve.app import run_server

    config = _serve_config(a)
    return EXIT_USAGE if config is None else run_server(config)


def cmd_export_reviewed(a: argparse.Namespace) -> int:
    from .serve.app import export_reviewed

    config = _serve_config(a)
    if config is None:
        return EXIT_USAGE
    if not config.storage.db.is_file():
        print(f"avarnet export-reviewed: no event database at {config.storage.db}", file=sys.stderr)
        return EXIT_USAGE
    r = export_reviewed(config, a.out)
    total = sum(r["classes"].values())
    per = ", ".join(f"{c}: {n}" for c, n in sorted(r["classes"].items())) or "none"
    print(
        f"exported {total} reviewed clip(s) to {a.out} ({per}); {r['skipped']} without a clip on disk"
    )
    return EXIT_OK


COMMANDS = {
    "stream": cmd_stream,
    "bench": cmd_bench,
    "export": cmd_export,
    "serve": cmd_serve,
    "export-reviewed": cmd_export_reviewed,
    "synth": cmd_synth,
    "extract": cmd_extract,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "demo": cmd_demo,
    "models": cmd_models,
    "ablate": cmd_ablate,
    "xdv": cmd_xdv,
}


def _remedy_options(e: BaseException) -> str:
    """The options for an error's remedies (library settings), e.g. `` [--weights random]``."""
    flags = []
    for remedy in getattr(e, "remedies", ()):
        name, _, value = remedy.partition("=")
        flag = "--" + name.replace("_", "-")
        flags.append(f"{flag} {value}" if value else flag)
    return f" [{' | '.join(flags)}]" if flags else ""


def _error_line(e: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for an error the user can act on; None for a defect of avarnet."""
    from .errors import AvarnetError, environment_error_line

    if isinstance(e, AvarnetError):
        return str(e) + _remedy_options(e), EXIT_USAGE
    if isinstance(e, OSError):
        line = environment_error_line(e)
        return (line, EXIT_USAGE) if line else None
    if isinstance(e, MemoryError):
        return "out of memory", EXIT_BUG
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 success, 1 partial failure, 2 usage or input error, 3 a defect."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an option refused at parse time (argparse printed why)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("avarnet").setLevel(logging.INFO)
    debug = args.debug or os.environ.get("AVARNET_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(
            "interrupted: finished work is kept; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except Exception as e:
        known = _error_line(e)
        if known is not None and not debug:
            print(f"avarnet {args.command}: error: {known[0]}", file=sys.stderr)
            return known[1]
        if debug:
            raise
        where = e.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        frame = (
            f" at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else ""
        )
        message = " ".join(str(e).split())[:200]
        print(
            f"avarnet {args.command}: internal error{frame}: {type(e).__name__}: {message} "
            f"(a defect in avarnet; run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
