"""`stream`: live predictions from a video file, URL or capture device, with alerts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..alerts import AlertRule
from ..config import DEFAULT_AUDIO_CONTEXT_S, DEVICES, ONNX_PRECISIONS, PRECISIONS, RUNTIMES
from ..errors import InvalidArgumentError
from .common import (
    DEVICE,
    EXIT_OK,
    EXIT_PARTIAL,
    NON_NEGATIVE_FLOAT,
    POSITIVE_INT,
    PROBABILITY,
    SPEC,
    THREADS,
    add_backbone_overrides,
    checkpoint_with_backbones,
    seconds,
)

RULE = AlertRule()


def _key_value(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def add_stream(sub: argparse._SubParsersAction) -> None:
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
        type=seconds,
        metavar="S",
        help="audio look-back in seconds (default: the checkpoint's when trained on causal features, "
        f"else {DEFAULT_AUDIO_CONTEXT_S:g})",
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
    add_backbone_overrides(p)
    p.add_argument("--device", choices=DEVICES, default=DEVICE)


def cmd_stream(a: argparse.Namespace) -> int:
    import os

    os.environ.setdefault(
        "OMP_WAIT_POLICY", "PASSIVE"
    )  # before torch loads: idle threads sleep, not spin
    import threading

    from ..alerts import WebhookPoster
    from ..runtime import configure_cpu, resolve_device
    from ..stream import (
        FeatureMismatchError,
        StreamOptions,
        autocast_dtype,
        check_live_features,
        live_spec,
        open_source,
        run_stream,
        stream_extractor,
    )
    from .stream_view import LiveView, StreamOutput, stop_on_sigint, summary_text

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
        from ..export import load_onnx, read_manifest

        read_manifest(a.checkpoint)  # one line when the folder is not an export
        bundle = load_onnx(a.checkpoint, a.precision, a.threads)
        ckpt, model = bundle.checkpoint, bundle.model
        context = (
            a.audio_context
            if a.audio_context is not None
            else bundle.extractor.spec.audio_context_seconds
        )
    else:
        ckpt = checkpoint_with_backbones(a)
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
    run = {"runtime": a.runtime, "precision": a.precision}  # recorded in the summary
    out = StreamOutput(jsonl, view, sys.stderr if jsonl is sys.stdout else sys.stdout, run)
    try:
        with stop_on_sigint(stop):
            result = run_stream(source, ckpt, extractor, out, options, webhook=webhook, model=model)
    finally:
        if a.jsonl:
            jsonl.close()
    print(summary_text(out.summary), file=out.text, flush=True)
    if out.summary.get("gated") is not None:
        print(
            f"  gated {out.summary['gated']} of {out.summary['segments']} segments "
            "(still and silent: features held)",
            file=out.text,
            flush=True,
        )
    lost = webhook.stats.failed + webhook.stats.dropped if webhook else 0
    if lost:  # an alert nobody received is a partial failure
        print(
            f"webhook: {lost} of {lost + webhook.stats.delivered} event records were not delivered to "
            f"{webhook.display_url} (last error: {webhook.stats.last_error})",
            file=out.text,
            flush=True,
        )
    return EXIT_OK if result.complete and not lost else EXIT_PARTIAL


PARSERS = {
    "stream": add_stream,
}

COMMANDS = {
    "stream": cmd_stream,
}
