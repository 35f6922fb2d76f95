"""`synth` and `extract`: datasets and the feature stores made from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import (
    AUDIO_MODES,
    DEFAULT_AUDIO_BACKBONE,
    DEFAULT_AUDIO_CONTEXT_S,
    DEFAULT_VIDEO_BACKBONE,
    DEVICES,
    EXTRACT_ENGINES,
    ONNX_PRECISIONS,
    PRECISIONS,
    RUNTIMES,
    WEIGHTS,
)
from ..errors import InvalidArgumentError
from .common import (
    DEVICE,
    EXIT_OK,
    EXIT_PARTIAL,
    FRAMES_PER_SEGMENT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    SEGMENT_SECONDS,
    SPEC,
    WORKERS,
    log,
    seconds,
)


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        default=SPEC.weights,
        help="pretrained backbones (hub id or local folder) or the same architectures with random weights (offline)",
    )
    p.add_argument(
        "--video-backbone",
        default=DEFAULT_VIDEO_BACKBONE,
        help="MobileViT (default) or any transformers image model: hub id or local folder; "
        "or onnx:PATH, an ONNX frame or clip encoder with its JSON manifest beside it",
    )
    p.add_argument(
        "--audio-backbone",
        default=DEFAULT_AUDIO_BACKBONE,
        help="Wav2Vec2 (default), another transformers waveform model (HuBERT, WavLM, "
        "data2vec-audio) or a spectrogram model (AST, Whisper's encoder, CLAP) with its feature "
        "extractor: hub id or local folder; or onnx:PATH, an ONNX waveform or log-mel "
        "patch encoder with its JSON manifest beside it",
    )
    p.add_argument("--device", choices=DEVICES, default=DEVICE)


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic audio-visual dataset OUT/<class>/*.mp4")
    p.add_argument("out", type=Path)
    p.add_argument("--clips-per-class", type=POSITIVE_INT, default=20)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--min-seconds", type=POSITIVE_FLOAT, default=8.0)
    p.add_argument("--max-seconds", type=POSITIVE_FLOAT, default=12.0)


def add_extract(sub: argparse._SubParsersAction) -> None:
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
        type=seconds,
        default=None,
        metavar="S",
        help=f"causal audio look-back in seconds (0 allowed; default {DEFAULT_AUDIO_CONTEXT_S:g})",
    )
    p.add_argument(
        "--gate",
        metavar="motion=F,sound=DB[,refresh=N]",
        help="motion-and-sound gate (causal audio only; off when not given): segments whose "
        "thumbnail moved less than F of full scale and whose level is under DB dBFS skip the "
        "encoders and repeat the last encoded features, at most N (10) in a row (docs/live.md)",
    )
    p.add_argument("--seed", type=SEED, default=SPEC.seed, help="split seed and random-weight seed")
    p.add_argument(
        "--workers",
        type=WORKERS,
        help="decoding processes (default: one per core; 0: one video at a time in-process)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=SPEC.precision,
        help="encoder arithmetic, as for stream (bf16: GPUs and CPUs with bf16 instructions; "
        "fp16: GPUs; int8: CPU, Wav2Vec2 quantised; onnx: fp32 or int8); recorded in the store",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=RUNTIMES[0],
        help="onnx: the encoders of a folder written by `avarnet export` or `avarnet quantize` "
        "(give it as --export), which also define the features; the store then holds what "
        "`stream --runtime onnx` computes, and `evaluate` on it measures that path",
    )
    p.add_argument("--export", type=Path, metavar="DIR", help="with --runtime onnx: the export")
    p.add_argument(
        "--engine",
        choices=EXTRACT_ENGINES,
        default=EXTRACT_ENGINES[0],
        help="ray: a Ray Data pipeline (pip install avarnet[ray])",
    )
    p.add_argument(
        "--address", help="Ray cluster to join (auto, ray://HOST:10001); default: start a local one"
    )


def cmd_synth(a: argparse.Namespace) -> int:
    from ..synth import synthesize_dataset

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


def _gate(a: argparse.Namespace) -> dict:
    """The spec's gate from --gate ({} without it); one line for a bad value."""
    from ..gate import Gate

    if a.gate is None:
        return {}
    try:
        gate = Gate.parse(a.gate)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"--gate {a.gate}: {str(e).removeprefix('gate: ')}") from None
    if gate is not None and a.audio_features != "causal":
        raise InvalidArgumentError(
            "--gate needs --audio-features causal (the gate decides per segment, as a stream does)"
        )
    return {} if gate is None else gate.to_dict()


# extract's options that define the features, and their defaults: an export brings its own
DEFINING = {
    "weights": SPEC.weights,
    "video_backbone": DEFAULT_VIDEO_BACKBONE,
    "audio_backbone": DEFAULT_AUDIO_BACKBONE,
    "segment_seconds": SPEC.segment_seconds,
    "frames_per_segment": SPEC.frames_per_segment,
    "audio_features": SPEC.audio_mode,
    "audio_context": None,
    "gate": None,
}


def _export_encoders(a: argparse.Namespace):
    """``--runtime onnx``: the export's encoders at ``--precision``; None for torch. One line for
    what does not fit."""
    if a.runtime != "onnx":
        if a.export is not None:
            raise InvalidArgumentError("--export goes with --runtime onnx")
        return None
    if a.export is None:
        raise InvalidArgumentError(
            "--runtime onnx extracts with an export's encoders: give --export"
        )
    if a.precision not in ONNX_PRECISIONS:
        raise InvalidArgumentError(f"--runtime onnx runs {' or '.join(ONNX_PRECISIONS)}")
    if a.engine == "ray":
        raise InvalidArgumentError("--engine ray runs torch encoders; use the local engine")
    given = [n for n, default in DEFINING.items() if getattr(a, n) != default]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise InvalidArgumentError(f"{flags}: with --runtime onnx the export defines the features")
    from ..export import load_onnx

    return load_onnx(a.export, a.precision).extractor


def cmd_extract(a: argparse.Namespace) -> int:
    from ..extract import extract_dataset

    encoders = _export_encoders(a)
    gate = _gate(a)
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
        from ..apps.extract_ray import extract_dataset_ray

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
            gate=gate,
            runtime=a.runtime,
            encoders=encoders,
            **common,
            **({} if a.audio_context is None else {"audio_context_seconds": a.audio_context}),
        )
    # each failure had its line as it happened; failures.jsonl in the store keeps them all
    print(f"extracted {r.done}, already done {r.skipped}, failed {len(r.failures)} -> {a.out}")
    if gate:
        share = r.gated / r.segments if r.segments else 0.0
        print(f"gated {r.gated} of {r.segments} segments ({share:.1%}): still and silent, held")
    return EXIT_PARTIAL if r.failures else EXIT_OK


PARSERS = {
    "synth": add_synth,
    "extract": add_extract,
}

COMMANDS = {
    "synth": cmd_synth,
    "extract": cmd_extract,
}
