"""Does `stream --realtime` keep up on this machine? Latency and lag over a long generated clip.

Writes a surveillance-like clip (default 5 minutes, 640x360 at 25 fps, 48 kHz audio), builds an
untrained checkpoint over the default-size backbones (random weights, offline; timing does not
depend on the weights) unless ``--checkpoint`` is given, streams the clip at its own speed and
prints per-segment latency (from the moment a segment's last sample was decoded to its
prediction), compute time, lag behind the source at the start and the end, dropped segments and
the CPU time used per media second (what is left for the machine's other work).

    python benchmarks/bench_stream.py --out /tmp/bench_stream --minutes 5 [--precision int8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from avarnet.apps.bench import bench_checkpoint, write_scene_clip
from avarnet.checkpoint import load_checkpoint
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import Extractor, build_spec
from avarnet.runtime import configure_cpu
from avarnet.stream import (
    SegmentSource,
    StreamOptions,
    autocast_dtype,
    quantize_audio_encoder,
    run_stream,
    stream_extractor,
)

LAG_WINDOW_S = 60.0  # lag is compared between the first and the last minute


def default_model(clip: Path, seed: int = 0):
    """Random default-size encoders (MobileViT BatchNorm calibrated on the clip) and an untrained model."""
    v = VideoEncoder.load(weights="random", seed=seed, device="cpu")
    a = AudioEncoder.load(weights="random", seed=seed, device="cpu")
    segments = []
    for seg in SegmentSource(clip, build_spec(v, a, "random", seed, 1.0, 1)):
        segments.append(seg.frames)
        if len(segments) == 16:
            break
    v.calibrate(np.concatenate(segments))
    extractor = Extractor(
        build_spec(v, a, "random", seed, 1.0, 1).replace(random_init=v.describe()), v, a
    )
    return bench_checkpoint(extractor), extractor


def summarise(records: list[dict], cpu_s: float) -> dict:
    segs = [r for r in records if r["type"] == "segment"]
    summary = records[-1]
    out = {
        k: summary[k]
        for k in (
            "segments",
            "dropped",
            "media_seconds",
            "wall_seconds",
            "realtime_factor",
            "latency_ms",
            "compute_ms",
            "queue_high_water",
            "end_reason",
        )
    }
    out["cpu_seconds_per_media_second"] = round(cpu_s / summary["media_seconds"], 3)
    if segs and segs[0]["lag_s"] is not None:
        lag = np.array([r["lag_s"] for r in segs])
        ends = np.array([r["end"] for r in segs])
        out["lag_first_minute_mean_s"] = round(float(lag[ends <= LAG_WINDOW_S].mean()), 3)
        out["lag_last_minute_mean_s"] = round(float(lag[ends >= ends[-1] - LAG_WINDOW_S].mean()), 3)
        out["lag_max_s"] = round(float(lag.max()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_stream"))
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument(
        "--checkpoint",
        type=Path,
        help="a trained checkpoint (default: untrained, default-size backbones)",
    )
    ap.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--no-realtime",
        action="store_true",
        help="as fast as possible instead of the clip's own speed",
    )
    a = ap.parse_args()
    configure_cpu(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    width, height = (int(x) for x in a.size.split("x"))
    clip = a.out / f"scene_{a.minutes:g}min_{width}x{height}_{a.fps:g}fps.mp4"
    if not clip.exists():
        write_scene_clip(clip, a.minutes * 60, (width, height), a.fps)
    if a.checkpoint:
        ckpt = load_checkpoint(a.checkpoint)
        extractor = stream_extractor(ckpt, "cpu", a.precision)
    else:
        ckpt, extractor = default_model(clip)
        if a.precision == "int8":
            quantize_audio_encoder(extractor.audio)
    records: list[dict] = []
    load_before = os.getloadavg()
    cpu0 = time.process_time()
    options = StreamOptions(
        realtime=not a.no_realtime, autocast_dtype=autocast_dtype(a.precision, torch.device("cpu"))
    )
    run_stream(clip, ckpt, extractor, records.append, options)
    result = summarise(records, time.process_time() - cpu0) | {
        "realtime": not a.no_realtime,
        "precision": a.precision,
        "threads": a.threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "clip": str(clip),
    }
    tag = f"{'rt' if result['realtime'] else 'fast'}_{a.precision}_t{a.threads}"
    (a.out / f"stream_{tag}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (a.out / f"summary_{tag}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
