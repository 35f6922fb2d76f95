"""`avarnet serve`: cameras -> shared encoders -> events (SQLite, clips, snapshots) -> MQTT,
webhook and the review page, in one process.

Threads: one per camera (:mod:`.cameras`: reconnection and health over the live pipeline's
:class:`avarnet.media.SegmentSource`), one engine per checkpoint, runtime and precision
(:mod:`.engine`: batching over :class:`avarnet.features.SegmentEncoder` and each camera's
:class:`avarnet.stream.StreamingPredictor`), one worker finishing events (:mod:`.lifecycle`), the
outputs' own threads (:mod:`.publish`), and uvicorn serving the page (:mod:`.web`). No thread
dies of an error: it is logged once, the camera (or the server) shows unhealthy on the page, the
API and its MQTT state, open events close with a reason, and work resumes. SIGTERM or Ctrl-C: the
cameras stop, queued segments are processed, open events close with their clips, messages are
flushed, exit 0.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections import deque

import torch

from ...checkpoint import load_checkpoint
from ...config import NORMAL_CLASS
from ...errors import AvarnetError
from ...runtime import autocast_dtype
from ...stream import stream_extractor
from .cameras import ERROR_CLOSED_BY, CameraHealth, CameraReader, fault_reason
from .clips import ClipRecorder, prune
from .config import ModelKey, ServeConfig, model_key
from .engine import Engine, SegmentResult
from .events import EventStore
from .lifecycle import EventLifecycle, event_payload
from .publish import build_publishers

log = logging.getLogger("avarnet")

HISTORY = 120  # segment scores kept per camera for the live sparkline
PRUNE_EVERY_S = 300.0
STOP_TIMEOUT_S = 600.0  # cameras and engines finish what is queued (bounded queues) within this
FLUSH_TIMEOUT_S = 10.0  # outputs deliver what is pending within this when stopping


class _Live:
    """One camera's current values, for the page and the state topic."""

    def __init__(self, name: str, threshold: float) -> None:
        self.name = name
        self.threshold = threshold
        self.health = CameraHealth()
        self.fault: str | None = None  # the last segment was skipped because of this
        self.label: str | None = None
        self.score: float | None = None
        self.history: deque[float] = deque(maxlen=HISTORY)
        self.recent: deque[tuple[float, float]] = deque(maxlen=600)  # (epoch s, score)
        self.segments = 0
        self.last_state: tuple | None = None

    @property
    def healthy(self) -> bool:
        return self.health.healthy and self.fault is None

    @property
    def error(self) -> str | None:
        return self.fault or self.health.error


