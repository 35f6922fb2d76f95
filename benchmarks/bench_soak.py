"""A week in an hour: does `avarnet serve` survive hostile cameras, a broker outage and a full
disk, and does an event kept open for a week cost what it cost at its first minute?

Runs the server in this process (:class:`avarnet.apps.serve.app.Server`, driven as ``avarnet serve``
drives it: ``tick()`` once a second, ``shutdown()`` at the end) with a real mosquitto and a
subscriber, for ``--minutes``:

* 4 file cameras read in real time: ``long`` (one clip as long as the run, threshold 0: one event
  open for the whole run) and ``loop1``..``loop3`` (a short clip looped, threshold 0: one event
  per pass, closed at each end of the file);
* hostile cameras: ``jump`` (MPEG-TS whose timestamps jump by a day, served over HTTP; each
  connection ends after the file), ``late`` (audio starting 1e5 s after the video, looped),
  ``stall`` (an HTTP source that stops sending mid-stream and keeps the connection open),
  ``refused`` (a closed loopback port, with credentials in its URL), ``nan`` (a stereo file with
  NaN audio samples, looped);
* a broker outage (mosquitto stopped for ``--outage-s``, then started again);
* a disk-full burst: the storage folder is a tmpfs of its own (as root; else the event
  database's ``max_page_count`` is pinned) that is filled to the last byte for ``--full-s``, then
  freed: SQLite answers "database or disk is full", clip and snapshot writes fail with ENOSPC.
  It starts at 55 % of the run, or once the week below is written if that is later (a flood of
  week-old score rows is not what a full disk should be judged by); the run then goes on until
  the burst is over (at most 5 minutes past ``--minutes``).

What is sped up, and only that: the long event's stored history. Once the event is open and the
cost of its first segments is measured, a background thread writes ``--week-days`` (7) days of
one-second scores for it (604,800 rows: the very rows ``EventStore.append_score`` inserts, 20,000
per transaction on the store's own connection), while the run goes on; the cost per segment is
measured again at the end, over a week-long event. Everything
else runs on the wall clock: the alert tracker, the clip recorder, MQTT and the cameras see only
the run's own minutes.

    python benchmarks/bench_soak.py --out /tmp/soak                  # 3 minutes, tiny backbones
    python benchmarks/bench_soak.py --out /tmp/soak --minutes 60     # an hour
    python benchmarks/bench_soak.py --out /tmp/soak --default-backbones --minutes 60

Prints one table and a verdict line (``soak: PASS`` or ``soak: FAIL (...)``; exit 1 on FAIL);
writes ``soak.json`` and the server's log (``serve.log``) into ``--out``.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import logging
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import paho.mqtt.client as mqtt
import yaml

MOSQUITTO = "/usr/sbin/mosquitto"
SECRET = "soak-secret-pw"
FILE_CAMERAS = ("long", "loop1", "loop2", "loop3")
EXTEND_S = 300.0  # most the run goes on past --minutes, waiting for the week to be written
WARMUP_S = 30.0
MAX_GROWTH_MIB_MIN = 2.0  # growth over the run's second half (after malloc_trim): unbounded
WEEK_CHUNK = 20_000  # score rows per transaction while the week is written  # memory "at start" is read this far into the run (models loaded, caches warm)
HOSTILE = ("jump", "late", "stall", "refused", "nan")


# ----------------------------------------------------------------------------- media


def _frame(i: int, w: int, h: int) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (x[None, :] + 7 * i) % 256
    img[..., 1] = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    img[..., 2] = (13 * (i // 10)) % 256
    return img


def write_clip(
    path: Path,
    seconds: float,
    fps: int = 10,
    size=(160, 120),
    channels: int = 1,
    nan_every: int = 0,
    audio_delay_s: float = 0.0,
) -> Path:
    """H.264 + float PCM in Matroska, written a second at a time (an hour stays small in memory).
    ``nan_every``: every n-th audio sample is NaN (all channels), plus one all-NaN burst per 10 s.
    ``audio_delay_s``: the audio track starts that long after the video."""
    w, h = size
    sr = 16_000
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.gop_size = 2 * fps
        v.options = {"preset": "ultrafast"}
        layout = "stereo" if channels == 2 else "mono"
        a = c.add_stream("pcm_f32le", rate=sr, layout=layout)
        a_pts = round(audio_delay_s * sr)
        for sec in range(int(np.ceil(seconds))):
            for k in range(fps):
                i = sec * fps + k
                frame = av.VideoFrame.from_ndarray(_frame(i, w, h), "rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                for p in v.encode(frame):
                    c.mux(p)
            t = (np.arange(sr) + sec * sr) / sr
            tone = 0.3 * np.sin(2 * np.pi * (300 + 100 * (sec % 5)) * t)
            x = np.stack([tone, 0.2 * np.sin(2 * np.pi * 97 * t)][:channels]).astype(np.float32)
            if nan_every:
                x[:, ::nan_every] = np.nan
                if sec % 10 == 3:
                    x[:, 4000:6000] = np.nan
            for s in range(0, sr, 1600):
                packed = np.ascontiguousarray(x[:, s : s + 1600].T).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
                frame.sample_rate, frame.pts = sr, a_pts
                a_pts += 1600
                for p in a.encode(frame):
                    c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    return path


def write_jumping_ts(path: Path, jump_s: float = 86_400.0) -> Path:
    """MPEG-TS, 3 s of video whose timestamps jump ``jump_s`` ahead half-way (a clock reset)."""
    with av.open(str(path), "w", format="mpegts") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        v.codec_context.gop_size = 5
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(_frame(i, 96, 64), "rgb24")
            frame.pts = i + (round(jump_s * 10) if i >= 15 else 0)
            frame.time_base = Fraction(1, 10)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


def write_ts(path: Path, seconds: float) -> Path:
    with av.open(str(path), "w", format="mpegts") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        v.codec_context.gop_size = 5
        for i in range(round(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(_frame(i, 96, 64), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


# ----------------------------------------------------------------------------- sources


class HttpSource:
    """Serves bytes over loopback HTTP. ``stall_after``: send that many bytes, then keep the
    connection open without sending anything (a camera that hangs) until closed."""

    def __init__(self, data: bytes, stall_after: int | None = None) -> None:
        closing = self.closing = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                if stall_after is None:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data if stall_after is None else data[:stall_after])
                    self.wfile.flush()
                    if stall_after is not None:
                        closing.wait()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.ts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\nuser {getpass.getuser()}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """Counts event messages by type and id; a persistent QoS-1 session, so what is published
    while it reconnects after the outage is kept for it by the broker."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, set[str]] = {"new": set(), "update": set(), "end": set()}
        self.counts: Counter = Counter()
        self.leaks = 0  # messages that carry the refused camera's password
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="soak-sub", clean_session=False
        )
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("avarnet/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        text = msg.payload.decode(errors="replace")
        with self.lock:
            if SECRET in text:
                self.leaks += 1
            if msg.topic.endswith("/events"):
                m = json.loads(text)
                self.counts[m["type"]] += 1
                self.ids[m["type"]].add(m["after"]["id"])
            else:
                self.counts[msg.topic.rsplit("/", 1)[-1]] += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ----------------------------------------------------------------------------- storage


class Storage:
    """The storage folder, on a tmpfs of its own when that can be mounted (root)."""

    def __init__(self, path: Path, size_mb: int, mode: str) -> None:
        self.path = path
        self.mounted = False
        path.mkdir(parents=True, exist_ok=True)
        if mode in ("auto", "tmpfs") and os.geteuid() == 0:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "soak", str(path)],
                capture_output=True,
                text=True,
            )
            self.mounted = r.returncode == 0
        if mode == "tmpfs" and not self.mounted:
            raise SystemExit("cannot mount a tmpfs for the storage folder (root needed)")
        self.mode = "tmpfs" if self.mounted else "max_page_count"
        self.filler = path / "filler.bin"

    def fill(self, store) -> None:
        """From now on the disk is full."""
        if self.mode == "tmpfs":
            # empty the WAL first, so the very next write needs new space (as on a disk that
            # filled while the database was quiet)
            db = sqlite3.connect(str(store.path), timeout=10)
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.close()
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for block in (1 << 20, 4096, 1):  # to the last byte
                    data = b"\0" * block
                    try:
                        while True:
                            os.write(fd, data)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
            finally:
                os.close(fd)
        else:  # the database may not grow by one more page (clips still write)
            with store._lock:
                pages = store._db.execute("PRAGMA page_count").fetchone()[0]
                store._db.execute(f"PRAGMA max_page_count = {int(pages)}")

    def free(self, store) -> None:
        if self.mode == "tmpfs":
            self.filler.unlink(missing_ok=True)
        else:
            with store._lock:
                store._db.execute("PRAGMA max_page_count = 1073741823")

    def close(self) -> None:
        self.filler.unlink(missing_ok=True)
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


