"""One thread per camera: reconnection and health over the live pipeline.

Each session (one connection to the source, or one pass over a file) is a
:class:`avarnet.media.SegmentSource`, the very iterator ``stream`` and ``predict --causal`` read
(live clock, bad-packet limit, finite samples, resampling); its segments go to the shared engine
and its demuxed packets to the camera's clip recorder. A camera that cannot connect, whose stream
breaks off, or whose thread meets any error is reported unhealthy (one log line per reason) and
opened again after a :class:`avarnet.media.ReconnectPolicy` wait; the other cameras are not
affected. A clip recorder that fails (a full disk) costs clips, never detection.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from ...config import FeatureSpec
from ...errors import AvarnetError
from ...media import MediaError, ReconnectPolicy, SegmentSource
from ...redact import redact
from .clips import ClipRecorder
from .config import CameraConfig

log = logging.getLogger("avarnet")

RETRY_FIRST_S = 1.0
SESSION_ACK_TIMEOUT_S = 300.0  # most a finished session waits for the engine to reach its end
ERROR_CLOSED_BY = "error"  # closed_by of events a failure closed
STOP_CLOSED_BY = "shutdown"


def fault_reason(e: BaseException) -> str:
    """One line, without credentials, saying what failed."""
    text = " ".join(str(e).split())
    if isinstance(e, AvarnetError):
        return redact(text)
    return redact(f"{type(e).__name__}: {text}" if text else type(e).__name__)


@dataclass
class CameraHealth:
    """What the page and the state topic show about a camera's connection."""

    status: str = "starting"  # starting | connecting | online | unhealthy | ended | stopped
    error: str | None = None  # redacted at the source: never holds a credential
    attempts: int = 0  # failed connection attempts since the last success
    sessions: int = 0
    retry_in: float | None = None
    since: float = field(default_factory=time.time)
    has_audio: bool = False

    @property
    def healthy(self) -> bool:
        return self.status != "unhealthy"

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "healthy": self.healthy,
            "error": self.error,
            "attempts": self.attempts,
            "sessions": self.sessions,
            "retry_in": self.retry_in,
            "since": round(self.since, 3),
            "has_audio": self.has_audio,
        }


class SessionMarker:
    """Start or end of a session, passed through the engine's queue in order with segments."""

    def __init__(
        self, kind: str, session: int, wall0: float = 0.0, closed_by: str | None = None
    ) -> None:
        self.kind = kind  # "start" | "end"
        self.session = session
        self.closed_by = closed_by  # "end": why open events close (None: as the tracker says)
        self.wall0 = wall0  # epoch seconds at media time 0
        self.done = threading.Event()  # set by the engine once handled


class _ClipHook:
    """The camera's clip recorder as the source's packet hook. Also notes the session's first
    video frame (the recorder's origin). A recorder that raises is logged once per reason and
    otherwise ignored: clips are lost, detection goes on."""

    def __init__(self, reader: CameraReader) -> None:
        self.reader = reader
        self.started = False
        self.ended = False
        self.source: SegmentSource | None = None
        self.closed_by: str | None = None  # why the session's open events close (None: as usual)
        self.errors: set[str] = set()

    def begin_session(self, streams: dict, video_index: int) -> None:
        self.call("begin_session", streams, video_index)

    def set_origin(self, source_time: float) -> None:
        self.call("set_origin", source_time)
        if not self.started:
            self.started = True
            self.reader.session_started()

    def add(self, packet) -> None:
        self.call("add", packet)

    def end_session(self) -> None:
        """Close the session's events in the engine (in order with its segments), then its
        clips, while the source's streams are still open."""
        if self.ended:
            return
        self.ended = True
        if self.source is not None and self.source.failure is not None:
            self.closed_by = ERROR_CLOSED_BY
        if self.started:
            self.reader.session_ended(self)
        self.call("end_session")

    def call(self, method: str, *args) -> None:
        try:
            getattr(self.reader.clips, method)(*args)
        except Exception as e:  # noqa: BLE001 - a clip failure must not stop detection
            reason = fault_reason(e)
            if reason not in self.errors:
                self.errors.add(reason)
                log.error(
                    "camera %s: clip recording failed (%s); detection goes on",
                    self.reader.camera.name,
                    reason,
                )


