"""Event clips cut from a ring buffer of the source's compressed packets (remux, no re-encode),
JPEG snapshots at an event's peak, and retention of both.

The camera's decoder thread owns a :class:`ClipRecorder`: every demuxed packet goes into the ring
buffer (a copy of its bytes and timestamps, so it outlives the demuxer) and into each recording in
progress. Other threads only queue requests (:meth:`ClipRecorder.start` / :meth:`ClipRecorder.stop`);
the decoder thread carries them out, so PyAV objects never cross threads.

A clip is recorded as fragmented MP4 into a temporary file of the clips folder
(``.tmp-<event id>--<random>.mp4``, created with ``O_EXCL``) and renamed to ``<event id>.mp4``
when it ends. Fragments are written at least every :data:`FRAGMENT_S` seconds, so a killed
server leaves a temporary file that plays up to its last fragment: :func:`recover_partial_clips`
(run by :func:`prune`) gives it to its event, or deletes it when no event can use it.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ... import io

log = logging.getLogger("avarnet")

RING_EXTRA_S = (
    60.0  # ring holds pre-roll + this much (segments wait in queues before an event opens)
)
JPEG_QUALITY = 85
MAX_CLIP_S = 600.0  # an event longer than this keeps its first MAX_CLIP_S seconds of clip
FRAGMENT_S = 1.0  # a fragment (playable after a crash) at every keyframe and at least this often
FRAGMENTED_MP4 = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": str(int(FRAGMENT_S * 1_000_000)),
    "flush_packets": "1",  # each fragment reaches the file when it is complete
}
TEMP_PREFIX = io.TEMP_PREFIX
TEMP_SEPARATOR = "--"  # .tmp-<event id>--<random>.mp4 (event ids hold no "--")
STALE_TEMP_S = 2 * MAX_CLIP_S  # a recording in progress writes far more often than this
CLOSED_BY_RESTART = "restart"  # closed_by of the events an earlier, killed server left open
START_TAG = "comment"  # MP4 tag holding the clip's start on the camera's timeline
START_RE = re.compile(r"^avarnet clip start=(-?[0-9]+(?:\.[0-9]+)?)$")


@dataclass(frozen=True)
class StoredPacket:
    """A demuxed packet detached from its container."""

    data: bytes
    pts: int | None
    dts: int | None
    duration: int
    time_base: Fraction
    stream: int  # index in the source container
    keyframe: bool
    time: float  # s, source timestamp (pts, else dts) in seconds
    video: bool

    @classmethod
    def of(cls, packet, video: bool) -> StoredPacket | None:
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.size == 0 or packet.time_base is None:
            return None
        return cls(
            bytes(packet),
            packet.pts,
            packet.dts,
            packet.duration or 0,
            packet.time_base,
            packet.stream.index,
            bool(packet.is_keyframe),
            float(ts * packet.time_base),
            video,
        )


@dataclass
class ClipResult:
    """What a finished recording produced; ``path`` is None when nothing could be written."""

    event_id: str
    path: Path | None
    start: float  # s on the camera's timeline of the clip's first video packet
    duration: float
    error: str | None = None


class _Recording:
    def __init__(
        self,
        event_id: str,
        path: Path,
        streams: dict,
        start_raw: float,
        on_done: Callable[[ClipResult], None],
        origin: float,
    ) -> None:
        self.event_id = event_id
        self.path = path
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=f"{TEMP_PREFIX}{event_id}{TEMP_SEPARATOR}", suffix=path.suffix
        )
        os.close(fd)
        self.tmp = Path(name)
        self.start_raw = start_raw
        self.stop_raw: float | None = None
        self.on_done = on_done
        self.origin = origin
        try:
            self.out = av.open(name, "w", format="mp4", options=FRAGMENTED_MP4)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        self.map: dict[int, object] = {}
        for index, stream in streams.items():
            try:
                self.map[index] = self.out.add_stream_from_template(stream)
            except (ValueError, av.error.FFmpegError) as e:
                log.warning(
                    "clip %s: stream %d (%s) cannot go into MP4: %s",
                    event_id,
                    index,
                    stream.codec_context.name,
                    e,
                )
        self.base: float | None = None  # s: source time of the first muxed video packet
        self.last_raw = start_raw
        self.error: str | None = None
        self.last_dts: dict[int, int] = {}

    def add(self, p: StoredPacket) -> None:
        if self.error is not None or p.stream not in self.map:
            return
        if self.base is None:
            if not (p.video and p.keyframe):
                return  # a clip starts on a video keyframe
            self.base = (p.dts if p.dts is not None else p.pts) * p.time_base
            # written with the header (at the first packet): a partial clip still says where it starts
            self.out.metadata[START_TAG] = (
                f"avarnet clip start={float(self.base) - self.origin:.6f}"
            )
        off = int(round(self.base / p.time_base))
        dts = (p.dts if p.dts is not None else p.pts) - off
        if dts < 0 or dts <= self.last_dts.get(p.stream, -1):
            return  # before the clip's start (audio) or out of order
        self.last_dts[p.stream] = dts
        out = av.Packet(p.data)
        out.pts = None if p.pts is None else p.pts - off
        out.dts = dts
        out.duration = p.duration
        out.time_base = p.time_base
        out.is_keyframe = p.keyframe
        out.stream = self.map[p.stream]
        try:
            self.out.mux(out)
        except av.error.FFmpegError as e:
            self.error = str(e)
        if p.video:
            self.last_raw = p.time

    def finish(self) -> ClipResult:
        try:
            self.out.close()
        except av.error.FFmpegError as e:
            self.error = self.error or str(e)
        ok = self.error is None and self.base is not None and self.tmp.is_file()
        if ok:
            try:
                os.chmod(self.tmp, io.FILE_MODE & ~io.current_umask())
                os.replace(self.tmp, self.path)
            except OSError as e:
                ok, self.error = False, f"cannot keep the clip: {e}"
        if not ok:
            self.tmp.unlink(missing_ok=True)
        start = float(self.base) - self.origin if self.base is not None else 0.0
        result = ClipResult(
            self.event_id,
            self.path if ok else None,
            start,
            max(0.0, self.last_raw - float(self.base or 0.0)),
            None if ok else (self.error or "no video keyframe before the end"),
        )
        return result


class ClipRecorder:
    """Ring buffer of one camera's packets and the clips being recorded from it.

    Times given to :meth:`start` / :meth:`stop` are seconds on the camera's timeline (media time of
    the current session, 0 at its first video frame); :meth:`set_origin` maps them to source time.
    """

    def __init__(self, folder: Path, pre_roll: float, post_roll: float) -> None:
        self.folder = folder
        self.pre_roll = pre_roll
        self.post_roll = post_roll
        self.ring: deque[StoredPacket] = deque()
        self.ring_seconds = pre_roll + RING_EXTRA_S
        self._streams: dict = {}
        self._video_index: int | None = None
        self._origin: float | None = None
        self._requests: deque = deque()
        self._active: dict[str, _Recording] = {}
        self._lock = threading.Lock()

    # -- any thread

    def start(
        self, event_id: str, media_start: float, on_done: Callable[[ClipResult], None]
    ) -> None:
        """Record a clip from ``pre_roll`` before ``media_start``; ``on_done`` gets the result."""
        with self._lock:
            self._requests.append(("start", event_id, media_start - self.pre_roll, on_done))

    def stop(self, event_id: str, media_end: float) -> None:
        """End that clip ``post_roll`` after ``media_end``."""
        with self._lock:
            self._requests.append(("stop", event_id, media_end + self.post_roll, None))

    # -- decoder thread

    def begin_session(self, streams: dict, video_index: int) -> None:
        """A new connection (or loop of a file): ``streams`` maps source index -> PyAV stream."""
        self.ring.clear()
        self._streams, self._video_index, self._origin = streams, video_index, None

    def set_origin(self, source_time: float) -> None:
        self._origin = source_time

    def add(self, packet) -> None:
        video = packet.stream.index == self._video_index
        p = StoredPacket.of(packet, video)
        if p is None:
            return
        self.ring.append(p)
        while self.ring and p.time - self.ring[0].time > self.ring_seconds:
            self.ring.popleft()
        self.service()
        for rec in list(self._active.values()):
            too_long = rec.base is not None and p.time - float(rec.base) > MAX_CLIP_S
            if video and ((rec.stop_raw is not None and p.time > rec.stop_raw) or too_long):
                self._finish(rec)
            else:
                rec.add(p)

    def service(self) -> None:
        """Carry out queued requests (needs the origin: nothing happens before the first frame)."""
        if self._origin is None:
            return
        while True:
            with self._lock:
                if not self._requests:
                    return
                kind, event_id, media_t, on_done = self._requests.popleft()
            raw = self._origin + media_t
            if kind == "start":
                self._begin(event_id, raw, on_done)
            elif event_id in self._active:
                self._active[event_id].stop_raw = raw

    def _begin(self, event_id: str, start_raw: float, on_done) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            rec = _Recording(
                event_id,
                self.folder / f"{event_id}.mp4",
                self._streams,
                start_raw,
                on_done,
                self._origin or 0.0,
            )
        except (OSError, av.error.FFmpegError) as e:
            on_done(ClipResult(event_id, None, 0.0, 0.0, f"cannot create the clip: {e}"))
            return
        keys = [
            i for i, p in enumerate(self.ring) if p.video and p.keyframe and p.time <= start_raw
        ]
        first = (
            keys[-1]
            if keys
            else next(
                (i for i, p in enumerate(self.ring) if p.video and p.keyframe), len(self.ring)
            )
        )
        for p in list(self.ring)[first:]:
            rec.add(p)
        self._active[event_id] = rec

    def _finish(self, rec: _Recording) -> None:
        self._active.pop(rec.event_id, None)
        result = rec.finish()
        try:
            rec.on_done(result)
        except Exception:  # a failing callback must not stop the camera
            log.exception("clip %s: completion failed", rec.event_id)

    def end_session(self) -> None:
        """Source gone: carry out what is queued, then finish every clip with what it has."""
        self.service()
        with self._lock:  # starts that never got an origin: nothing to record
            left = list(self._requests)
            self._requests.clear()
        for kind, event_id, _, on_done in left:
            if kind == "start":
                on_done(
                    ClipResult(event_id, None, 0.0, 0.0, "the source ended before the clip began")
                )
        for rec in list(self._active.values()):
            self._finish(rec)
        self.ring.clear()


def write_snapshot(
    clip: Path | None, offset: float, out: Path, fallback: np.ndarray | None = None
) -> bool:
    """JPEG of the clip's frame at ``offset`` s (or ``fallback`` RGB frame); True when written."""
    from PIL import Image

    image = None
    if clip is not None and clip.is_file():
        try:
            with av.open(str(clip)) as c:
                stream = c.streams.video[0]
                best = None
                for frame in c.decode(stream):
                    t = frame.time or 0.0
                    best = frame
                    if t >= offset:
                        break
                if best is not None:
                    image = best.to_image()
        except av.error.FFmpegError as e:
            log.warning("snapshot from %s failed: %s", clip, e)
    if image is None and fallback is not None:
        image = Image.fromarray(np.ascontiguousarray(fallback))
    if image is None:
        return False
    rgb = image.convert("RGB")
    try:
        io.atomic_write(out, lambda tmp: rgb.save(tmp, format="JPEG", quality=JPEG_QUALITY))
    except OSError as e:  # a full disk costs the snapshot, never the event's end
        log.warning("snapshot %s could not be written: %s", out.name, e)
        return False
    return True


