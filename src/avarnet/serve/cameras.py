"""One decoding thread per camera: connect (with back-off), demux, keep packets for clips, decode,
cut into segments and hand them to the shared engine.

A session is one connection to the source (or one pass over a file). Segments are cut by
:class:`avarnet.media.SegmentCutter` on the session's own timeline (0 at its first video frame),
as ``avarnet stream`` cuts them. A camera that cannot connect, or whose stream breaks off, is
reported unhealthy and retried with exponential back-off; the other cameras are not affected.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import av
import numpy as np

from ..config import FeatureSpec
from ..media import Segment, SegmentCutter, target_size
from .clips import ClipRecorder
from .config import CameraConfig

log = logging.getLogger("avarnet")

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0
RETRY_FIRST_S = 1.0
SESSION_ACK_TIMEOUT_S = 300.0  # most a finished session waits for the engine to reach its end
AV_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError)


@dataclass
class CameraHealth:
    """What the page and the state topic show about a camera's connection."""

    status: str = "starting"  # starting | connecting | online | unhealthy | ended | stopped
    error: str | None = None
    attempts: int = 0  # failed connection attempts since the last success
    sessions: int = 0
    retry_in: float | None = None
    since: float = field(default_factory=time.time)
    has_audio: bool = False

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
            "sessions": self.sessions,
            "retry_in": self.retry_in,
            "since": round(self.since, 3),
            "has_audio": self.has_audio,
        }


class SessionMarker:
    """Start or end of a session, passed through the engine's queue in order with segments."""

    def __init__(self, kind: str, session: int, wall0: float = 0.0, stopped: bool = False) -> None:
        self.kind = kind  # "start" | "end"
        self.session = session
        self.stopped = stopped  # "end": the server is stopping (not the source ending)
        self.wall0 = wall0  # epoch seconds at media time 0
        self.done = threading.Event()  # set by the engine once handled


