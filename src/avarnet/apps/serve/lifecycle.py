"""The life of an event, from the segment that opens it to its `end` message.

One :class:`EventLifecycle` owns every camera's events. An event is **open** while its scores
come in, **closing** once its alert rule (or the end of the source, a failure, the server
stopping) closed it and its clip is still being written, and **closed** once its clip and
snapshot are on record and the `end` message is out. The events are kept in memory as typed
:class:`Event` s and every message is built from memory, so a database write that is delayed
(a full disk: the store replays it later) never changes what is published. Scores are appended
one per segment (O(1), however long an event lasts).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from ...alerts import AlertEvent
from .clips import ClipRecorder, ClipResult, write_snapshot
from .events import EventStore
from .publisher import Publisher

log = logging.getLogger("avarnet")

CLIP_WAIT_S = 120.0  # a closed event waits at most this long (after its post-roll) for its clip
RESTART_CLOSED_BY = "restart"


class EventState(Enum):
    OPEN = "open"
    CLOSING = "closing"  # closed; its clip and snapshot are being written
    CLOSED = "closed"  # finished: on record, `end` sent


@dataclass
class Event:
    """One event as the server keeps it (times: epoch seconds; media_*: the camera's timeline)."""

    id: str
    camera: str
    label: str
    start_time: float
    media_start: float
    wall0: float  # epoch s at media time 0 of the session that made it
    peak_score: float
    peak_time: float
    score: float
    segments: int
    end_time: float | None = None
    media_end: float | None = None
    closed_by: str | None = None
    clip: str | None = None
    clip_start: float | None = None
    snapshot: str | None = None
    review: str = "unreviewed"
    corrected_label: str | None = None
    state: EventState = EventState.OPEN
    closed_at: float | None = None  # time.monotonic() when it started closing

    def row(self) -> dict:
        """The database row's fields."""
        return {
            "id": self.id,
            "camera": self.camera,
            "label": self.label,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "media_start": self.media_start,
            "media_end": self.media_end,
            "peak_score": self.peak_score,
            "peak_time": self.peak_time,
            "score": self.score,
            "segments": self.segments,
            "review": self.review,
            "clip": self.clip,
            "snapshot": self.snapshot,
            "closed_by": self.closed_by,
            "corrected_label": self.corrected_label,
            "clip_start": self.clip_start,
        }

    def payload(self) -> dict:
        return event_payload(self.row())

    def take(self, ev: AlertEvent, score: float | None = None) -> None:
        """Label, peak and length from the alert tracker's event."""
        self.label, self.peak_score = ev.label, ev.peak_score
        self.peak_time, self.segments = self.wall0 + ev.peak_time, ev.segments
        if score is not None:
            self.score = score


def event_payload(e: dict) -> dict:
    """The event as MQTT and webhooks carry it (field names as Frigate's where they match)."""
    return {
        "id": e["id"],
        "camera": e["camera"],
        "label": e.get("corrected_label") or e["label"],
        "sub_label": None,
        "score": e["score"],
        "top_score": e["peak_score"],
        "start_time": e["start_time"],
        "end_time": e["end_time"],
        "peak_time": e["peak_time"],
        "segments": e["segments"],
        "false_positive": e.get("review") == "false",
        "review": e.get("review", "unreviewed"),
        "has_clip": bool(e.get("clip")),
        "has_snapshot": bool(e.get("snapshot")),
        "closed_by": e.get("closed_by"),
    }


class EventLifecycle:
    """Opens, updates, closes and finishes the events of every camera.

    Called from the engine thread (open, progress, close), camera threads (clip results), the
    main loop (:meth:`tick`) and the web (:meth:`current`); ``publishers`` receive ``new``,
    ``update`` and ``end``; ``on_finished`` runs after each event is finished (retention).
    """

    def __init__(
        self,
        store: EventStore,
        publishers: Publisher,
        recorders: dict[str, ClipRecorder],
        snaps_dir: Path,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.publishers = publishers
        self.recorders = recorders
        self.snaps_dir = snaps_dir
        self.on_finished = on_finished or (lambda: None)
        self.opened = 0
        self.ended = 0
        self._open: dict[str, Event] = {}  # camera -> its open event
        self._closing: dict[str, Event] = {}  # id -> event waiting for its clip
        self._clips: dict[str, ClipResult] = {}  # id -> clip that came before the close
        self._lock = threading.RLock()
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avarnet-finish")

    def current(self, camera: str) -> Event | None:
        """The camera's open event."""
        return self._open.get(camera)

    # -- engine thread

    def open(
        self, camera: str, ev: AlertEvent, wall0: float, recent: list[tuple[float, float]]
    ) -> Event:
        """A new event; ``recent`` are the camera's last (epoch s, score), the pre-roll's kept."""
        start = wall0 + ev.start
        pre = self.recorders[camera].pre_roll if camera in self.recorders else 0.0
        scores = [(t, s) for t, s in recent if t >= start - pre]
        event = Event(
            id=f"{start:.6f}-{secrets.token_hex(3)}",
            camera=camera,
            label=ev.label,
            start_time=start,
            media_start=ev.start,
            wall0=wall0,
            peak_score=ev.peak_score,
            peak_time=wall0 + ev.peak_time,
            score=scores[-1][1] if scores else ev.peak_score,
            segments=ev.segments,
        )
        self.store.insert(event.row())
        for t, s in scores:
            self.store.append_score(event.id, t, s)
        with self._lock:
            self._open[camera] = event
            self.opened += 1
        log.info("camera %s: event %s opened (%s, %.2f)", camera, event.id, ev.label, ev.peak_score)
        self.publishers.event("new", None, event.payload(), ev.record())
        if camera in self.recorders:
            self.recorders[camera].start(event.id, ev.start, self.clip_done)
        return event

    def progress(self, camera: str, ev: AlertEvent | None, t: float, score: float) -> None:
        """One more segment of the camera's open event (``ev``: its tracker's open event)."""
        event = self._open.get(camera)
        if event is None:
            return
        self.store.append_score(event.id, t, score)
        if ev is None:
            return
        before = event.payload()
        event.take(ev, score)
        fields = {k: event.row()[k] for k in ("label", "peak_score", "peak_time", "score")}
        self.store.update(event.id, segments=event.segments, **fields)
        if event.label != before["label"]:
            self.publishers.event("update", before, event.payload())

    def close(self, camera: str, ev: AlertEvent, closed_by: str | None = None) -> None:
        """The camera's open event closed (by its scores, the source ending, a failure, a stop)."""
        with self._lock:
            event = self._open.pop(camera, None)
            if event is None:
                return
            event.take(ev)
            event.end_time, event.media_end = event.wall0 + ev.end, ev.end
            event.closed_by = closed_by or ev.closed_by
            event.state, event.closed_at = EventState.CLOSING, time.monotonic()
            self._closing[event.id] = event
            clip = self._clips.pop(event.id, None)
        fields = ("end_time", "media_end", "closed_by", "label", "peak_score", "peak_time")
        self.store.update(event.id, segments=event.segments, **{k: event.row()[k] for k in fields})
        if camera in self.recorders:
            self.recorders[camera].stop(event.id, ev.end)
        if clip is not None:
            self._finish_later(event, clip)

    # -- camera threads

    def clip_done(self, result: ClipResult) -> None:
        with self._lock:
            event = self._closing.get(result.event_id)
            if event is None:  # the clip ended before the event (it reached its longest)
                if any(e.id == result.event_id for e in self._open.values()):
                    self._clips[result.event_id] = result
                return
        self._finish_later(event, result)

    # -- main loop

    def tick(self) -> None:
        """Finish events whose clip did not come within CLIP_WAIT_S after their post-roll."""
        now = time.monotonic()
        with self._lock:
            late = [
                e
                for e in self._closing.values()
                if now - (e.closed_at or now) > CLIP_WAIT_S + self._post_roll(e.camera)
            ]
        for event in late:
            self._finish_later(event, ClipResult(event.id, None, 0.0, 0.0, "no clip came"))

    def shutdown(self) -> None:
        """Finish what is closing (without waiting for clips that will not come)."""
        with self._lock:
            left = list(self._closing.values())
        for event in left:
            self._finish_later(event, ClipResult(event.id, None, 0.0, 0.0, "the server stopped"))
        self._finisher.shutdown(wait=True)

    def recover(self) -> None:
        """Events left open by a crash are closed now (their end: the last score recorded)."""
        for e in self.store.open_events():
            end = e["scores"][-1][0] + 1.0 if e["scores"] else e["start_time"]
            before = event_payload(e)
            self.store.update(e["id"], end_time=end, closed_by=RESTART_CLOSED_BY)
            after = dict(before, end_time=end, closed_by=RESTART_CLOSED_BY)
            self.publishers.event("end", before, after)

    # -- finishing

    def _post_roll(self, camera: str) -> float:
        rec = self.recorders.get(camera)
        return rec.post_roll if rec is not None else 0.0

    def _finish_later(self, event: Event, clip: ClipResult) -> None:
        with self._lock:
            if self._closing.pop(event.id, None) is None:
                return  # already finished
        try:
            self._finisher.submit(self._finish, event, clip)
        except RuntimeError:  # the worker is gone (stopping): finish here
            self._finish(event, clip)

    def _finish(self, event: Event, clip: ClipResult) -> None:
        """Snapshot at the peak, clip on record, `end` message."""
        try:
            before = event.payload()
            if clip.path is not None:
                event.clip, event.clip_start = clip.path.name, event.wall0 + clip.start
                snap = self.snaps_dir / f"{event.id}.jpg"
                if write_snapshot(clip.path, event.peak_time - event.clip_start, snap):
                    event.snapshot = snap.name
            else:
                log.warning("event %s: no clip (%s)", event.id, clip.error)
            self.store.update(
                event.id, clip=event.clip, clip_start=event.clip_start, snapshot=event.snapshot
            )
            stored = self.store.get(event.id)  # a review made while it was open
            if stored is not None:
                event.review = stored["review"]
                event.corrected_label = stored["corrected_label"]
            event.state = EventState.CLOSED
            with self._lock:
                self.ended += 1
            self.publishers.event("end", before, replace(event).payload())
            self.on_finished()
        except Exception:  # noqa: BLE001 - the finisher goes on with the next event
            log.exception("event %s: finishing failed", event.id)