# ----------------------------------------------------------------------------- measuring


def trimmed_rss_mib() -> float:
    """RSS once glibc has returned the memory it keeps but no longer uses (``malloc_trim``):
    what is left is what the process holds, fragmentation of the heap aside."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return round(rss_mib(), 1)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class LogCount(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.file = path.open("w")
        self.levels: Counter = Counter()
        self.traces = 0
        self.jumps = 0
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            with self.lock_:
                self.levels[record.levelname] += 1
                self.traces += record.exc_info is not None
                self.jumps += "timestamp jump" in text
                self.file.write(f"{time.strftime('%H:%M:%S')} {record.levelname} {text}\n")
                if record.exc_info is not None:
                    self.file.write(logging.Formatter().formatException(record.exc_info) + "\n")
                self.file.flush()
        except Exception:  # noqa: BLE001
            self.handleError(record)


class Timings:
    """Wall time of the long event's bookkeeping per segment: ``EventLifecycle.progress`` (the
    event's database writes) and the server's whole segment handler (events, messages, state)."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, float]] = []  # (monotonic, seconds)
        self.handler: list[tuple[float, float]] = []

    def wrap(self, server, camera: str) -> None:
        events = server.events
        progress = events.progress

        def timed_progress(cam, ev, t, score):
            t0 = time.perf_counter()
            try:
                return progress(cam, ev, t, score)
            finally:
                if cam == camera:
                    self.progress.append((time.monotonic(), time.perf_counter() - t0))

        events.progress = timed_progress
        for engine in server.engines.values():
            handler = engine.handler

            def timed(kind, *args, _handler=handler):
                t0 = time.perf_counter()
                try:
                    return _handler(kind, *args)
                finally:
                    if kind == "segment" and args[0].camera == camera:
                        self.handler.append((time.monotonic(), time.perf_counter() - t0))

            engine.handler = timed


