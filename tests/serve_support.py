"""Shared pieces of the serve tests: a tiny checkpoint, a clip, a real mosquitto, a subscriber,
and the server as a subprocess."""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import launcher
import numpy as np
import paho.mqtt.client as mqtt
import yaml

from avarnet.checkpoint import save_checkpoint
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import build_spec
from avarnet.synth import write_av

CLASSES = ["crash", "normal", "scream"]
TOKEN = "test-token-1234"
MOSQUITTO = "/usr/sbin/mosquitto"


def tiny_checkpoint(tiny_backbones, path: Path, std: float = 1.0) -> Path:
    """An untrained (seeded) model over the tiny backbones' features, L = 4; a small ``std``
    magnifies feature changes, so scores move with the content."""
    from conftest import untrained_checkpoint

    vdir, adir = tiny_backbones
    v = VideoEncoder.load(str(vdir), device="cpu")
    a = AudioEncoder.load(str(adir), device="cpu")
    spec = build_spec(v, a, "pretrained", 0, 1.0, 1)
    save_checkpoint(path, untrained_checkpoint(spec, CLASSES, 4, std=std, centred=True))
    return path


def make_clip(
    path: Path, seconds: float, fps: float = 10.0, size=(160, 120), gop: int | None = None
) -> Path:
    """Moving-gradient H.264 + AAC clip with a tone that changes pitch each second."""
    n = round(seconds * fps)
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)

    def frames():
        for i in range(n):
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (x[None, :] + 10 * i) % 256
            img[..., 1] = np.linspace(0, 255, h, dtype=np.float32)[:, None]
            img[..., 2] = (40 * (i // int(fps))) % 256
            yield img

    sr = 16_000
    t = np.arange(round(seconds * sr)) / sr
    audio = (0.3 * np.sin(2 * np.pi * (300 + 100 * np.floor(t)) * t)).astype(np.float32)
    write_av(path, frames(), fps, audio, sr)
    return path


class ClipServer:
    """Serves one MP4 over HTTP; each request gets the whole file, then the connection ends
    (a live camera whose stream keeps dropping)."""

    def __init__(self, data: bytes) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.mp4"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Broker:
    """A real mosquitto on a loopback port; persistence on, so restarts keep sessions."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\n"
            # as root, mosquitto would switch to its own user, who cannot write into pytest's folder
            f"user {getpass.getuser()}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """Records every message under the prefix: (topic, payload text, retain flag), in arrival order.

    A persistent session (clean_session False, QoS 1) so messages published while it reconnects
    after a broker restart are kept for it by the broker.
    """

    def __init__(self, port: int, client_id: str = "test-sub", clean: bool = False) -> None:
        self.messages: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("avarnet/#", qos=1)
        self.subscribed = threading.Event()  # set once the broker confirmed the subscription
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))

    def topic(self, name: str) -> list[tuple[str, bool]]:
        with self.lock:
            return [(p, r) for t, p, r in self.messages if t == name]

    def events(self) -> list[dict]:
        return [json.loads(p) for p, _ in self.topic("avarnet/events")]

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; got {self.messages[-10:]}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def write_config(
    path: Path,
    ckpt: Path,
    cameras: dict,
    storage: Path,
    web_port: int,
    mqtt_port: int | None = None,
    **extra,
) -> Path:
    cfg = {
        "checkpoint": str(ckpt),
        "device": "cpu",
        "threads": 1,
        "cameras": cameras,
        "clips": {"pre_roll": 1.0, "post_roll": 1.0},
        "storage": {"path": str(storage)},
        "web": {"bind": "127.0.0.1", "port": web_port, "token": TOKEN},
        **extra,
    }
    if mqtt_port is not None:
        cfg["mqtt"] = {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "keepalive": 5,
            "reconnect_max_s": 1,
            "client_id": f"avarnet-{web_port}",
        }
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_server(config: Path, log: Path) -> launcher.Popen:
    log.write_text("")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return launcher.Popen(
        [sys.executable, "-m", "avarnet", "serve", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def api(
    port: int, path: str, token: str | None = TOKEN, method: str = "GET", body: dict | None = None
):
    """(status, parsed JSON or text) of a request to the server."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return status, raw


def wait_up(port: int, proc: launcher.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            status, _ = api(port, "/api/stats")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server did not come up:\n{log.read_text()[-3000:]}")


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{tail}")


# ------------------------------------------------------------------ the server in this process


class Capture:
    """Every message the server publishes, kept in memory (a Publisher of the server, or its
    whole output where the server has a single MQTT slot)."""

    name = "capture"
    error = None

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.anomalies: list[dict] = []
        self.states: list[dict] = []
        self.events: list[tuple[str, dict]] = []

    def start(self) -> None:
        pass

    def event(self, kind, before, after, record=None) -> None:
        with self.lock:
            self.events.append((kind, dict(after)))

    def anomaly(self, camera, payload) -> None:
        with self.lock:
            self.anomalies.append(dict(payload))

    def state(self, camera, payload) -> None:
        with self.lock:
            self.states.append(dict(payload))

    def cameras(self, cameras) -> None:
        pass

    def flush(self, timeout_s: float = 0.0) -> int:
        return 0

    def close(self) -> None:
        pass

    def stats(self):
        return None

    def scores(self, camera: str) -> list[float]:
        """Per-segment scores of ``camera`` in segment order (the last session's)."""
        with self.lock:
            rows = [a for a in self.anomalies if a["camera"] == camera]
        return [a["score"] for a in sorted(rows, key=lambda a: a["segment"])]

    def ended(self) -> list[dict]:
        with self.lock:
            return [after for kind, after in self.events if kind == "end"]


def attach(server, publisher) -> None:
    """Add ``publisher`` to the server's outputs."""
    if hasattr(server, "publishers"):
        server.publishers.add(publisher)
    else:  # a server with one MQTT output
        server.mqtt = publisher


def serve_here(config, publisher=None, until=None, timeout: float = 60.0, patch=None):
    """Run a :class:`Server` for ``config`` in this process until ``until(server)`` (default: every
    camera thread ended) or ``timeout``; stop it and return (server, capture)."""
    from avarnet.apps.serve.app import Server

    capture = publisher or Capture()
    server = Server(config)
    attach(server, capture)
    server.load_models()
    if patch is not None:
        patch(server)
    server.start()
    until = until or (lambda s: not any(r.is_alive() for r in s.readers))
    deadline = time.monotonic() + timeout
    try:
        while not until(server) and time.monotonic() < deadline:
            if hasattr(server, "tick"):
                server.tick()
            time.sleep(0.05)
    finally:
        server.shutdown()
    return server, capture
