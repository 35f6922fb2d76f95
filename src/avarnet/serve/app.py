"""`avarnet serve`: cameras -> shared encoders -> events (SQLite, clips, snapshots) -> MQTT,
webhook and the review page, in one process.

Threads: one decoder per camera (:mod:`.cameras`), one engine per checkpoint (:mod:`.engine`),
one worker finishing events (snapshot, database, messages), paho's network loop and the outbox
(:mod:`.mqtt`), and uvicorn serving the page (:mod:`.web`). SIGTERM or Ctrl-C: the cameras stop,
queued segments are processed, open events close with their clips, messages are flushed, exit 0.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..alerts import AlertEvent, WebhookPoster
from ..checkpoint import load_checkpoint
from ..features import Extractor
from .cameras import CameraHealth, CameraReader
from .clips import ClipRecorder, ClipResult, prune, write_snapshot
from .config import ServeConfig
from .engine import Engine, SegmentResult
from .events import EventStore

log = logging.getLogger("avarnet")

HISTORY = 120  # segment scores kept per camera for the live sparkline
PRUNE_EVERY_S = 300.0
STOP_TIMEOUT_S = 600.0  # cameras and engines finish what is queued (bounded queues) within this


class _Live:
    """One camera's current values, for the page and the state topic."""

    def __init__(self, name: str, threshold: float) -> None:
        self.name = name
        self.threshold = threshold
        self.health = CameraHealth()
        self.label: str | None = None
        self.score: float | None = None
        self.history: deque[float] = deque(maxlen=HISTORY)
        self.recent: deque[tuple[float, float]] = deque(maxlen=600)  # (epoch s, score)
        self.event: dict | None = None  # open event (DB row values kept in memory)
        self.segments = 0
        self.last_state: tuple | None = None


