"""How many cameras does `avarnet serve` keep in real time, per runtime and precision?

Builds an untrained checkpoint over default-size backbones (random weights, offline; timing does
not depend on the weights) unless ``--checkpoint`` is given, exports it to ONNX for the ``onnx``
rows, writes a surveillance-like clip, then for every runtime x precision asked:

* **search** (the default): runs ``avarnet serve`` with N file-backed cameras, each the clip looped
  with ``realtime: true`` (read at its own speed, as a camera sends it), pinned to ``--cores``
  cores, with a real mosquitto and a subscriber, for ``--minutes`` after a warm-up; N starts at
  ``--start`` (a count that is not kept there: N shrinks by one until one is) and grows by one
  until a run drops a segment (or falls more than ``--max-lag``
  seconds behind at its end: a server that cannot keep up drops once its queue is full). A point
  ends at its first dropped segment, which decides it (``--full-runs``: run it out). The
  answer is the largest N kept with 0 dropped segments;
* ``--cameras N ...``: those counts only (each measured the same way).

A single ``avarnet stream CLIP --realtime`` (torch fp32) is the baseline unless ``--no-baseline``.

    python benchmarks/bench_serve.py --out /tmp/bench_serve --cores 2            # 10 min a point
    python benchmarks/bench_serve.py --runtimes onnx --precisions fp32 --start 6 --minutes 2

Prints a Markdown table and writes ``bench_serve.json`` with the machine (CPU model, flags,
cores), the load average before, during and after, and the CPU seconds the rest of the machine
used during each run. CPU seconds are the processes' own (user + system), so they mean the same
on a loaded machine; lag and drops do not (say the load).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
import yaml

from avarnet.apps.bench import bench_checkpoint, write_scene_clip
from avarnet.checkpoint import save_checkpoint
from avarnet.config import (
    DEFAULT_AUDIO_BACKBONE,
    DEFAULT_AUDIO_CONTEXT_S,
    DEFAULT_VIDEO_BACKBONE,
    ONNX_PRECISIONS,
    PRECISIONS,
    RUNTIMES,
)
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import Extractor, build_spec
from avarnet.runtime import supported_precisions
from avarnet.stream import SegmentSource

TOKEN = "bench-token"
TICK = os.sysconf("SC_CLK_TCK")
WARMUP_S = 20.0


def build_checkpoint(
    clip: Path, out: Path, video_backbone: str, audio_backbone: str, look_back: float
) -> Path:
    v = VideoEncoder.load(video_backbone, weights="random", seed=0, device="cpu")
    a = AudioEncoder.load(audio_backbone, weights="random", seed=0, device="cpu")
    frames = []
    for seg in SegmentSource(clip, build_spec(v, a, "random", 0, 1.0, 1)):
        frames.append(seg.frames)
        if len(frames) == 16:
            break
    v.calibrate(np.concatenate(frames))
    ext = Extractor(build_spec(v, a, "random", 0, 1.0, 1).replace(random_init=v.describe()), v, a)
    ckpt = bench_checkpoint(ext, audio_context_seconds=look_back)
    ckpt.encoder_state = v.bn_state()
    save_checkpoint(out, ckpt)
    return out


def proc_sample(pid: int) -> dict:
    """CPU seconds (user + system, threads included) and resident memory (MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return {
        "t": time.monotonic(),
        "cpu_s": cpu,
        "rss_mib": round(rss, 1),
        "peak_rss_mib": round(peak, 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, path: str):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _up(port: int) -> bool:
    try:
        api(port, "/api/stats")
        return True
    except OSError:
        return False


def wait_until(ready, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    """Wait for a started process to be working (models loaded, first segment out)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the process did not start working (exit {proc.poll()})")
        time.sleep(1.0)


def run_stream_baseline(clip: Path, ckpt: Path, minutes: float, out: Path, threads: int) -> dict:
    jsonl = out / "stream.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "avarnet",
        "stream",
        str(clip),
        "--checkpoint",
        str(ckpt),
        "--realtime",
        "--jsonl",
        str(jsonl),
        "--no-view",
        "--device",
        "cpu",
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(out / "stream.log").open("w"))
    wait_until(lambda: jsonl.exists() and jsonl.read_text().count("segment") > 0, proc)
    time.sleep(WARMUP_S)
    first = proc_sample(proc.pid)
    n0 = n1 = jsonl.read_text().count('"type": "segment"')
    deadline = time.monotonic() + minutes * 60
    last = first
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(2)
        last = proc_sample(proc.pid)
        n1 = jsonl.read_text().count('"type": "segment"')
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    segs = [json.loads(line) for line in jsonl.read_text().splitlines() if '"segment"' in line[:20]]
    segs = [s for s in segs if s["type"] == "segment"]
    window = segs[len(segs) // 4 :]
    media = max(1e-9, (last["t"] - first["t"]))
    lag = [s["lag_s"] for s in window if s["lag_s"] is not None]
    return {
        "cameras": 1,
        "process": "stream",
        "seconds": round(media, 1),
        "cpu_per_camera": round((last["cpu_s"] - first["cpu_s"]) / media, 3),
        "cpu_per_segment": round((last["cpu_s"] - first["cpu_s"]) / max(1, n1 - n0), 3),
        "segments_per_s": round((n1 - n0) / media, 2),
        "rss_start_mib": first["rss_mib"],
        "rss_end_mib": last["rss_mib"],
        "peak_rss_mib": last["peak_rss_mib"],
        "segments": len(segs),
        "dropped": json.loads(jsonl.read_text().splitlines()[-1]).get("dropped"),
        "lag_mean_s": round(float(np.mean(lag)), 2) if lag else None,
        "lag_max_s": round(float(np.max(lag)), 2) if lag else None,
    }


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    values = [int(x) for x in first[1:9]]  # user .. steal (guest time is already in user)
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values) - idle) / TICK, sum(values) / TICK


def machine() -> dict:
    """The CPU model, the flags that decide what runs fast, and the cores."""
    model, flags = None, set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model is None:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return {
        "cpu": model,
        "nproc": os.cpu_count(),
        "flags": [f for f in wanted if f in flags],
    }


def run_serve(
    clip: Path,
    model: Path,
    n: int,
    minutes: float,
    out: Path,
    *,
    runtime: str = "torch",
    precision: str = "fp32",
    threads: int = 0,
    batch: int = 16,
    cores: list[int] | None = None,
    stop_on_drop: bool = False,
) -> dict:
    """One serve run of ``n`` cameras; the row of the table. With ``stop_on_drop`` the run ends
    at the first segment dropped after the warm-up (the point is then not kept, whatever
    follows)."""
    folder = out / f"serve_{runtime}_{precision}_{n}"
    folder.mkdir(parents=True, exist_ok=True)
    mq_port, web_port = free_port(), free_port()
    conf = folder / "mosquitto.conf"
    import getpass

    conf.write_text(
        f"listener {mq_port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
    )
    broker = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import paho.mqtt.client as mqtt

    counts = {"new": 0, "update": 0, "end": 0, "anomaly": 0}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            if msg.topic.endswith("/events"):
                counts[json.loads(msg.payload)["type"]] += 1
            elif msg.topic.endswith("/anomaly"):
                counts["anomaly"] += 1

    time.sleep(0.5)
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{n}")
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("avarnet/#", qos=1)
    sub.on_message = on_message
    sub.connect("127.0.0.1", mq_port)
    sub.loop_start()
    cameras = {
        f"cam{i}": {
            "source": str(clip),
            "loop": True,
            "realtime": True,
            "alerts": {"threshold": 0.0, "min_segments": 3},
        }
        for i in range(n)
    }
    cfg = {
        "checkpoint": str(model),
        "runtime": runtime,
        "precision": precision,
        "device": "cpu",
        "cameras": cameras,
        "batch_segments": batch,
        "storage": {"path": str(folder / "store")},
        "web": {"port": web_port, "token": TOKEN},
        "mqtt": {"host": "127.0.0.1", "port": mq_port, "client_id": f"avarnet-bench-{n}"},
    }
    if threads:
        cfg["threads"] = threads
    (folder / "serve.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(
        [sys.executable, "-m", "avarnet", "serve", str(folder / "serve.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "serve.log").open("w"),
        env=env,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )
    try:
        wait_until(
            lambda: (
                _up(web_port)
                and all(c["segments"] > 0 for c in api(web_port, "/api/stats")["cameras"])
            ),
            proc,
        )
        time.sleep(WARMUP_S)
        first, stats0 = proc_sample(proc.pid), api(web_port, "/api/stats")
        dropped0 = sum(c["dropped"] for c in stats0["cameras"])
        stopped_early = False
        busy0, total0 = cpu_times()
        deadline = time.monotonic() + minutes * 60
        last = first
        lags: list[float] = []
        loads: list[float] = []
        series = [first]  # one sample a minute: a plateau and a leak look alike at the ends only
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(5)
            last = proc_sample(proc.pid)
            loads.append(os.getloadavg()[0])
            if last["t"] - series[-1]["t"] >= 60:
                series.append(last)
            now = api(web_port, "/api/stats")["cameras"]
            lags += [c["lag_s"] for c in now if c["lag_s"] is not None]
            if stop_on_drop and sum(c["dropped"] for c in now) > dropped0:
                stopped_early = True  # a dropped segment decides the point: it is not kept
                break
        stats1 = api(web_port, "/api/stats")
        busy1, total1 = cpu_times()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        time.sleep(1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.disconnect()
        sub.loop_stop()
        broker.terminate()
        broker.wait(timeout=10)
    db = sqlite3.connect(folder / "store" / "events.db")
    events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    wall = last["t"] - first["t"]
    segs = sum(c["segments"] for c in stats1["cameras"]) - sum(
        c["segments"] for c in stats0["cameras"]
    )
    own = last["cpu_s"] - first["cpu_s"]
    final_lags = [c["lag_s"] for c in stats1["cameras"] if c["lag_s"] is not None]
    dropped = sum(c["dropped"] for c in stats1["cameras"])
    return {
        "cameras": n,
        "process": "serve",
        "runtime": runtime,
        "precision": precision,
        "seconds": round(wall, 1),
        "stopped_at_first_drop": stopped_early,
        "exit_code": code,
        "cpu_per_camera": round(own / wall / n, 3),
        "rss_start_mib": first["rss_mib"],
        "rss_end_mib": last["rss_mib"],
        "rss_half_mib": series[len(series) // 2]["rss_mib"],
        "rss_by_minute": [x["rss_mib"] for x in series + [last]],
        "peak_rss_mib": last["peak_rss_mib"],
        "cpu_per_segment": round(own / max(1, segs), 3),
        "segments_per_s": round(segs / wall, 2),
        "dropped": dropped - sum(c["dropped"] for c in stats0["cameras"]),
        "dropped_warmup": sum(c["dropped"] for c in stats0["cameras"]),
        "lag_mean_s": round(float(np.mean(lags)), 2) if lags else None,
        "lag_max_s": round(float(np.max(lags)), 2) if lags else None,
        "lag_end_s": round(max(final_lags), 2) if final_lags else None,
        "load_mean": round(float(np.mean(loads)), 2) if loads else None,
        # CPU seconds per second the rest of the machine used meanwhile (0: this run alone)
        "others_cores": round(max(0.0, (busy1 - busy0) - own) / wall, 2),
        "machine_busy": round((busy1 - busy0) / max(1e-9, total1 - total0), 3),  # of all cores
        "mean_batch": stats1["engines"][0]["mean_batch"],
        "events_db": events,
        "msgs_new": counts["new"],
        "msgs_end": counts["end"],
        "anomaly_msgs": counts["anomaly"],
    }


KEEP_PACE = 0.9  # segments processed per second / cameras, at least (a looped file's restarts
# cost a little media time, so a server that keeps up measures a bit under 1)


def kept(row: dict, max_lag: float) -> bool:
    """The run kept every camera in real time: nothing dropped, keeping pace, and not more than
    ``max_lag`` seconds behind at its end (a short run ends before a slow server's queue
    overflows; these say it would)."""
    lag_ok = row["lag_end_s"] is None or row["lag_end_s"] <= max_lag
    pace_ok = row["segments_per_s"] >= KEEP_PACE * row["cameras"]
    return row["dropped"] == 0 and lag_ok and pace_ok


def search(run, start: int, most: int, max_lag: float, rows: list[dict], say) -> int:
    """The largest kept count (0: none): from ``start``, add cameras until a run is not kept, or,
    when ``start`` itself is not kept, take cameras away until one is."""

    def point(n: int) -> bool:
        row = run(n)
        row["kept"] = kept(row, max_lag)
        rows.append(row)
        say(row)
        return row["kept"]

    if not point(start):
        return next((n for n in range(start - 1, 0, -1) if point(n)), 0)
    best = start
    for n in range(start + 1, most + 1):
        if not point(n):
            break
        best = n
    return best


def table(rows: list[dict]) -> str:
    head = (
        "| process | runtime | precision | cameras | s | segments/s (need) | CPU s per segment"
        " | RSS start / end MiB | dropped | lag mean / max / end s | others' cores busy"
        " | load | kept |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lag = f"{r['lag_mean_s']} / {r['lag_max_s']} / {r.get('lag_end_s', '-')}"
        lines.append(
            f"| {r['process']} | {r.get('runtime', 'torch')} | {r.get('precision', 'fp32')} | "
            f"{r['cameras']} | {r['seconds']} | {r['segments_per_s']} ({r['cameras']}) | "
            f"{r['cpu_per_segment']} | {r['rss_start_mib']} / {r['rss_end_mib']} | "
            f"{r['dropped']} | {lag} | {r.get('others_cores', '-')} | {r.get('load_mean', '-')} | "
            f"{'yes' if r.get('kept') else ('no' if 'kept' in r else '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_serve"))
    ap.add_argument(
        "--cameras", type=int, nargs="+", help="measure these counts (default: search upwards)"
    )
    ap.add_argument("--start", type=int, default=1, help="search: the first camera count")
    ap.add_argument("--max-cameras", type=int, default=32, help="search: stop here")
    ap.add_argument(
        "--max-lag",
        type=float,
        default=5.0,
        help="search: a run whose cameras end more than this many seconds behind, or that "
        "processes under 0.9 segments per second per camera, is not kept",
    )
    ap.add_argument("--minutes", type=float, default=10.0, help="measured time per point")
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    ap.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        help="default: every precision this CPU runs (bf16 only where it is native)",
    )
    ap.add_argument(
        "--cores", type=int, default=2, help="pin the server to this many cores (0: all)"
    )
    ap.add_argument("--clip-seconds", type=float, default=60.0, help="length of the looped clip")
    ap.add_argument(
        "--checkpoint",
        type=Path,
        help="a trained checkpoint (default: untrained, random backbones)",
    )
    ap.add_argument(
        "--export",
        type=Path,
        help="the export folder the onnx rows serve, e.g. one `avarnet quantize` wrote (default: "
        "`avarnet export` of the checkpoint)",
    )
    ap.add_argument("--video-backbone", default=DEFAULT_VIDEO_BACKBONE)
    ap.add_argument("--audio-backbone", default=DEFAULT_AUDIO_BACKBONE)
    ap.add_argument(
        "--audio-context",
        type=float,
        default=DEFAULT_AUDIO_CONTEXT_S,
        help="the checkpoint's causal look-back in seconds (default: the library's, "
        f"{DEFAULT_AUDIO_CONTEXT_S:g})",
    )
    ap.add_argument("--threads", type=int, help="encoder threads (default: --cores)")
    ap.add_argument("--batch", type=int, default=16, help="serve: most segments encoded together")
    ap.add_argument(
        "--full-runs",
        action="store_true",
        help="search: run every point for --minutes even after it drops a segment (default: a "
        "point ends at its first dropped segment, which already decides it)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the single `stream` run")
    ap.add_argument(
        "--baseline-minutes",
        type=float,
        help="length of the single `stream` run (default: --minutes)",
    )
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))[: a.cores] if a.cores else None
    threads = a.threads if a.threads is not None else (len(cores) if cores else 0)
    clip = a.out / f"scene_{a.clip_seconds:g}s.mp4"
    if not clip.exists():
        write_scene_clip(clip, a.clip_seconds)
    ckpt = a.checkpoint or a.out / f"bench-lookback{a.audio_context:g}s.ckpt"
    if not ckpt.exists():
        build_checkpoint(clip, ckpt, a.video_backbone, a.audio_backbone, a.audio_context)
    if a.export is not None and not (a.export / "manifest.json").is_file():
        sys.exit(f"bench_serve: {a.export}: not an export folder (no manifest.json)")
    export = a.export or a.out / f"export-{ckpt.stem}"
    if "onnx" in a.runtimes and not (export / "manifest.json").exists():
        from avarnet.export import export_checkpoint

        export_checkpoint(ckpt, export)
    info = {
        **machine(),
        "cores_used": cores,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "minutes": a.minutes,
        "video_backbone": a.video_backbone,
        "audio_backbone": a.audio_backbone,
        "export": str(export) if "onnx" in a.runtimes else None,
    }
    cpu = torch.device("cpu")
    plan = []
    for runtime in a.runtimes:
        allowed = ONNX_PRECISIONS if runtime == "onnx" else PRECISIONS
        runs = supported_precisions(cpu, allowed)  # never bf16 where this CPU lacks it
        plan += [(runtime, p) for p in (a.precisions or runs) if p in runs]
    rows: list[dict] = []
    base_minutes = a.baseline_minutes or a.minutes
    if not a.no_baseline:
        long_clip = a.out / f"scene_{base_minutes:g}min.mp4"
        if not long_clip.exists():
            write_scene_clip(long_clip, base_minutes * 60 + WARMUP_S + 10)
        rows.append(run_stream_baseline(long_clip, ckpt, base_minutes, a.out, threads))
        print(table(rows), flush=True)
    results = {}
    for runtime, precision in plan:
        model = export if runtime == "onnx" else ckpt

        def run(n: int, runtime=runtime, precision=precision, model=model) -> dict:
            return run_serve(
                clip,
                model,
                n,
                a.minutes,
                a.out,
                runtime=runtime,
                precision=precision,
                threads=threads,
                batch=a.batch,
                cores=cores,
                stop_on_drop=not a.cameras and not a.full_runs,
            )

        def say(row: dict) -> None:
            print(table([row]).splitlines()[-1], flush=True)

        if a.cameras:
            for n in a.cameras:
                rows.append(run(n))
                say(rows[-1])
            continue
        best = search(run, a.start, a.max_cameras, a.max_lag, rows, say)
        results[f"{runtime} {precision}"] = best
        print(f"{runtime} {precision}: {best} camera(s) kept", flush=True)
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result = {"machine": info, "largest_kept": results, "rows": rows}
    (a.out / "bench_serve.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(info))
    print(table(rows))
    for key, best in results.items():
        print(f"largest camera count kept with 0 dropped segments, {key}: {best}")


if __name__ == "__main__":
    main()