def _temp_event(name: str) -> str | None:
    """The event id in a temporary clip's name, or None."""
    if not (name.startswith(TEMP_PREFIX) and TEMP_SEPARATOR in name):
        return None
    event_id = name[len(TEMP_PREFIX) :].rsplit(TEMP_SEPARATOR, 1)[0]
    return event_id if event_id and "/" not in event_id and not event_id.startswith(".") else None


def partial_clip_start(path: Path) -> float | None:
    """The start (s on the camera's timeline) of a clip that holds at least one decodable video
    frame, or None when it has none (0.0 when it does not say where it starts)."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return None
            match = START_RE.match(c.metadata.get(START_TAG, ""))
            for _ in c.decode(c.streams.video[0]):
                return float(match.group(1)) if match else 0.0
    except (av.error.FFmpegError, OSError, ValueError):
        return None
    return None


def recover_partial_clips(
    store, folder: Path, older_than: float = STALE_TEMP_S, now: float | None = None
) -> int:
    """Temporary files of ``folder``/clips and ``folder``/snapshots left by a killed server: a
    partial clip that plays goes to its event (when the event is closed and has no clip: renamed
    to ``<event id>.mp4``, with a snapshot), any other one is deleted.

    A temporary file counts as left over when nothing touched it for ``older_than`` seconds, or
    at once when its event was closed by a restart (no recording of this server writes it). A
    temporary clip of an event still open is left alone. Returns how many events got a clip back.
    """
    now = time.time() if now is None else now
    recovered = 0
    for sub in ("clips", "snapshots"):
        d = folder / sub
        if not d.is_dir():
            continue
        for tmp in sorted(d.glob(f"{TEMP_PREFIX}*")):
            try:
                fresh = now - tmp.lstat().st_mtime < older_than
            except FileNotFoundError:
                continue
            event_id = _temp_event(tmp.name) if sub == "clips" else None
            event = store.get(event_id) if event_id else None
            if event is not None and event["end_time"] is None:
                continue  # its event is open: it may still be recording
            if fresh and not (event is not None and event["closed_by"] == CLOSED_BY_RESTART):
                continue
            usable = (
                event is not None
                and not event["clip"]
                and not event["clip_pruned"]
                and tmp.is_file()
                and not tmp.is_symlink()
            )
            start = partial_clip_start(tmp) if usable else None
            if start is None:
                tmp.unlink(missing_ok=True)
                continue
            recovered += _keep_partial(store, event, tmp, start, folder)
    if recovered:
        log.info("clips: kept the partial clip of %d event(s) interrupted by a restart", recovered)
    return recovered


def _keep_partial(store, event: dict, tmp: Path, start: float, folder: Path) -> int:
    clip = tmp.with_name(f"{event['id']}.mp4")
    try:
        os.chmod(tmp, io.FILE_MODE & ~io.current_umask())
        os.replace(tmp, clip)
    except OSError as e:
        log.warning("event %s: cannot keep its partial clip: %s", event["id"], e)
        return 0
    wall0 = event["start_time"] - event["media_start"]
    fields: dict = {"clip": clip.name, "clip_start": wall0 + start}
    snap = folder / "snapshots" / f"{event['id']}.jpg"
    if not event["snapshot"] and write_snapshot(clip, event["peak_time"] - (wall0 + start), snap):
        fields["snapshot"] = snap.name
    store.update(event["id"], **fields)
    return 1


def prune(
    store,
    folder: Path,
    max_size_mb: float | None,
    max_age_days: float | None,
    now: float | None = None,
) -> int:
    """Delete the oldest clips and snapshots (``folder``/clips, ``folder``/snapshots) past the age
    or total-size limit; the records stay.

    Temporary files left by a killed server are handled first (:func:`recover_partial_clips`).
    Returns how many events lost their media.
    """
    now = time.time() if now is None else now
    recover_partial_clips(store, folder, STALE_TEMP_S, now)
    if max_size_mb is None and max_age_days is None:
        return 0
    events = store.with_clips()  # oldest first

    def files(e: dict) -> list[Path]:
        return [
            folder / sub / name
            for sub, name in (("clips", e["clip"]), ("snapshots", e["snapshot"]))
            if name
        ]

    def size(e: dict) -> int:
        return sum(p.stat().st_size for p in files(e) if p.is_file())

    sizes = [size(e) for e in events]
    total = sum(sizes)
    limit = None if max_size_mb is None else max_size_mb * 1024 * 1024
    pruned = 0
    for e, s in zip(events, sizes, strict=True):
        too_old = max_age_days is not None and now - e["start_time"] > max_age_days * 86400
        too_big = limit is not None and total > limit
        if not (too_old or too_big) or e["end_time"] is None:
            continue
        for path in files(e):
            path.unlink(missing_ok=True)
        store.update(e["id"], clip=None, snapshot=None, clip_pruned=1)
        total -= s
        pruned += 1
    if pruned:
        log.info("retention: removed the media of %d event(s)", pruned)
    return pruned