class Server:
    """The running server; :func:`run_server` builds, runs and stops it."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.store = EventStore(config.storage.db)
        self.clips_dir = config.storage.path / "clips"
        self.snaps_dir = config.storage.path / "snapshots"
        self.mqtt = None
        if config.mqtt is not None:
            from .mqtt import MqttPublisher

            self.mqtt = MqttPublisher(config.mqtt, self.store)
        self.webhook = WebhookPoster(config.webhook) if config.webhook else None
        self.finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avarnet-finish")
        self.live = {c.name: _Live(c.name, c.rule.threshold) for c in config.cameras}
        self.cams = {c.name: c for c in config.cameras}
        self._lock = threading.RLock()
        self._pending: dict[
            str, dict
        ] = {}  # event id -> {"closed": bool, "clip": ClipResult | None}
        self.engines: dict[Path, Engine] = {}
        self.engine_of: dict[str, Engine] = {}
        self.recorders: dict[str, ClipRecorder] = {}
        self.readers: list[CameraReader] = []
        self.events_opened = 0
        self.events_ended = 0
        self._started = time.time()

    # ------------------------------------------------------------------ setup

    def load_models(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        for path in self.config.checkpoints():
            ckpt = load_checkpoint(
                path, self.config.device if self.config.device != "auto" else "cpu"
            )
            extractor = Extractor.from_spec(ckpt.spec, self.config.device, ckpt.encoder_state)
            ckpt.model.to(extractor.video.device)
            self.engines[path] = Engine(
                ckpt,
                extractor,
                self._handle,
                batch_segments=self.config.batch_segments,
                queue_segments=self.config.queue_segments,
            )
        for cam in self.config.cameras:
            engine = self.engines[cam.checkpoint]
            unknown = [c for c in cam.ignore if c not in engine.ckpt.classes]
            if unknown:
                log.warning(
                    "camera %s: ignored classes not in the checkpoint: %s", cam.name, unknown
                )
            engine.add_camera(cam.name, cam.rule, cam.ignore)
            self.engine_of[cam.name] = engine

    def recover(self) -> None:
        """Events left open by a crash are closed now (their end: the last score recorded)."""
        for e in self.store.open_events():
            end = e["scores"][-1][0] + 1.0 if e["scores"] else e["start_time"]
            self.store.update(e["id"], end_time=end, closed_by="restart")
            row = self.store.get(e["id"])
            if self.mqtt is not None:
                self.mqtt.event("end", self._payload(e), self._payload(row))

    def start(self) -> None:
        self.recover()
        if self.mqtt is not None:
            self.mqtt.start()
        for engine in self.engines.values():
            engine.start()
        for cam in self.config.cameras:
            engine = self.engine_of[cam.name]
            rec = ClipRecorder(self.clips_dir, cam.clips.pre_roll, cam.clips.post_roll)
            self.recorders[cam.name] = rec
            reader = CameraReader(
                cam, engine.ckpt.spec, engine, rec, self.stop_event, self._on_health
            )
            self.readers.append(reader)
            reader.start()
        prune(
            self.store,
            self.config.storage.path,
            self.config.storage.max_size_mb,
            self.config.storage.max_age_days,
        )

    def shutdown(self) -> None:
        """Stop cameras, finish queued segments and open events, flush messages."""
        self.stop_event.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for reader in self.readers:
            reader.join(timeout=max(0.1, deadline - time.monotonic()))
        for engine in self.engines.values():
            engine.close()
        for engine in self.engines.values():
            engine.join(timeout=max(0.1, deadline - time.monotonic()))
        late = [r.camera.name for r in self.readers if r.is_alive()]
        late += [f"engine {p.name}" for p, e in self.engines.items() if e.is_alive()]
        if late:
            log.warning("stopping: gave up waiting for %s", ", ".join(late))
        self.finisher.shutdown(wait=True)
        for name in self.live:
            self._publish_state(name, force=True)
        if self.mqtt is not None:
            left = self.mqtt.flush()
            if left:
                log.warning(
                    "mqtt: %d event message(s) kept for the next start (broker unreachable)", left
                )
            self.mqtt.close()
        if self.webhook is not None:
            self.webhook.close()
        self.store.close()

    # ------------------------------------------------------------------ engine output

    def _on_health(self, name: str, health: CameraHealth) -> None:
        self.live[name].health = health
        self._publish_state(name)

    def _handle(self, kind: str, *args) -> None:
        if kind == "segment":
            self._segment(args[0])
        elif kind == "session_end":
            name, updates, stopped = args
            for update in updates:
                wall0 = self.live[name].event["wall0"] if self.live[name].event else 0.0
                self._close(
                    name, update.event, wall0, "shutdown" if stopped else update.event.closed_by
                )

    def _segment(self, r: SegmentResult) -> None:
        live = self.live[r.camera]
        t = r.wall0 + r.segment.start
        live.label, live.score = r.label, r.score
        live.history.append(round(r.score, 4))
        live.recent.append((round(t, 3), round(r.score, 4)))
        live.segments += 1
        if live.event is not None:
            ev = live.event
            ev["scores"].append([round(t, 3), round(r.score, 4)])
        for update in r.updates:
            if update.kind == "open":
                self._open(r.camera, update.event, r.wall0)
            else:
                self._close(r.camera, update.event, r.wall0)
        if live.event is not None and not any(u.kind == "open" for u in r.updates):
            self._progress(r.camera, r, live.event)
        if self.mqtt is not None:
            top = sorted(r.probabilities.items(), key=lambda kv: -kv[1])[:3]
            self.mqtt.anomaly(
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
                    "event": live.event["id"] if live.event else None,
                },
            )
        self._publish_state(r.camera)

    def _open(self, camera: str, ev: AlertEvent, wall0: float) -> None:
        live = self.live[camera]
        start = wall0 + ev.start
        event_id = f"{start:.6f}-{secrets.token_hex(3)}"
        pre = self.cams[camera].clips.pre_roll
        scores = [[t, s] for t, s in live.recent if t >= start - pre]
        row = {
            "id": event_id,
            "camera": camera,
            "label": ev.label,
            "start_time": start,
            "end_time": None,
            "media_start": ev.start,
            "media_end": None,
            "peak_score": ev.peak_score,
            "peak_time": wall0 + ev.peak_time,
            "score": scores[-1][1] if scores else ev.peak_score,
            "segments": ev.segments,
            "scores": scores,
            "review": "unreviewed",
            "clip": None,
            "snapshot": None,
            "closed_by": None,
            "corrected_label": None,
            "clip_pruned": False,
            "clip_start": None,
        }
        self.store.insert(row)
        live.event = dict(row, wall0=wall0, final_label=ev.label)
        with self._lock:
            self._pending[event_id] = {"closed": False, "clip": None}
            self.events_opened += 1
        log.info("camera %s: event %s opened (%s, %.2f)", camera, event_id, ev.label, ev.peak_score)
        if self.mqtt is not None:
            self.mqtt.event("new", None, self._payload(self.store.get(event_id)))
        if self.webhook is not None:
            self.webhook.post(dict(ev.record(), camera=camera, event_id=event_id, start_time=start))
        self.recorders[camera].start(
            event_id, ev.start, lambda res, c=camera: self._clip_done(c, res)
        )

    def _progress(self, camera: str, r: SegmentResult, row: dict) -> None:
        ev = self.engine_of[camera].cameras[camera].tracker.current
        if ev is None:
            return
        before = self._payload(self.store.get(row["id"]))
        fields = {
            "label": ev.label,
            "peak_score": ev.peak_score,
            "peak_time": r.wall0 + ev.peak_time,
            "score": r.score,
            "segments": ev.segments,
            "scores": row["scores"],
        }
        self.store.update(row["id"], **fields)
        if ev.label != row["label"] and self.mqtt is not None:
            self.mqtt.event("update", before, self._payload(self.store.get(row["id"])))
        row.update(fields)

    def _close(
        self, camera: str, ev: AlertEvent, wall0: float, closed_by: str | None = None
    ) -> None:
        live = self.live[camera]
        row = live.event
        if row is None:
            return
        live.event = None
        closed_by = closed_by or ev.closed_by
        self.store.update(
            row["id"],
            end_time=wall0 + ev.end,
            media_end=ev.end,
            closed_by=closed_by,
            label=ev.label,
            peak_score=ev.peak_score,
            peak_time=wall0 + ev.peak_time,
            segments=ev.segments,
            scores=row["scores"],
        )
        self.recorders[camera].stop(row["id"], ev.end)
        self._advance(row["id"], closed=True)

    def _clip_done(self, camera: str, result: ClipResult) -> None:
        self._advance(result.event_id, clip=result)

    def _advance(self, event_id: str, closed: bool = False, clip: ClipResult | None = None) -> None:
        with self._lock:
            p = self._pending.get(event_id)
            if p is None:
                return
            p["closed"] = p["closed"] or closed
            p["clip"] = p["clip"] or clip
            if not (p["closed"] and p["clip"] is not None):
                return
            del self._pending[event_id]
        try:
            self.finisher.submit(self._finish_event, event_id, p["clip"])
        except RuntimeError:  # the worker is gone (stopping): finish here
            self._finish_event(event_id, p["clip"])

    def _finish_event(self, event_id: str, clip: ClipResult) -> None:
        """Snapshot at the peak, clip on record, `end` message and webhook record."""
        try:
            row = self.store.get(event_id)
            if row is None:
                return
            before = self._payload(row)
            fields: dict = {}
            if clip.path is not None:
                wall0 = row["start_time"] - row["media_start"]
                fields["clip"] = clip.path.name
                fields["clip_start"] = wall0 + clip.start
                snap = self.snaps_dir / f"{event_id}.jpg"
                if write_snapshot(clip.path, row["peak_time"] - (wall0 + clip.start), snap):
                    fields["snapshot"] = snap.name
            else:
                log.warning("event %s: no clip (%s)", event_id, clip.error)
            # file names are stored relative to the storage folder's subfolders
            if "clip" in fields:
                fields["clip"] = f"{fields['clip']}"
            self.store.update(event_id, **fields)
            row = self.store.get(event_id)
            with self._lock:
                self.events_ended += 1
            if self.mqtt is not None:
                self.mqtt.event("end", before, self._payload(row))
            if self.webhook is not None:
                self.webhook.post({"type": "event", "state": "closed", **self._payload(row)})
            prune(
                self.store,
                self.config.storage.path,
                self.config.storage.max_size_mb,
                self.config.storage.max_age_days,
            )
        except Exception:
            log.exception("event %s: finishing failed", event_id)

    # ------------------------------------------------------------------ views

    @staticmethod
    def _payload(e: dict) -> dict:
        """The event as MQTT and webhooks carry it (field names as Frigate's where they match)."""
        return {
            "id": e["id"],
            "camera": e["camera"],
            "label": e["corrected_label"] or e["label"],
            "sub_label": None,
            "score": e["score"],
            "top_score": e["peak_score"],
            "start_time": e["start_time"],
            "end_time": e["end_time"],
            "peak_time": e["peak_time"],
            "segments": e["segments"],
            "false_positive": e["review"] == "false",
            "review": e["review"],
            "has_clip": bool(e["clip"]),
            "has_snapshot": bool(e["snapshot"]),
            "closed_by": e["closed_by"],
        }

    def _publish_state(self, name: str, force: bool = False) -> None:
        if self.mqtt is None:
            return
        live = self.live[name]
        status = live.health.status
        key = (status, live.label, live.event["id"] if live.event else None)
        if not force and key == live.last_state:
            return
        live.last_state = key
        self.mqtt.state(
            name,
            {
                "camera": name,
                "status": status,
                "error": live.health.error,
                "label": live.label,
                "score": live.score,
                "event": live.event["id"] if live.event else None,
                "time": round(time.time(), 3),
            },
        )

    def camera_status(self) -> list[dict]:
        out = []
        for name, live in self.live.items():
            state = self.engine_of[name].cameras[name] if name in self.engine_of else None
            out.append(
                {
                    "name": name,
                    "status": live.health.status,
                    "error": live.health.error,
                    "attempts": live.health.attempts,
                    "sessions": live.health.sessions,
                    "label": live.label,
                    "score": live.score,
                    "threshold": live.threshold,
                    "history": list(live.history),
                    "event": live.event["id"] if live.event else None,
                    "segments": live.segments,
                    "dropped": state.dropped if state else 0,
                    "lag_s": None
                    if state is None or state.lag_s is None
                    else round(state.lag_s, 3),
                    "max_lag_s": None if state is None else round(state.max_lag_s, 3),
                }
            )
        return out

    def stats(self) -> dict:
        engines = [
            {
                "checkpoint": str(p),
                "batches": e.batches,
                "mean_batch": round(sum(e.batch_sizes) / len(e.batch_sizes), 2)
                if e.batch_sizes
                else None,
            }
            for p, e in self.engines.items()
        ]
        return {
            "uptime_s": round(time.time() - self._started, 1),
            "cameras": self.camera_status(),
            "engines": engines,
            "events_opened": self.events_opened,
            "events_ended": self.events_ended,
            "mqtt": None
            if self.mqtt is None
            else {
                "connected": self.mqtt.connected.is_set(),
                "published": self.mqtt.published,
                "outbox": self.store.outbox_size(),
                "last_error": self.mqtt.last_error,
            },
        }

    def threshold(self, camera: str) -> float | None:
        cam = self.cams.get(camera)
        return None if cam is None else cam.rule.threshold

    def classes(self, camera: str) -> list[str]:
        engine = self.engine_of.get(camera)
        return list(engine.ckpt.classes) if engine else []

    def review(self, event_id: str, state: str | None, label: str | None) -> dict:
        if self.store.get(event_id) is None:
            raise KeyError(f"no event {event_id}")
        if (
            label is not None
            and label
            and self.classes(self.store.get(event_id)["camera"])
            and label not in self.classes(self.store.get(event_id)["camera"])
        ):
            raise ValueError(f"unknown class {label!r}")
        before = self._payload(self.store.get(event_id))
        event = self.store.review(event_id, state, label)
        if self.mqtt is not None and event["end_time"] is not None:
            self.mqtt.event("update", before, self._payload(event))
        return event


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
    """Run until SIGTERM / SIGINT; returns the exit code (0 after a clean stop)."""
    server = Server(config)
    server.load_models()
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
            if time.monotonic() - last_prune > PRUNE_EVERY_S:
                prune(
                    server.store,
                    config.storage.path,
                    config.storage.max_size_mb,
                    config.storage.max_age_days,
                )
                last_prune = time.monotonic()
        server.shutdown()
        return 0
    finally:
        web.should_exit = True
        web_thread.join(timeout=5)
        for s, h in previous.items():
            signal.signal(s, h)


def export_reviewed(config: ServeConfig, out: Path) -> dict:
    """Reviewed events' clips as a class-per-folder dataset (``extract`` / ``train`` read it).

    True alarms go under their (corrected) class, false alarms under ``normal``. Returns counts
    per class; events without a clip on disk are counted as skipped.
    """
    from ..config import NORMAL_CLASS

    store = EventStore(config.storage.db)
    counts: dict[str, int] = {}
    skipped = 0
    try:
        for review in ("true", "false"):
            for e in store.list(review=review, limit=10**9, oldest_first=True):
                clip = config.storage.path / "clips" / e["clip"] if e["clip"] else None
                if clip is None or not clip.is_file():
                    skipped += 1
                    continue
                label = NORMAL_CLASS if review == "false" else e["final_label"]
                folder = out / label
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"{e['camera']}-{e['id']}.mp4"
                tmp = folder / f".tmp-{target.name}"
                shutil.copyfile(clip, tmp)
                tmp.replace(target)
                counts[label] = counts.get(label, 0) + 1
    finally:
        store.close()
    return {"classes": counts, "skipped": skipped, "out": str(out)}