class Server:
    """The running server; :func:`run_server` builds, runs and stops it.

    Takes the storage folder's lock first (a second server on the same folder is refused before
    it starts anything). Cameras feed the engines, the engines feed :meth:`_handle`, which keeps
    each camera's live values and hands events to the :class:`EventLifecycle`; every output goes
    through one :class:`Publishers`.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.store = EventStore(config.storage.db, lock=True)
        self.clips_dir = config.storage.path / "clips"
        self.publishers = build_publishers(config, self.store)
        self.live = {c.name: _Live(c.name, c.rule.threshold) for c in config.cameras}
        self.cams = {c.name: c for c in config.cameras}
        self.recorders = {
            c.name: ClipRecorder(self.clips_dir, c.clips.pre_roll, c.clips.post_roll)
            for c in config.cameras
        }
        self.events = EventLifecycle(
            self.store,
            self.publishers,
            self.recorders,
            config.storage.path / "snapshots",
            on_finished=self.prune,
        )
        self.engines: dict[ModelKey, Engine] = {}
        self.engine_of: dict[str, Engine] = {}
        self.readers: list[CameraReader] = []
        self._started = time.time()

    # ------------------------------------------------------------------ setup

    def load_models(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        for key in self.config.models():
            self.engines[key] = self._engine(key)
        for cam in self.config.cameras:
            engine = self.engines[model_key(cam)]
            unknown = [c for c in cam.ignore if c not in engine.ckpt.classes]
            if unknown:
                log.warning(
                    "camera %s: ignored classes not in the checkpoint: %s", cam.name, unknown
                )
            engine.add_camera(cam.name, cam.rule, cam.ignore)
            self.engine_of[cam.name] = engine

    def _engine(self, key: ModelKey) -> Engine:
        """One engine: a checkpoint's encoders and model in PyTorch (at its precision: bf16 under
        autocast, int8 with Wav2Vec2 quantised, as ``stream`` runs them), or an export folder's
        ONNX models in ONNX Runtime (as ``stream --runtime onnx`` runs them)."""
        common = {
            "batch_segments": self.config.batch_segments,
            "queue_segments": self.config.queue_segments,
        }
        if key.runtime == "onnx":
            from ...export import load_onnx

            bundle = load_onnx(key.checkpoint, key.precision, self.config.threads or 0, spin=False)
            context = bundle.extractor.spec.audio_context_seconds  # the export's look-back
            return Engine(
                bundle.checkpoint,
                bundle.extractor,
                self._handle,
                audio_context_seconds=context,
                **common,
            )
        device = self.config.device
        ckpt = load_checkpoint(key.checkpoint, device if device != "auto" else "cpu")
        extractor = stream_extractor(ckpt, device, key.precision)
        ckpt.model.to(extractor.video.device)
        dtype = autocast_dtype(key.precision, extractor.video.device)
        return Engine(ckpt, extractor, self._handle, autocast_dtype=dtype, **common)

    def start(self) -> None:
        self.events.recover()
        self.publishers.start()
        self.publishers.cameras(
            [
                {"name": c.name, "classes": self.classes(c.name), "threshold": c.rule.threshold}
                for c in self.config.cameras
            ]
        )
        for engine in self.engines.values():
            engine.start()
        for cam in self.config.cameras:
            engine = self.engine_of[cam.name]
            reader = CameraReader(
                cam,
                engine.ckpt.spec,
                engine,
                self.recorders[cam.name],
                self.stop_event,
                self._on_health,
            )
            self.readers.append(reader)
            reader.start()
        self.prune()

    def tick(self) -> None:
        """Once a second from the main loop: replay delayed database writes, finish events whose
        clip will not come."""
        try:
            self.store.retry()
            self.events.tick()
        except Exception:  # noqa: BLE001 - the main loop goes on
            log.exception("housekeeping failed")

    def prune(self) -> None:
        storage = self.config.storage
        try:
            prune(self.store, storage.path, storage.max_size_mb, storage.max_age_days)
        except Exception as e:  # noqa: BLE001 - retention failing must not stop anything
            log.error("retention: %s", fault_reason(e))

    def shutdown(self) -> None:
        """Stop cameras, finish queued segments and open events, flush messages."""
        self.stop_event.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for reader in self.readers:
            reader.join(timeout=max(0.1, deadline - time.monotonic()))
        for engine in self.engines.values():
            engine.close()
        for engine in self.engines.values():
            if engine.ident is not None:  # started (a failed start stops here too)
                engine.join(timeout=max(0.1, deadline - time.monotonic()))
        late = [r.camera.name for r in self.readers if r.is_alive()]
        late += [f"engine {k.label}" for k, e in self.engines.items() if e.is_alive()]
        if late:
            log.warning("stopping: gave up waiting for %s", ", ".join(late))
        self.events.shutdown()
        for name in self.live:
            self._publish_state(name, force=True)
        left = self.publishers.flush(FLUSH_TIMEOUT_S)
        if left:
            log.warning("%d event message(s) kept for the next start (not delivered yet)", left)
        self.publishers.close()
        self.store.retry()
        self.store.close()

    # ------------------------------------------------------------------ engine output

    def _on_health(self, name: str, health: CameraHealth) -> None:
        self.live[name].health = health
        self._publish_state(name)

    def _handle(self, kind: str, *args) -> None:
        if kind == "segment":
            self._segment(args[0])
        elif kind == "session_end":
            name, updates, closed_by = args
            for update in updates:
                self.events.close(name, update.event, closed_by)
            self._publish_state(name)
        elif kind == "fault":
            name, reason, updates = args
            self.live[name].fault = reason
            for update in updates:
                self.events.close(name, update.event, ERROR_CLOSED_BY)
            self._publish_state(name)

    def _segment(self, r: SegmentResult) -> None:
        live = self.live[r.camera]
        live.fault = None  # detection goes on
        t = r.wall0 + r.segment.start
        live.label, live.score = r.label, r.score
        live.history.append(round(r.score, 4))
        live.recent.append((round(t, 3), round(r.score, 4)))
        live.segments += 1
        opened = any(u.kind == "open" for u in r.updates)
        if self.events.current(r.camera) is not None:
            tracker = self.engine_of[r.camera].cameras[r.camera].tracker
            self.events.progress(r.camera, tracker.current if tracker else None, t, r.score)
        for update in r.updates:
            if update.kind == "open":
                self.events.open(r.camera, update.event, r.wall0, list(live.recent))
            else:
                self.events.close(r.camera, update.event)
        event = self.events.current(r.camera)
        top = sorted(r.probabilities.items(), key=lambda kv: -kv[1])[:3]
        self.publishers.anomaly(
            r.camera,
            {
                "camera": r.camera,
                "time": round(t, 3),
                "segment": r.segment.index,
                "start": round(r.segment.start, 3),
                "end": round(r.segment.end, 3),
                "score": round(r.score, 6),
                "label": r.label,
                "top": {c: round(p, 6) for c, p in top},
                "has_audio": r.has_audio,
                "event": event.id if event else None,
                "opened": opened,
            },
        )
        self._publish_state(r.camera)

    # ------------------------------------------------------------------ views

    def _publish_state(self, name: str, force: bool = False) -> None:
        live = self.live[name]
        event = self.events.current(name)
        key = (live.health.status, live.error, live.label, event.id if event else None)
        if not force and key == live.last_state:
            return
        live.last_state = key
        self.publishers.state(
            name,
            {
                "camera": name,
                "status": live.health.status,
                "healthy": live.healthy,
                "error": live.error,
                "label": live.label,
                "score": live.score,
                "event": event.id if event else None,
                "time": round(time.time(), 3),
            },
        )

    def camera_status(self) -> list[dict]:
        out = []
        for name, live in self.live.items():
            state = self.engine_of[name].cameras[name] if name in self.engine_of else None
            event = self.events.current(name)
            out.append(
                {
                    "name": name,
                    "status": live.health.status,
                    "healthy": live.healthy,
                    "error": live.error,
                    "attempts": live.health.attempts,
                    "sessions": live.health.sessions,
                    "label": live.label,
                    "score": live.score,
                    "threshold": live.threshold,
                    "history": list(live.history),
                    "event": event.id if event else None,
                    "segments": live.segments,
                    "dropped": state.dropped if state else 0,
                    "failed": state.failed if state else 0,
                    "gated": state.gated if state else 0,
                    "lag_s": None
                    if state is None or state.lag_s is None
                    else round(state.lag_s, 3),
                    "max_lag_s": None if state is None else round(state.max_lag_s, 3),
                }
            )
        return out

    def errors(self) -> dict[str, str]:
        """What makes the server (not one camera) unhealthy now: engines, outputs, storage."""
        out = {f"engine {k.label}": e.error for k, e in self.engines.items() if e.error}
        out.update(self.publishers.errors)
        if self.store.degraded:
            out["storage"] = self.store.degraded
        return out

    def stats(self) -> dict:
        engines = [
            {
                "checkpoint": str(k.checkpoint),
                "runtime": k.runtime,
                "precision": k.precision,
                "batches": e.batches,
                "mean_batch": round(sum(e.batch_sizes) / len(e.batch_sizes), 2)
                if e.batch_sizes
                else None,
                "faults": e.faults,
                "error": e.error,
            }
            for k, e in self.engines.items()
        ]
        errors = self.errors()
        mqtt = self.publishers.get("mqtt")
        return {
            "uptime_s": round(time.time() - self._started, 1),
            "healthy": not errors,
            "errors": errors,
            "cameras": self.camera_status(),
            "engines": engines,
            "events_opened": self.events.opened,
            "events_ended": self.events.ended,
            "publishers": self.publishers.stats(),
            "storage": self.store.stats(),
            "mqtt": None if mqtt is None else mqtt.stats(),
        }

    def threshold(self, camera: str) -> float | None:
        cam = self.cams.get(camera)
        return None if cam is None else cam.rule.threshold

    def classes(self, camera: str) -> list[str]:
        engine = self.engine_of.get(camera)
        return list(engine.ckpt.classes) if engine else []

    def all_classes(self) -> set[str]:
        """Every class of the loaded checkpoints, and ``normal``."""
        out = {NORMAL_CLASS}
        for engine in self.engines.values():
            out.update(engine.ckpt.classes)
        return out

    def review(self, event_id: str, state: str | None, label: str | None) -> dict:
        stored = self.store.get(event_id)
        if stored is None:
            raise KeyError(f"no event {event_id}")
        # A camera that left the configuration still has its events: check them against every
        # configured checkpoint's classes, never let a label through unchecked.
        classes = self.classes(stored["camera"]) or sorted(self.all_classes())
        if label and label not in classes:
            raise ValueError(f"unknown class {label!r}")
        before = event_payload(stored)
        event = self.store.review(event_id, state, label)
        if event["end_time"] is not None:
            self.publishers.event("update", before, event_payload(event))
        return event


class WebBindError(AvarnetError):
    """The review page cannot listen where the configuration says."""


def check_bind(host: str, port: int) -> None:
    """Raise :class:`WebBindError` (one line) unless ``host:port`` can be listened on now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        reason = e.strerror or str(e)
        raise WebBindError(f"web: cannot listen on {host}:{port} ({reason})") from None