class CameraReader(threading.Thread):
    """Thread of one camera; ``sink.put(camera, item)`` receives segments and markers."""

    def __init__(
        self,
        camera: CameraConfig,
        spec: FeatureSpec,
        sink,
        clips: ClipRecorder,
        stop: threading.Event,
        on_health=None,
    ) -> None:
        super().__init__(name=f"avarnet-camera-{camera.name}", daemon=True)
        self.camera = camera
        self.spec = spec
        self.sink = sink
        self.clips = clips
        self.stop_event = stop
        self.health = CameraHealth()
        self.on_health = on_health or (lambda name, health: None)
        self.policy = ReconnectPolicy(RETRY_FIRST_S, camera.retry_max_s)
        self.segments = 0
        self.failures = 0  # errors met by this thread (each logged once per reason)
        self._logged: set[str] = set()
        self._hook: _ClipHook | None = None
        self._has_audio = False

    def _set(self, **fields) -> None:
        changed = any(getattr(self.health, k) != v for k, v in fields.items() if k != "since")
        for k, v in fields.items():
            setattr(self.health, k, v)
        if changed:
            self.health.since = time.time()
            try:
                self.on_health(self.camera.name, self.health)
            except Exception:  # noqa: BLE001 - reporting must not stop the camera
                log.exception("camera %s: reporting its health failed", self.camera.name)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self._set(status="connecting", retry_in=None)
            try:
                problem = self._session()
            except Exception as e:  # noqa: BLE001 - the thread never dies: report, reconnect
                problem = self._failed(e)
            if self.stop_event.is_set():
                break
            if problem is None:  # a file read to its end
                if self.camera.loop:
                    continue
                self._set(status="ended", error=None, retry_in=None)
                return
            self._retry(problem)
        self._set(status="stopped", retry_in=None)

    def _failed(self, e: BaseException) -> str:
        reason = fault_reason(e)
        self.failures += 1
        if reason not in self._logged:
            self._logged.add(reason)
            expected = isinstance(e, (AvarnetError, OSError))  # one line; a defect: its trace
            log.error(
                "camera %s: %s; reconnecting",
                self.camera.name,
                reason,
                exc_info=None if expected else e,
            )
        return f"failed: {reason}"

    def _retry(self, reason: str) -> None:
        wait = self.policy.failed()
        reason = redact(reason)
        # said once per reason in a row: a camera offline for a week is one line, not thousands
        level = logging.DEBUG if reason == self.health.error else logging.WARNING
        log.log(level, "camera %s: %s; retrying in %.0f s", self.camera.name, reason, wait)
        self._set(status="unhealthy", error=reason, attempts=self.policy.attempts, retry_in=wait)
        self.stop_event.wait(wait)

    def _session(self) -> str | None:
        """Read one session to its end; None when a file ended normally (or on stop)."""
        cam = self.camera
        hook = self._hook = _ClipHook(self)
        try:
            source = SegmentSource(
                cam.source,
                self.spec,
                realtime=cam.realtime,
                stop=self.stop_event,
                input_format=cam.input_format,
                options=cam.options,
                packets=hook,
            )
        except MediaError as e:  # "cannot open (...)", "no video stream", an unreadable file, ...
            return e.reason if e.reason.startswith("cannot open") else f"cannot open: {e.reason}"
        self._has_audio = source.info.has_audio
        hook.source = source
        segments = iter(source)
        try:
            for segment in segments:
                self.segments += 1
                self.sink.put(cam.name, segment)
        except Exception:
            hook.closed_by = ERROR_CLOSED_BY
            raise
        finally:
            segments.close()  # ends the session (hook.end_session), then closes the source
            hook.end_session()  # (when reading never began)
            source.close()
        if not hook.started:
            return source.end_reason
        if source.live and not self.stop_event.is_set():
            return source.end_reason if not source.complete else "the stream ended"
        if not source.complete:  # a file that delivered video ends here, whatever its tail
            log.warning("camera %s: %s", cam.name, redact(source.end_reason))
        return None

    def session_started(self) -> None:
        """The session's first video frame (from the packet hook): media time 0 is now."""
        self.health.sessions += 1
        self.policy.delivered()
        marker = SessionMarker("start", self.health.sessions, time.time())
        self.sink.put(self.camera.name, marker)
        self._set(status="online", error=None, attempts=0, retry_in=None, has_audio=self._has_audio)

    def session_ended(self, hook: _ClipHook) -> None:
        """The session's segments are all out: its open events close, in order with them."""
        closed_by = STOP_CLOSED_BY if self.stop_event.is_set() else hook.closed_by
        end = SessionMarker("end", self.health.sessions, closed_by=closed_by)
        self.sink.put(self.camera.name, end)
        # clip requests the engine makes until it reaches the marker still need this session's
        # packets, so wait for it (its queue is bounded, so this ends)
        deadline = time.monotonic() + SESSION_ACK_TIMEOUT_S
        while not end.done.wait(0.05) and time.monotonic() < deadline and self.sink.is_alive():
            hook.call("service")