def median_ms(samples: list[tuple[float, float]]) -> float | None:
    return round(1000 * statistics.median(s for _, s in samples), 3) if samples else None


# ----------------------------------------------------------------------------- setup


def build_checkpoint(out: Path, default_backbones: bool, clip: Path) -> Path:
    ckpt = out / ("default.ckpt" if default_backbones else "tiny.ckpt")
    if ckpt.exists():
        return ckpt
    if default_backbones:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_serve import build_checkpoint as build_default

        from avarnet.config import DEFAULT_AUDIO_BACKBONE, DEFAULT_VIDEO_BACKBONE

        return build_default(clip, ckpt, DEFAULT_VIDEO_BACKBONE, DEFAULT_AUDIO_BACKBONE)
    from avarnet.apps.bench import bench_checkpoint
    from avarnet.checkpoint import save_checkpoint
    from avarnet.encoders import AudioEncoder, VideoEncoder
    from avarnet.extract import Extractor, build_spec

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # the tests' tiny backbones
    from backbone_factory import save_tiny_backbones

    vdir, adir = save_tiny_backbones(out / "backbones")
    v = VideoEncoder.load(str(vdir), device="cpu")
    a = AudioEncoder.load(str(adir), device="cpu")
    ext = Extractor(build_spec(v, a, "pretrained", 0, 1.0, 1), v, a)
    save_checkpoint(ckpt, bench_checkpoint(ext, seq_len=4))
    return ckpt


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        None,
    )
    return {"nproc": os.cpu_count(), "cpu": model, "load": [round(x, 2) for x in os.getloadavg()]}


