"""`export`, `quantize` and `bench`: ONNX models for deployment and what each stage costs here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import (
    DEFAULT_AUDIO_BACKBONE,
    DEFAULT_AUDIO_CONTEXT_S,
    DEVICES,
    INT8_MIN_COSINE,
    INT8_MIN_SAVING,
    PRECISIONS,
    RUNTIMES,
)
from ..errors import InvalidArgumentError
from .common import (
    DEVICE,
    EXIT_OK,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    PROBABILITY,
    THREADS,
    seconds,
)

BENCH_PRECISIONS = tuple(p for p in PRECISIONS if p != "fp16")  # CPU rows; a GPU adds fp16


def _frame_size(text: str) -> str:
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return text


def add_export(sub: argparse._SubParsersAction) -> None:
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
        type=seconds,
        metavar="S",
        help="look-back of the exported live features (default: the checkpoint's, else "
        f"{DEFAULT_AUDIO_CONTEXT_S:g})",
    )


def add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="ONNX export with static int8 encoders calibrated on a feature store's videos, "
        "judged by the decisions they keep",
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("feats", type=Path, help="feature store: train split calibrates, val searches")
    p.add_argument("--out", type=Path, help="export folder (default: CHECKPOINT's folder/int8)")
    p.add_argument("--data", type=Path, help="dataset folder (default: the store's own)")
    p.add_argument("--calibration-segments", type=POSITIVE_INT, default=64)
    p.add_argument("--search-segments", type=POSITIVE_INT, default=256)
    p.add_argument(
        "--target-agreement",
        type=PROBABILITY,
        default=0.99,
        help="per-segment label agreement with fp32 on the search's held-out segments that the "
        "layers kept in fp32 must reach",
    )
    p.add_argument(
        "--min-cosine",
        type=PROBABILITY,
        default=INT8_MIN_COSINE,
        metavar="C",
        help="the layers kept in fp32 must also keep every search segment's int8 features at "
        "this cosine similarity to fp32's or above (0: judge by labels only)",
    )
    p.add_argument(
        "--min-saving",
        type=PROBABILITY,
        default=INT8_MIN_SAVING,
        metavar="F",
        help="an encoder whose int8 does not save this share of the two fp32 encoders' time per "
        "segment (timed on the calibration inputs) stays fp32 whole (0: quantise every encoder)",
    )
    p.add_argument("--audio-context", type=seconds, metavar="S", help="live look-back (s)")
    p.add_argument("--threads", type=THREADS, default=0)


def add_bench(sub: argparse._SubParsersAction) -> None:
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
        type=seconds,
        metavar="S",
        help=f"causal audio look-backs of the end-to-end rows (default {DEFAULT_AUDIO_CONTEXT_S:g})",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=DEVICE,
        help="GPU rows are added on cuda",
    )
    p.add_argument("--gpu-only", action="store_true", help="with a GPU: skip the CPU rows")


def cmd_export(a: argparse.Namespace) -> int:
    from ..export import export_checkpoint

    manifest = export_checkpoint(
        a.checkpoint, a.out, int8=not a.no_int8, audio_context_seconds=a.audio_context
    )
    print(
        f"exported {a.checkpoint} -> {a.out} ({manifest.name}: video, audio and temporal ONNX models)"
    )
    return EXIT_OK


def cmd_quantize(a: argparse.Namespace) -> int:
    from ..apps.quantize import QuantizeOptions, quantize_checkpoint, summary_lines

    out = a.out if a.out is not None else a.checkpoint.parent / "int8"
    options = QuantizeOptions(
        calibration_segments=a.calibration_segments,
        search_segments=a.search_segments,
        target_agreement=a.target_agreement,
        min_saving=a.min_saving,
        min_cosine=a.min_cosine,
        data_root=a.data,
        audio_context_seconds=a.audio_context,
        threads=a.threads,
    )
    say = None if a.quiet else (lambda msg: print(f"quantize: {msg}", file=sys.stderr))
    report = quantize_checkpoint(a.checkpoint, a.feats, out, options, say)
    print("\n".join(summary_lines(report)))
    print(f"-> {out} (stream --runtime onnx --precision int8 --checkpoint {out}); report: "
          f"{out / 'quantization.json'}")  # fmt: skip
    return EXIT_OK


def cmd_bench(a: argparse.Namespace) -> int:
    import os

    os.environ.setdefault(
        "OMP_WAIT_POLICY", "PASSIVE"
    )  # before torch loads: idle threads sleep, not spin
    from ..apps.bench import MOBILEVIT_VARIANTS, BenchOptions, format_tables, run_bench
    from ..io import atomic_write_text, write_json

    width, _, height = a.size.partition("x")
    if a.gpu_only:
        from ..runtime import resolve_device

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


PARSERS = {
    "export": add_export,
    "quantize": add_quantize,
    "bench": add_bench,
}

COMMANDS = {
    "export": cmd_export,
    "quantize": cmd_quantize,
    "bench": cmd_bench,
}
