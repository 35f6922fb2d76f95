"""Extraction throughput and peak memory for long videos: memory must not grow with length.

Writes surveillance-like clips of each length (frames streamed from a generator, so the writer
holds no more than one frame), then extracts each one in a fresh subprocess with the default-size
backbones (random weights, offline) and prints, per length, segments/s, frames/s, audio seconds/s
and the process's peak resident memory (``ru_maxrss``) side by side.

    python benchmarks/bench_extract.py --out /tmp/bench_extract --minutes 2 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZE = (320, 240)
FPS = 12.0
CALIBRATION_FRAMES = 16


def child(video: Path, threads: int) -> dict:
    """Extract ``video`` in this process; returns throughput and peak memory."""
    import numpy as np

    from avarnet import media
    from avarnet.encoders import AudioEncoder, VideoEncoder
    from avarnet.extract import Extractor, build_spec
    from avarnet.runtime import configure_cpu

    configure_cpu(threads)
    v = VideoEncoder.load(weights="random", device="cpu")
    a = AudioEncoder.load(weights="random", device="cpu")
    info = media.probe(video)
    times = np.linspace(0, info.duration, CALIBRATION_FRAMES, endpoint=False) + 0.5
    v.calibrate(
        np.stack(list(media.read_frames(video, times.tolist(), v.resize_shortest_edge, info=info)))
    )
    extractor = Extractor(build_spec(v, a, "random", 0, 1.0, 1), v, a)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    tensors, info = extractor(video)
    wall = time.perf_counter() - t0
    T = len(tensors["video"])
    return {
        "video": str(video),
        "minutes": info.duration / 60,
        "segments": T,
        "wall_s": wall,
        "segments_per_s": T / wall,
        "frames_per_s": T * extractor.spec.frames_per_segment / wall,
        "audio_seconds_per_s": info.duration / wall if info.has_audio else 0.0,
        "realtime_factor": info.duration / wall,
        "rss_after_load_mib": rss_loaded,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": threads,
    }


def make_clip(out: Path, minutes: float) -> Path:
    from avarnet.apps.bench import write_scene_clip

    path = out / f"scene_{minutes:g}min_{SIZE[0]}x{SIZE[1]}_{FPS:g}fps.mp4"
    if not path.exists():
        t0 = time.perf_counter()
        write_scene_clip(path, minutes * 60, SIZE, FPS)
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return path


def table(rows: list[dict]) -> str:
    head = "| | " + " | ".join(f"{r['minutes']:.0f} min" for r in rows) + " |"
    sep = "|---|" + "---|" * len(rows)
    fields = [
        ("segments", "segments", "{:.0f}"),
        ("wall time (s)", "wall_s", "{:.1f}"),
        ("segments/s", "segments_per_s", "{:.2f}"),
        ("frames/s (MobileViT)", "frames_per_s", "{:.2f}"),
        ("audio s/s (Wav2Vec2)", "audio_seconds_per_s", "{:.2f}"),
        ("peak RSS after loading models (MiB)", "rss_after_load_mib", "{:.0f}"),
        ("peak RSS after extraction (MiB)", "peak_rss_mib", "{:.0f}"),
    ]
    lines = [head, sep]
    for name, key, fmt in fields:
        lines.append(f"| {name} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_extract"))
    ap.add_argument("--minutes", type=float, nargs="+", default=[2.0, 10.0])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.threads)))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for minutes in a.minutes:
        clip = make_clip(a.out, minutes)
        cmd = [sys.executable, __file__, "--child", str(clip), "--threads", str(a.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{minutes:g} min: {r['segments_per_s']:.2f} segments/s, peak RSS {r['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    (a.out / "bench_extract.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