def schedule(run_s: float, outage_s: float, full_s: float) -> dict:
    """When (s into the run) each fault starts: the outage at 25 %, the full disk at 55 % (or
    once the week of scores is written, if later)."""
    return {
        "outage": (0.25 * run_s, min(outage_s, 0.2 * run_s)),
        "full": (0.55 * run_s, min(full_s, 0.2 * run_s)),
    }


# ----------------------------------------------------------------------------- run


def run(a: argparse.Namespace, cleanup: list) -> dict:
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    run_s = a.minutes * 60
    media = out / "media"
    media.mkdir(exist_ok=True)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    info = machine()
    print(f"machine: {info['cpu']}, {info['nproc']} cores, load {info['load']}", flush=True)
    t_setup = time.monotonic()
    long_s = run_s + EXTEND_S + 120  # never ends during the run
    long_clip = media / f"long_{long_s:g}s.mkv"
    if not long_clip.exists():
        write_clip(long_clip, long_s)
    short_clip = media / "short.mkv"
    if not short_clip.exists():
        write_clip(short_clip, a.loop_seconds)
    late = write_clip(media / "late.mkv", 2.0, size=(96, 64), audio_delay_s=1e5)
    nan = write_clip(media / "nan.mkv", 6.0, size=(96, 64), channels=2, nan_every=97)
    jump = write_jumping_ts(media / "jump.ts").read_bytes()
    stall = write_ts(media / "stall.ts", 20.0).read_bytes()
    ckpt = build_checkpoint(out, a.default_backbones, short_clip)
    print(f"setup: media and checkpoint in {time.monotonic() - t_setup:.0f} s", flush=True)

    storage = Storage(out / "storage", a.tmpfs_mb, a.disk_full)
    cleanup.append(storage.close)
    broker = Broker(out / "broker")
    cleanup.append(broker.stop)
    broker.start()
    sub = Subscriber(broker.port)
    jump_src = HttpSource(jump)
    stall_src = HttpSource(stall, stall_after=len(stall) // 3)
    always = {"threshold": 0.0, "min_segments": 2}
    cameras = {
        "long": {"source": str(long_clip), "realtime": True, "alerts": always},
        **{
            f"loop{i}": {
                "source": str(short_clip),
                "realtime": True,
                "loop": True,
                "alerts": always,
            }
            for i in (1, 2, 3)
        },
        "jump": {"source": jump_src.url, "retry_max_s": 2},
        "late": {"source": str(late), "realtime": True, "loop": True},
        "stall": {"source": stall_src.url, "retry_max_s": 2},
        "refused": {
            "source": f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/live",
            "retry_max_s": 5,
        },
        "nan": {"source": str(nan), "realtime": True, "loop": True, "alerts": always},
    }
    cfg = {
        "checkpoint": str(ckpt),
        "device": "cpu",
        "threads": a.threads,
        "cameras": cameras,
        "clips": {"pre_roll": 2.0, "post_roll": 2.0},
        "storage": {"path": str(storage.path)},
        "web": {"bind": "127.0.0.1", "port": free_port(), "token": "soak-token-123456"},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port,
            "keepalive": 5,
            "reconnect_max_s": 2,
            "client_id": "avarnet-soak",
        },
    }
    (out / "serve.yaml").write_text(yaml.safe_dump(cfg))

    from avarnet.apps.serve.app import PRUNE_EVERY_S, Server
    from avarnet.apps.serve.config import load_config

    logger = logging.getLogger("avarnet")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    counter = LogCount(out / "serve.log")
    logger.addHandler(counter)
    deaths: list[str] = []

    def excepthook(args) -> None:
        deaths.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}")
        previous_hook(args)

    previous_hook = threading.excepthook
    threading.excepthook = excepthook

    server = Server(load_config(out / "serve.yaml"))
    server.load_models()
    timings = Timings()
    timings.wrap(server, "long")
    server.start()
    t0 = time.monotonic()
    plan = schedule(run_s, a.outage_s, a.full_s)
    print(
        f"running {a.minutes:g} min: broker outage at {plan['outage'][0]:.0f} s for "
        f"{plan['outage'][1]:.0f} s, disk full ({storage.mode}) from {plan['full'][0]:.0f} s "
        f"(or once the week is written) for "
        f"{plan['full'][1]:.0f} s",
        flush=True,
    )
    phase = {"outage": "before", "full": "before"}
    full_at = 0.0
    half_trimmed: tuple[float, float] | None = None
    storage_seen: list[str] = []
    rss: list[tuple[float, float]] = []
    prefill: dict = {"rows": 0, "seconds": None, "started_at": None, "done_at": None}
    stop_week = threading.Event()
    week_thread: threading.Thread | None = None
    long_id: str | None = None
    start_rss = None
    last_prune = last_print = time.monotonic()

    def week(event_id: str) -> None:
        n = round(a.week_days * 86_400 / server.engine_of["long"].ckpt.spec.segment_seconds)
        t_event = time.time() - a.week_days * 86_400
        t_start = time.monotonic()
        prefill["started_at"] = t_start - t0
        store = server.store
        sql = "INSERT INTO scores (event_id, t, score) VALUES (?, ?, ?)"
        for first in range(0, n, WEEK_CHUNK):
            if stop_week.is_set():
                return
            rows = [(event_id, t_event + i, 0.5) for i in range(first, min(n, first + WEEK_CHUNK))]
            # the rows append_score writes, a chunk per transaction on the store's own connection
            # (the server's writes wait for it, as they wait for each other)
            with store._lock:
                store._db.execute("BEGIN IMMEDIATE")
                try:
                    store._db.executemany(sql, rows)
                    store._db.execute("COMMIT")
                except BaseException:
                    store._db.execute("ROLLBACK")
                    raise
            prefill["rows"] = first + len(rows)
            time.sleep(0.05)  # let the cameras' threads in
        prefill["done_at"] = time.monotonic()
        prefill["seconds"] = round(prefill["done_at"] - t_start, 1)

    try:
        while True:
            now = time.monotonic() - t0
            # the run lasts --minutes, longer only when the full disk had to wait for the week
            if now >= run_s and phase["full"] == "after" and now >= full_at + plan["full"][1] + 10:
                break
            if now >= run_s + EXTEND_S:
                break  # the week was never written: the verdict says so
            time.sleep(1.0)
            server.tick()
            now = time.monotonic() - t0
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                server.prune()
                last_prune = time.monotonic()
            event = server.events.current("long")
            if long_id is None and event is not None:
                long_id = event.id
            if start_rss is None and now >= min(WARMUP_S, run_s / 4):
                start_rss = (round(now, 1), round(rss_mib(), 1))
            if (
                prefill["started_at"] is None
                and long_id is not None
                and len(timings.progress) >= a.sample_segments
            ):
                week_thread = threading.Thread(target=week, args=(long_id,), name="soak-week")
                week_thread.start()
            start, length = plan["outage"]
            if phase["outage"] == "before" and now >= start:
                broker.stop()
                phase["outage"] = "down"
            elif phase["outage"] == "down" and now >= start + length:
                broker.start()
                phase["outage"] = "after"
            start, length = plan["full"]
            # after the week is written (its rows are not what a full disk should cost)
            written = prefill["done_at"] is not None
            if phase["full"] == "before" and now >= start and written:
                storage.fill(server.store)
                phase["full"] = "full"
                full_at = now
            elif phase["full"] == "full" and now >= full_at + length:
                storage.free(server.store)
                phase["full"] = "after"
            if server.store.degraded:
                storage_seen.append(server.store.degraded)
            if half_trimmed is None and now >= run_s / 2:
                half_trimmed = (round(now, 1), trimmed_rss_mib())
            if not rss or now - rss[-1][0] >= 10:
                rss.append((round(now, 1), round(rss_mib(), 1)))
            if time.monotonic() - last_print >= 30:
                last_print = time.monotonic()
                segs = sum(v.segments for v in server.live.values())
                print(
                    f"  {now:5.0f} s: {segs} segments, {server.events.opened} events opened, "
                    f"RSS {rss_mib():.0f} MiB, week rows {prefill['rows']}, load "
                    f"{os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        if phase["full"] == "full":
            storage.free(server.store)
        if phase["outage"] == "down":
            broker.start()
        stop_week.set()
        if week_thread is not None:
            week_thread.join()
        end_rss = (round(time.monotonic() - t0, 1), round(rss_mib(), 1))
        end_trimmed = trimmed_rss_mib()
        t_end = time.monotonic()
        alive = {r.camera.name: r.is_alive() for r in server.readers}
        engines_alive = all(e.is_alive() for e in server.engines.values())
        status = {row["name"]: row for row in server.camera_status()}
        stats = server.stats()
        done = prefill["done_at"]
        n = a.sample_segments
        late_progress = [s for s in timings.progress if done and s[0] >= done][-n:]
        late_handler = [s for s in timings.handler if done and s[0] >= done][-n:]
        server.shutdown()
        t_stop = time.monotonic() - t_end
    finally:
        threading.excepthook = previous_hook
        jump_src.close()
        stall_src.close()
    # every `end` should reach the subscriber (the outbox delivers in order after the outage)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sub.lock:
            if sub.ids["end"] >= sub.ids["new"] and sub.counts["new"]:
                break
        time.sleep(0.5)
    time.sleep(1.0)
    sub.close()
    broker.stop()
    db = sqlite3.connect(f"file:{storage.path / 'events.db'}?mode=ro", uri=True)
    n_events, n_open = db.execute("SELECT COUNT(*), SUM(end_time IS NULL) FROM events").fetchone()
    closed_by = dict(db.execute("SELECT closed_by, COUNT(*) FROM events GROUP BY 1").fetchall())
    long_rows = (
        db.execute("SELECT COUNT(*) FROM scores WHERE event_id = ?", (long_id,)).fetchone()[0]
        if long_id
        else 0
    )
    long_closed = (
        db.execute("SELECT closed_by FROM events WHERE id = ?", (long_id,)).fetchone()
        if long_id
        else None
    )
    db.close()
    logger.removeHandler(counter)

    return {
        "machine": info,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "minutes": a.minutes,
        "run_s": round(end_rss[0], 1),
        "backbones": "default" if a.default_backbones else "tiny",
        "disk_full_mode": storage.mode,
        "plan": plan,
        "full_at": round(full_at, 1),
        "thread_deaths": deaths,
        "threads_alive": alive,
        "engines_alive": engines_alive,
        "cameras": status,
        "engine_faults": stats["engines"][0]["faults"],
        "storage_degraded_seen": bool(storage_seen),
        "storage_first": storage_seen[0] if storage_seen else None,
        "store": stats["storage"],
        "events_db": n_events,
        "events_open_after_stop": int(n_open or 0),
        "closed_by": closed_by,
        "msgs": dict(sub.counts),
        "ids": {k: len(v) for k, v in sub.ids.items()},
        "ends_missing": len(sub.ids["new"] - sub.ids["end"]),
        "leaks": sub.leaks,
        "log": dict(counter.levels),
        "log_traces": counter.traces,
        "timestamp_jump_lines": counter.jumps,
        "rss_start": start_rss,
        "rss_end": end_rss,
        "rss_series": rss,
        "rss_half_trimmed": half_trimmed,
        "rss_end_trimmed": end_trimmed,
        "long_event": long_id,
        "long_event_closed_by": long_closed[0] if long_closed else None,
        "long_event_rows": long_rows,
        "prefill": prefill,
        "progress_ms_start": median_ms(timings.progress[: a.sample_segments]),
        "progress_ms_end": median_ms(late_progress),
        "handler_ms_start": median_ms(timings.handler[: a.sample_segments]),
        "handler_ms_end": median_ms(late_handler),
        "end_samples": len(late_progress),
        "stop_s": round(t_stop, 1),
    }


def growth(r: dict, trimmed: bool = False) -> float:
    """RSS growth over the run's second half, MiB per minute (``trimmed``: after malloc_trim)."""
    if trimmed:
        (t, half), end = r["rss_half_trimmed"], r["rss_end_trimmed"]
        return round((end - half) / max(1e-9, (r["rss_end"][0] - t) / 60), 1)
    half = quarter(r, 2)
    return round((r["rss_end"][1] - half) / max(1e-9, r["run_s"] / 120), 1)


def verdict(r: dict) -> list[str]:
    bad = []
    if growth(r, trimmed=True) > MAX_GROWTH_MIB_MIN:
        bad.append(
            f"memory still grows: {growth(r, trimmed=True)} MiB/min over the second half "
            "(after malloc_trim)"
        )
    if r["thread_deaths"]:
        bad.append(f"{len(r['thread_deaths'])} thread death(s)")
    dead = [n for n, alive in r["threads_alive"].items() if not alive]
    if dead:
        bad.append(f"camera thread(s) ended: {', '.join(dead)}")
    if not r["engines_alive"]:
        bad.append("engine thread ended")
    if r["log_traces"]:
        bad.append(f"{r['log_traces']} log line(s) with a traceback")
    if r["events_open_after_stop"]:
        bad.append(f"{r['events_open_after_stop']} event(s) never closed")
    if not (r["events_db"] == r["ids"].get("new", 0) == r["ids"].get("end", 0)):
        bad.append("events, `new` and `end` differ")
    if r["leaks"]:
        bad.append(f"{r['leaks']} message(s) carry a password")
    if not r["storage_degraded_seen"]:
        bad.append("the disk-full burst was not seen by the event database")
    if r["prefill"]["seconds"] is None:
        bad.append("the week of scores was not written in time (run longer)")
    elif r["progress_ms_end"] and r["progress_ms_start"]:
        if r["progress_ms_end"] > 5 * r["progress_ms_start"] + 1.0:
            bad.append("the long event's cost per segment grew")
    run_s = r["run_s"]
    slow = [c for c in FILE_CAMERAS if r["cameras"][c]["segments"] < 0.5 * run_s]
    if slow:
        bad.append(f"file camera(s) scored fewer segments than half the run's seconds: {slow}")
    stuck = [
        f"{name} ({row['segments']} segments, {row['status']})"
        for name, row in r["cameras"].items()
        if name != "refused" and row["segments"] < run_s / 10
    ]
    if stuck:
        bad.append(f"camera(s) delivering (almost) nothing: {', '.join(stuck)}")
    return bad


def quarter(r: dict, q: int) -> float:
    """RSS sample nearest to q quarters of the run."""
    t = q * r["run_s"] / 4
    return min(r["rss_series"], key=lambda x: abs(x[0] - t))[1]


def table(r: dict) -> str:
    lines = []
    cams = r["cameras"]
    lines.append(
        "| camera | kind | status at end | sessions | segments scored | dropped (queue full) "
        "| skipped (fault) | error shown |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    kinds = {
        "long": "file, realtime, event open all run",
        "loop1": "file, realtime, looped",
        "loop2": "file, realtime, looped",
        "loop3": "file, realtime, looped",
        "jump": "HTTP MPEG-TS, timestamps jump 1 day",
        "late": "file, audio 1e5 s late, looped",
        "stall": "HTTP, stops sending mid-stream",
        "refused": "RTSP to a closed port",
        "nan": "file, stereo, NaN samples, looped",
    }
    for name, row in cams.items():
        err = (row["error"] or "-").replace("|", "/")
        if len(err) > 60:
            err = err[:57] + "..."
        lines.append(
            f"| {name} | {kinds.get(name, '')} | {row['status']} | {row['sessions']} | "
            f"{row['segments']} | {row['dropped']} | {row['failed']} | {err} |"
        )
    lines.append("")
    store = r["store"]
    progress = (
        f"{r['progress_ms_start']} ms -> {r['progress_ms_end']} ms "
        f"(whole segment handler {r['handler_ms_start']} -> {r['handler_ms_end']} ms)"
    )
    rows = [
        ("thread deaths (threading.excepthook)", len(r["thread_deaths"])),
        (
            "threads alive at the end",
            f"{sum(r['threads_alive'].values())}/{len(r['threads_alive'])} cameras, "
            f"engine {'yes' if r['engines_alive'] else 'NO'}",
        ),
        (
            "log lines: warning / error / with a traceback",
            f"{r['log'].get('WARNING', 0)} / {r['log'].get('ERROR', 0)} / {r['log_traces']}",
        ),
        ("'timestamp jump' lines", r["timestamp_jump_lines"]),
        (
            "segments dropped: engine queue full / skipped by a fault",
            f"{sum(c['dropped'] for c in cams.values())} / "
            f"{sum(c['failed'] for c in cams.values())}",
        ),
        (
            "database writes during the full disk: replayed / lost",
            f"{store['replayed_writes']} / {store['dropped_writes']}",
        ),
        (
            "events (database) = `new` = `end` (distinct ids)",
            f"{r['events_db']} = {r['ids'].get('new', 0)} = {r['ids'].get('end', 0)}"
            f" (messages: {r['msgs'].get('new', 0)} new, {r['msgs'].get('end', 0)} end)",
        ),
        ("events left open after stop", r["events_open_after_stop"]),
        ("events by closing reason", ", ".join(f"{k}: {v}" for k, v in r["closed_by"].items())),
        ("messages carrying a camera password", r["leaks"]),
        (
            "memory (RSS) at 30 s -> end",
            f"{r['rss_start'][1] if r['rss_start'] else '-'} MiB (at {r['rss_start'][0] if r['rss_start'] else '-'} s)"
            f" -> {r['rss_end'][1]} MiB (at {r['rss_end'][0]} s); highest sample "
            f"{max(x for _, x in r['rss_series'])} MiB; at 1/2, 3/4 of the run: "
            f"{quarter(r, 2)}, {quarter(r, 3)} MiB",
        ),
        (
            "long event: score rows at the end",
            f"{r['long_event_rows']:,} ({r['prefill']['rows']:,} written ahead in "
            f"{r['prefill']['seconds']} s), closed by {r['long_event_closed_by']}",
        ),
        (
            "memory growth over the second half: RSS / after malloc_trim",
            f"{growth(r)} / {growth(r, trimmed=True)} MiB/min ({r['rss_half_trimmed'][1]} -> "
            f"{r['rss_end_trimmed']} MiB after malloc_trim)",
        ),
        ("long event: time per segment, start -> end (median)", progress),
        ("stop (SIGTERM path) took", f"{r['stop_s']} s"),
    ]
    lines.append("| measure | value |")
    lines.append("|---|---|")
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_soak"))
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument(
        "--default-backbones",
        action="store_true",
        help="the default (full-size, random-weight) backbones instead of tiny ones",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--loop-seconds", type=float, default=20.0, help="length of the looped clip")
    ap.add_argument("--outage-s", type=float, default=20.0, help="broker outage length")
    ap.add_argument("--full-s", type=float, default=20.0, help="disk-full burst length")
    ap.add_argument(
        "--disk-full",
        choices=["auto", "tmpfs", "pages"],
        default="auto",
        help="tmpfs: fill a tmpfs storage folder (root); pages: pin max_page_count",
    )
    ap.add_argument("--tmpfs-mb", type=int, default=1024)
    ap.add_argument(
        "--week-days",
        type=float,
        default=7.0,
        help="days of one-second scores written ahead into the long event",
    )
    ap.add_argument(
        "--sample-segments",
        type=int,
        default=20,
        help="segments of the long event timed before its history is written",
    )
    a = ap.parse_args()  # fmt: skip
    cleanup: list = []
    try:
        r = run(a, cleanup)
    finally:
        for fn in reversed(cleanup):
            fn()
    (a.out / "soak.json").write_text(json.dumps(r, indent=1, default=str))
    print()
    print(
        f"bench_soak: {r['run_s']:.0f} s (--minutes {a.minutes:g}), {r['backbones']} backbones, "
        f"{r['machine']['cpu']}, {r['machine']['nproc']} cores, load {r['machine']['load']} "
        f"-> {r['load_end']}; broker down {r['plan']['outage'][0]:.0f}-"
        f"{sum(r['plan']['outage']):.0f} s, disk full ({r['disk_full_mode']}) "
        f"{r['full_at']:.0f}-{r['full_at'] + r['plan']['full'][1]:.0f} s"
    )
    print(table(r))
    bad = verdict(r)
    print("soak: PASS" if not bad else f"soak: FAIL ({'; '.join(bad)})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