def _serve_web(server: Server):
    import uvicorn

    from .web import create_app

    cfg = uvicorn.Config(
        create_app(server),
        host=server.config.web.bind,
        port=server.config.web.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    web = uvicorn.Server(cfg)
    thread = threading.Thread(target=web.run, name="avarnet-web", daemon=True)
    thread.start()
    return web, thread


def run_server(config: ServeConfig, ready=None) -> int:
    """Run until SIGTERM / SIGINT; returns the exit code (0 after a clean stop).

    Raises an :class:`AvarnetError` (one line) before any camera starts when the storage folder
    is another server's or the page cannot listen where configured."""
    check_bind(config.web.bind, config.web.port)
    server = Server(config)
    try:
        server.load_models()
    except BaseException:
        server.store.close()
        raise
    server.start()
    web, web_thread = _serve_web(server)
    stop = server.stop_event

    def on_signal(signum, frame) -> None:
        if stop.is_set():
            return
        log.info("stopping: closing open events and flushing")
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + 10
        while not web.started and web_thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not web.started:
            log.error("web: cannot listen on %s:%d", config.web.bind, config.web.port)
            stop.set()
            server.shutdown()
            return 1
        log.info(
            "serving %d camera(s); review page on http://%s:%d/",
            len(config.cameras),
            config.web.bind,
            config.web.port,
        )
        if config.web.bind not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "web: listening on %s, reachable from other machines (plain HTTP; put a TLS "
                "proxy in front)",
                config.web.bind,
            )
        if ready is not None:
            ready(server)
        last_prune = time.monotonic()
        while not stop.wait(1.0):
            server.tick()
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                server.prune()
                last_prune = time.monotonic()
        server.shutdown()
        return 0
    finally:
        web.should_exit = True
        web_thread.join(timeout=5)
        for s, h in previous.items():
            signal.signal(s, h)
