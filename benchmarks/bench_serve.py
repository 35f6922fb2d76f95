"""Does `avarnet serve` keep N cameras in real time, and what does it cost next to N `stream`s?

Builds an untrained checkpoint over default-size backbones (random weights, offline; timing does
not depend on the weights) unless ``--checkpoint`` is given, writes a surveillance-like clip, then:

1. runs one ``avarnet stream CLIP --realtime`` for ``--minutes`` (the baseline: CPU seconds per
   media second and peak memory of one camera in its own process);
2. runs ``avarnet serve`` with N cameras, each the clip looped at its own speed, with a real
   mosquitto and a subscriber, for ``--minutes``; samples CPU time and memory of the server at
   the start (after warm-up) and the end, reads dropped segments and lag from its API, and counts
   event messages against the events in its database.

    python benchmarks/bench_serve.py --out /tmp/bench_serve --cameras 1 2 4 --minutes 3

Prints a Markdown table and writes ``bench_serve.json``. CPU seconds are the processes' own
(user + system), so they mean the same on a loaded machine; lag and drops do not (say the load).
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
import yaml

from avarnet.bench import bench_checkpoint, write_scene_clip
from avarnet.checkpoint import save_checkpoint
from avarnet.config import DEFAULT_AUDIO_BACKBONE, DEFAULT_VIDEO_BACKBONE
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import Extractor, build_spec
from avarnet.stream import SegmentSource

TOKEN = "bench-token"
TICK = os.sysconf("SC_CLK_TCK")
WARMUP_S = 20.0


def build_checkpoint(clip: Path, out: Path, video_backbone: str, audio_backbone: str) -> Path:
    v = VideoEncoder.load(video_backbone, weights="random", seed=0, device="cpu")
    a = AudioEncoder.load(audio_backbone, weights="random", seed=0, device="cpu")
    frames = []
    for seg in SegmentSource(clip, build_spec(v, a, "random", 0, 1.0, 1)):
        frames.append(seg.frames)
        if len(frames) == 16:
            break
    v.calibrate(np.concatenate(frames))
    ext = Extractor(build_spec(v, a, "random", 0, 1.0, 1).replace(random_init=v.describe()), v, a)
    ckpt = bench_checkpoint(ext)
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


def run_serve(
    clip: Path, ckpt: Path, n: int, minutes: float, out: Path, threads: int, batch: int
) -> dict:
    folder = out / f"serve_{n}"
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
        "checkpoint": str(ckpt),
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "avarnet", "serve", str(folder / "serve.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "serve.log").open("w"),
    )
    try:
        wait_until(
            lambda: _up(web_port) and api(web_port, "/api/stats")["cameras"][0]["segments"] > 0,
            proc,
        )
        time.sleep(WARMUP_S)
        first, stats0 = proc_sample(proc.pid), api(web_port, "/api/stats")
        deadline = time.monotonic() + minutes * 60
        last = first
        lags: list[float] = []
        series = [first]  # one sample a minute: a plateau and a leak look alike at the ends only
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(5)
            last = proc_sample(proc.pid)
            if last["t"] - series[-1]["t"] >= 60:
                series.append(last)
            lags += [
                c["lag_s"] for c in api(web_port, "/api/stats")["cameras"] if c["lag_s"] is not None
            ]
        stats1 = api(web_port, "/api/stats")
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
    return {
        "cameras": n,
        "process": "serve",
        "seconds": round(wall, 1),
        "exit_code": code,
        "cpu_per_camera": round((last["cpu_s"] - first["cpu_s"]) / wall / n, 3),
        "rss_start_mib": first["rss_mib"],
        "rss_end_mib": last["rss_mib"],
        "rss_half_mib": series[len(series) // 2]["rss_mib"],
        "rss_by_minute": [x["rss_mib"] for x in series + [last]],
        "peak_rss_mib": last["peak_rss_mib"],
        "cpu_per_segment": round((last["cpu_s"] - first["cpu_s"]) / max(1, segs), 3),
        "segments_per_s": round(segs / wall, 2),
        "dropped": sum(c["dropped"] for c in stats1["cameras"]),
        "lag_mean_s": round(float(np.mean(lags)), 2) if lags else None,
        "lag_max_s": round(float(np.max(lags)), 2) if lags else None,
        "mean_batch": stats1["engines"][0]["mean_batch"],
        "events_db": events,
        "msgs_new": counts["new"],
        "msgs_end": counts["end"],
        "anomaly_msgs": counts["anomaly"],
    }


def table(rows: list[dict]) -> str:
    head = (
        "| process | cameras | s | segments/s (need) | CPU s per segment | CPU s per media s per camera"
        " | RSS start / half-time / end MiB | dropped | lag mean s | lag max s | events (DB) | new / end messages |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        msgs = f"{r['msgs_new']} / {r['msgs_end']}" if "msgs_new" in r else "-"
        lines.append(
            f"| {r['process']} | {r['cameras']} | {r['seconds']} | {r['segments_per_s']} ({r['cameras']}) | "
            f"{r['cpu_per_segment']} | {r['cpu_per_camera']} | "
            f"{r['rss_start_mib']} / {r.get('rss_half_mib', '-')} / {r['rss_end_mib']} | {r['dropped']} | {r['lag_mean_s']} | "
            f"{r['lag_max_s']} | {r.get('events_db', '-')} | {msgs} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_serve"))
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--clip-seconds", type=float, default=60.0, help="length of the looped clip")
    ap.add_argument(
        "--checkpoint",
        type=Path,
        help="a trained checkpoint (default: untrained, random backbones)",
    )
    ap.add_argument("--video-backbone", default=DEFAULT_VIDEO_BACKBONE)
    ap.add_argument("--audio-backbone", default=DEFAULT_AUDIO_BACKBONE)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16, help="serve: most segments encoded together")
    ap.add_argument("--no-baseline", action="store_true", help="skip the single `stream` run")
    ap.add_argument(
        "--baseline-minutes",
        type=float,
        help="length of the single `stream` run (default: --minutes)",
    )
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    clip = a.out / f"scene_{a.clip_seconds:g}s.mp4"
    if not clip.exists():
        write_scene_clip(clip, a.clip_seconds)
    ckpt = a.checkpoint or a.out / "bench.ckpt"
    if not ckpt.exists():
        build_checkpoint(clip, ckpt, a.video_backbone, a.audio_backbone)
    base_minutes = a.baseline_minutes or a.minutes
    long_clip = a.out / f"scene_{base_minutes:g}min.mp4"
    info = {
        "nproc": os.cpu_count(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")
            ),
            None,
        ),
        "minutes": a.minutes,
        "video_backbone": a.video_backbone,
        "audio_backbone": a.audio_backbone,
    }
    rows = []
    if not a.no_baseline:
        if not long_clip.exists():
            write_scene_clip(long_clip, base_minutes * 60 + WARMUP_S + 10)
        rows.append(run_stream_baseline(long_clip, ckpt, base_minutes, a.out, a.threads))
        print(table(rows), flush=True)
    for n in a.cameras:
        rows.append(run_serve(clip, ckpt, n, a.minutes, a.out, a.threads, a.batch))
        print(table(rows), flush=True)
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    (a.out / "bench_serve.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(json.dumps(info))
    print(table(rows))


if __name__ == "__main__":
    main()