class CameraReader(threading.Thread):
    """Decoder thread of one camera; ``sink.put(camera, item)`` receives segments and markers."""

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
        self.segments = 0

    def _set(self, **fields) -> None:
        changed = any(getattr(self.health, k) != v for k, v in fields.items() if k != "since")
        for k, v in fields.items():
            setattr(self.health, k, v)
        if changed:
            self.health.since = time.time()
            self.on_health(self.camera.name, self.health)

    def run(self) -> None:
        wait = RETRY_FIRST_S
        while not self.stop_event.is_set():
            self._set(status="connecting", retry_in=None)
            try:
                container = self._open()
            except AV_ERRORS as e:
                reason = " ".join(str(e).split()) or type(e).__name__
                self._retry(f"cannot open: {reason}", wait)
                wait = min(wait * 2, self.camera.retry_max_s)
                continue
            broke = self._session(container)
            if self.stop_event.is_set():
                break
            if broke is None and self.camera.is_file:
                if self.camera.loop:
                    wait = RETRY_FIRST_S
                    continue
                self._set(status="ended", error=None)
                return
            self._retry(broke or "the stream ended", wait)
            wait = (
                min(wait * 2, self.camera.retry_max_s)
                if self.health.attempts > 1
                else RETRY_FIRST_S
            )
        self._set(status="stopped", retry_in=None)

    def _retry(self, reason: str, wait: float) -> None:
        log.warning("camera %s: %s; retrying in %.0f s", self.camera.name, reason, wait)
        self._set(
            status="unhealthy", error=reason, attempts=self.health.attempts + 1, retry_in=wait
        )
        self.stop_event.wait(wait)

    def _open(self):
        cam = self.camera
        opts = dict(cam.options)
        live = not cam.is_file
        if cam.source.lower().startswith("rtsp") and "rtsp_transport" not in opts:
            opts["rtsp_transport"] = "tcp"
        fmt = cam.input_format or ("v4l2" if cam.source.startswith("/dev/video") else None)
        timeout = (OPEN_TIMEOUT_S, READ_TIMEOUT_S) if live else None
        return av.open(cam.source, mode="r", format=fmt, options=opts, timeout=timeout)

    def _session(self, container) -> str | None:
        """Read one connection to its end; None when it ended normally (end of file, stop)."""
        try:
            if not container.streams.video:
                return "no video stream"
            video = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            video.thread_type = "AUTO"
            return self._read(container, video, audio)
        finally:
            container.close()

    def _read(self, container, video, audio) -> str | None:
        spec = self.spec
        fps = float(video.average_rate or video.guessed_rate or 25)
        cutter = SegmentCutter(
            spec.segment_seconds,
            spec.frames_per_segment,
            spec.sample_rate,
            target_size(
                video.codec_context.width, video.codec_context.height, spec.resize_shortest_edge
            ),
            audio is not None,
            fps,
        )
        streams = {video.index: video} | ({audio.index: audio} if audio is not None else {})
        self.clips.begin_session(streams, video.index)
        resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
            if audio is not None
            else None
        )
        self.health.sessions += 1
        session = self.health.sessions
        t0: float | None = None  # source time of the session's first video frame
        wall0 = 0.0
        mono0 = 0.0
        audio_pos: float | None = None  # s of audio handed to the cutter
        broke = None
        demux = [s for s in (video, audio) if s is not None]
        try:
            for packet in container.demux(*demux):
                if self.stop_event.is_set():
                    break
                if packet.dts is None and packet.pts is None and packet.size == 0:
                    frames = _decode(packet)  # flush
                else:
                    self.clips.add(packet)
                    frames = _decode(packet)
                for frame in frames:
                    if frame.time is None:
                        continue
                    if isinstance(frame, av.VideoFrame):
                        if t0 is None:
                            t0, wall0, mono0 = frame.time, time.time(), time.monotonic()
                            self.clips.set_origin(t0)
                            self.sink.put(self.camera.name, SessionMarker("start", session, wall0))
                            self._set(
                                status="online",
                                error=None,
                                attempts=0,
                                retry_in=None,
                                has_audio=audio is not None,
                            )
                        t = frame.time - t0
                        if self.camera.realtime and self.camera.is_file:
                            delay = mono0 + t - time.monotonic()
                            if delay > 0 and self.stop_event.wait(delay):
                                break
                        self._emit(cutter.add_frame(frame, t))
                    elif t0 is not None and resampler is not None:
                        at = frame.time - t0
                        if audio_pos is None:
                            audio_pos = 0.0
                            if at > 0:
                                self._emit(
                                    cutter.add_audio(
                                        np.zeros(round(at * spec.sample_rate), np.float32)
                                    )
                                )
                        frame.pts = None
                        for piece in resampler.resample(frame):
                            samples = piece.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                            if at < 0:  # audio before the first video frame
                                cut = min(samples.size, round(-at * spec.sample_rate))
                                samples, at = samples[cut:], at + cut / spec.sample_rate
                            self._emit(cutter.add_audio(samples))
        except AV_ERRORS as e:
            broke = f"stream broke off ({' '.join(str(e).split()) or type(e).__name__})"
        if t0 is None:
            self.clips.end_session()
            return broke or "no video frame could be decoded"
        self._emit(cutter.finish())
        end = SessionMarker("end", session, stopped=self.stop_event.is_set())
        self.sink.put(self.camera.name, end)
        # the engine closes open events on this marker; clip requests it makes until then still
        # need this session's packets, so wait for it (its queue is bounded, so this ends)
        deadline = time.monotonic() + SESSION_ACK_TIMEOUT_S
        while not end.done.wait(0.05) and time.monotonic() < deadline and self.sink.is_alive():
            self.clips.service()
        self.clips.end_session()
        if broke is None and not self.camera.is_file and not self.stop_event.is_set():
            broke = "the stream ended"
        return broke

    def _emit(self, segments: list[Segment]) -> None:
        for seg in segments:
            self.segments += 1
            self.sink.put(self.camera.name, seg)


def _decode(packet) -> list:
    try:
        return list(packet.decode())
    except av.error.FFmpegError:
        return []
