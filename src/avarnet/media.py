"""Decoding with PyAV: probe a file, frames at timestamps, audio as 16 kHz mono float32.

Every function streams: memory does not grow with the length of the video.
Times are seconds on the video stream's own timeline (t = 0 at its first frame).
Errors from FFmpeg are wrapped into the typed exceptions below, each a single
line that names the file.

Hostile input is bounded here, once for every caller:

* audio samples are finite and within full scale: NaN becomes 0 (silence), +-inf and values
  beyond +-1 are clipped to +-1; a file holding non-finite samples is named in one warning;
* a declared duration is checked against the last packets of the video stream (a header
  claiming 1e9 s for a 2-s file is not believed);
* a resized frame's long side is at most MAX_ASPECT_RATIO times its short side (a 4000x2
  video would otherwise become a 576000x288 frame); beyond that the long side is squeezed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np

from avarnet.config import SAMPLE_RATE, FeatureSpec
from avarnet.errors import AvarnetError
from avarnet.redact import redact

log = logging.getLogger("avarnet")

WAV2VEC2_HOP = 320  # Wav2Vec2's conv stack strides 5*2*2*2*2*2*2 = 320 samples (20 ms at 16 kHz)
DEFAULT_CHUNK_SECONDS = 10.0
PROBE_MAX_PACKETS = 256  # packets read before giving up on decoding a first frame
SEEK_MIN_SECONDS = 2.0  # seek before decoding only when the first timestamp is this far in
MAX_BAD_PACKETS = 64  # undecodable packets tolerated before a stream counts as broken
MAX_ASPECT_RATIO = 8.0  # long side / short side of a resized frame (wider: squeezed to this)
END_CHECK_PACKETS = 4096  # packets read after seeking to the declared end before giving up
DURATION_SLACK_S = 1.0  # a declared duration may exceed the last packet's end by this much
AUDIO_FULL_SCALE = 1.0  # float samples are clipped to [-1, 1]
# Downmix as the mean of the channels (FFmpeg's default scales stereo by 1/sqrt(2) each).
_RESAMPLER_OPTIONS = {"rematrix_maxval": "1.0"}
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


def segment_times(
    duration: float, segment_seconds: float, frames_per_segment: int = 1
) -> np.ndarray:
    """Timestamps (s) of the frames encoded for each segment: (T, k), k frames spread inside each.

    T = ceil(duration / segment_seconds); with k = 1 the frame is the segment centre.
    """
    T = max(1, math.ceil(duration / segment_seconds - 1e-9))
    starts = np.arange(T) * segment_seconds  # (T,)
    offsets = (np.arange(frames_per_segment) + 0.5) / frames_per_segment * segment_seconds  # (k,)
    times = starts[:, None] + offsets[None, :]  # (T, k)
    return np.minimum(times, max(duration - 1e-3, 0.0))


class MediaError(AvarnetError):
    """A media file cannot be used; ``str(e)`` is one line naming the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(redact(reason).split())  # one line, credentials masked
        super().__init__(f"{redact(self.path)}: {self.reason}")


class UnreadableMediaError(MediaError):
    """Empty, corrupt, truncated or not a media file at all."""


class NoVideoStreamError(MediaError):
    """The file holds no video stream (e.g. audio only)."""


class ZeroDurationError(MediaError):
    """The video stream holds no frames."""


@dataclass(frozen=True)
class MediaInfo:
    """What ``probe`` found; stream indices are those chosen for decoding."""

    path: str
    duration: float  # seconds, > 0 (video stream)
    fps: float
    width: int
    height: int
    num_frames: int  # from the container when stored, else round(duration * fps)
    has_audio: bool
    audio_sample_rate: int  # 0 when no audio
    audio_channels: int  # 0 when no audio
    video_stream: int
    audio_stream: int | None
    declared_duration: float = 0.0  # what the container header says (== duration unless it lied)


# --------------------------------------------------------------------------- probe


def probe(path: str | Path) -> MediaInfo:
    """Inspect ``path``: best video/audio streams, duration, fps, size.

    Decodes one video frame to make sure the file is usable. Raises
    UnreadableMediaError, NoVideoStreamError or ZeroDurationError.
    """
    path = _check_file(path)
    with _open(path) as container:  # read everything while open: streams die with it
        video = _best_video_stream(container)
        if video is None:
            raise NoVideoStreamError(path, "no video stream")
        _check_first_frame(path, container, video)
        audio = _best_audio_stream(container)
        fields = _video_fields(video) | _audio_fields(audio)
        duration = declared = _stream_duration(video) or _container_duration(container)
        if duration:
            checked = _checked_duration(path, container, video, audio, duration)
            if checked != duration:  # the header lied: its frame count is not believed either
                duration, fields["stored_frames"] = checked, 0
    stored_frames = fields.pop("stored_frames")
    if not duration:
        duration, counted = _count_duration(path, fields["video_stream"], fields["fps"])
        stored_frames = stored_frames or counted
    if duration <= 0:
        raise ZeroDurationError(path, "video stream has zero duration")
    if fields["fps"] <= 0:
        fields["fps"] = stored_frames / duration
    if fields["fps"] <= 0:
        raise UnreadableMediaError(path, "cannot determine the frame rate")
    num_frames = stored_frames or max(1, round(duration * fields["fps"]))
    return MediaInfo(
        path=str(path),
        duration=duration,
        num_frames=num_frames,
        declared_duration=declared or duration,
        **fields,
    )


def _video_fields(video) -> dict:
    return {
        "fps": _stream_fps(video),
        "width": video.codec_context.width,
        "height": video.codec_context.height,
        "stored_frames": int(video.frames or 0),
        "video_stream": video.index,
    }


def _audio_fields(audio) -> dict:
    return {
        "has_audio": audio is not None,
        "audio_sample_rate": audio.codec_context.sample_rate if audio else 0,
        "audio_channels": audio.codec_context.channels if audio else 0,
        "audio_stream": audio.index if audio else None,
    }


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UnreadableMediaError(path, "is a directory, not a media file")
    if not path.is_file():
        raise UnreadableMediaError(path, "not a regular file" if path.exists() else "no such file")
    if path.stat().st_size == 0:
        raise UnreadableMediaError(path, "empty file")
    return path


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except _AV_ERRORS as e:
        raise UnreadableMediaError(path, f"not a readable media file ({_reason(e)})") from e


def _reason(e: BaseException) -> str:
    if isinstance(e, av.error.FFmpegError) and e.strerror:
        return str(e.strerror)
    return f"{type(e).__name__}: {e}"


def _best_video_stream(container) -> av.video.stream.VideoStream | None:
    """Largest width*height; ties go to the first. Cover art (attached pictures) is skipped."""
    candidates = [
        s
        for s in container.streams.video
        if not s.disposition & av.stream.Disposition.attached_pic
        and s.codec_context is not None
        and s.codec_context.width * s.codec_context.height > 0
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda s: (s.codec_context.width * s.codec_context.height, -s.index))


def _best_audio_stream(container) -> av.audio.stream.AudioStream | None:
    """Highest sample rate, then most channels; ties go to the first."""
    candidates = [
        s
        for s in container.streams.audio
        if s.codec_context is not None and (s.codec_context.sample_rate or 0) > 0
    ]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda s: (s.codec_context.sample_rate, s.codec_context.channels, -s.index),
    )


def _check_first_frame(path: Path, container, video) -> None:
    """Decode the first video frame: no packet -> ZeroDuration, no frame -> Unreadable."""
    packets = 0
    try:
        for packet in container.demux(video):
            if packet.size == 0 and packet.dts is None:
                break  # the demuxer's final flush packet
            packets += 1
            if _decode_packet(packet):
                return
            if packets >= PROBE_MAX_PACKETS:
                break
        if packets and _decode_packet(None, video):
            return
    except _AV_ERRORS as e:
        raise UnreadableMediaError(path, f"cannot read the video stream ({_reason(e)})") from e
    if packets == 0:
        raise ZeroDurationError(path, "video stream holds no frames")
    raise UnreadableMediaError(path, "no video frame could be decoded")


def _decode_packet(packet, stream=None) -> list:
    """Frames from one packet (or the decoder's flush when packet is None); [] when bad."""
    try:
        return list(packet.decode()) if packet is not None else list(stream.decode(None))
    except av.error.FFmpegError:
        return []


def _checked_duration(path: Path, container, video, audio, declared: float) -> float:
    """``declared`` unless every stream's last packets end well before it (then the latest end).

    Seeks each stream (video, and audio when present) to the declared end and reads its packets
    from the keyframe found there to the end of the file. When the video's end cannot be measured
    (no seek, a broken tail), the declaration stands.
    """
    origin = _stream_start_seconds(video)
    end = _last_packet_end(container, video, declared, origin)
    if end is not None and audio is not None:
        end = max(end, _last_packet_end(container, audio, declared, origin) or 0.0)
    if end is None or end <= 0 or declared <= end + max(DURATION_SLACK_S, 0.01 * end):
        return declared
    log.warning(
        "%s: declares %.6g s but its streams end at %.3f s; using %.3f s", path, declared, end, end
    )
    return end


def _last_packet_end(container, stream, declared: float, origin: float) -> float | None:
    """End (s, from ``origin``) of the last packet of ``stream`` at or after a seek to ``declared``."""
    try:
        target = min(int((origin + declared) / stream.time_base), 2**62)
        container.seek(target, stream=stream, backward=True, any_frame=False)
        last = None
        for count, packet in enumerate(container.demux(stream)):
            if packet.pts is not None:
                end = float((packet.pts + (packet.duration or 0)) * stream.time_base) - origin
                last = end if last is None else max(last, end)
            if count >= END_CHECK_PACKETS:
                return None
        return last
    except (*_AV_ERRORS, OverflowError):
        return None


def _stream_duration(stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return 0.0


def _container_duration(container) -> float:
    return container.duration / av.time_base if container.duration else 0.0


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:
            return float(rate)
    return 0.0


def _count_duration(path: Path, index: int, fps: float) -> tuple[float, int]:
    """Duration and frame count by demuxing every video packet (when metadata has none)."""
    first = last = None
    count = 0
    with _open(path) as container:
        stream = container.streams[index]
        try:
            for packet in container.demux(stream):
                if packet.pts is None and packet.size == 0:
                    continue
                count += 1
                if packet.pts is not None:
                    start = float(packet.pts * stream.time_base)
                    end = start + float((packet.duration or 0) * stream.time_base)
                    first = start if first is None else min(first, start)
                    last = end if last is None else max(last, end)
        except _AV_ERRORS:
            pass  # a broken tail: keep what was counted
    if first is not None and last is not None and last > first:
        return last - first, count
    return (count / fps if fps else 0.0), count


# ------------------------------------------------------------------------- frames


def read_frames(
    path: str | Path,
    timestamps: Sequence[float],
    shortest_edge: int | None = None,
    info: MediaInfo | None = None,
) -> Iterator[np.ndarray]:
    """Yield one RGB uint8 frame (H, W, 3) per timestamp (seconds, ascending).

    Each is the decoded frame whose time is nearest the timestamp, found in a
    single sequential decode pass. With ``shortest_edge`` the frame is resized
    in FFmpeg so its shorter side has that many pixels (aspect kept). If the
    file breaks mid-way, the remaining timestamps get the last good frame; if
    no frame decodes at all, UnreadableMediaError is raised while iterating.
    """
    times = [float(t) for t in timestamps]
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError("timestamps must be sorted ascending")
    if shortest_edge is not None and shortest_edge <= 0:
        raise ValueError(f"shortest_edge must be positive, got {shortest_edge}")
    info = info or probe(path)
    size = target_size(info.width, info.height, shortest_edge)
    return _iter_frames(Path(path), times, info, size)


def target_size(width: int, height: int, shortest_edge: int | None) -> tuple[int, int] | None:
    """(width, height) with the shorter side == shortest_edge, or None to keep the size.

    The longer side is at most MAX_ASPECT_RATIO * shortest_edge (memory stays bounded).
    """
    if shortest_edge is None:
        return None
    scale = shortest_edge / min(width, height)
    longest = max(1, round(shortest_edge * MAX_ASPECT_RATIO))
    if width <= height:
        return shortest_edge, min(longest, max(1, round(height * scale)))
    return min(longest, max(1, round(width * scale))), shortest_edge


def _iter_frames(
    path: Path, times: list[float], info: MediaInfo, size: tuple[int, int] | None
) -> Iterator[np.ndarray]:
    if not times:
        return
    with _open(path) as container:
        stream = container.streams[info.video_stream]
        stream.thread_type = "AUTO"
        start = _stream_start_seconds(stream)
        if times[0] >= SEEK_MIN_SECONDS:
            _seek(container, stream, start + times[0])
        pending = 0  # index of the next timestamp to serve
        prev = prev_t = None
        for frame, t in _decoded_frames(container, stream, start, info.fps):
            while pending < len(times) and t >= times[pending]:
                nearer_prev = prev is not None and times[pending] - prev_t <= t - times[pending]
                yield _to_rgb(prev if nearer_prev else frame, size)
                pending += 1
            if pending == len(times):
                return
            prev, prev_t = frame, t
        if prev is None:
            raise UnreadableMediaError(path, "no video frame could be decoded")
        last = _to_rgb(prev, size)  # stream ended or broke: later timestamps get the last frame
    for _ in range(pending, len(times)):
        yield last.copy()


def _stream_start_seconds(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _seek(container, stream, seconds: float) -> None:
    """Seek to the keyframe at or before ``seconds``; on failure decoding starts at the top."""
    try:
        container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
    except _AV_ERRORS:
        container.seek(0)


def _decoded_frames(container, stream, start: float, fps: float) -> Iterator[tuple]:
    """(frame, seconds since the stream start) in decode order; stops at a broken tail."""
    last_t = None
    bad = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                bad += 1
                if bad > MAX_BAD_PACKETS:
                    return
                continue
            for frame in frames:
                last_t = _frame_seconds(frame, start, last_t, fps)
                yield frame, last_t
    except _AV_ERRORS:
        return  # unreadable tail: callers fall back to the last good frame


def _frame_seconds(frame, start: float, last_t: float | None, fps: float) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base) - start
    return 0.0 if last_t is None else last_t + 1.0 / fps


def _to_rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 3) uint8 RGB, resized in FFmpeg when size is given."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    width, height = size
    shrinking = width * height < frame.width * frame.height
    interpolation = "AREA" if shrinking else "BILINEAR"
    return frame.reformat(
        width=width, height=height, format="rgb24", interpolation=interpolation
    ).to_ndarray()


# -------------------------------------------------------------------------- audio


def chunk_samples(chunk_seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples per audio chunk: round(chunk_seconds * rate), rounded down to a 320 multiple."""
    samples = round(chunk_seconds * sample_rate)
    return max(WAV2VEC2_HOP, samples - samples % WAV2VEC2_HOP)


def iter_audio(
    path: str | Path,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    sample_rate: int = SAMPLE_RATE,
    info: MediaInfo | None = None,
) -> Iterator[np.ndarray]:
    """Yield the chosen audio track as float32 mono chunks (S,) at ``sample_rate``.

    Every chunk has ``chunk_samples(chunk_seconds, sample_rate)`` samples except
    the last, which is shorter. Sample 0 is aligned with the video's t = 0
    (zeros are prepended when the audio starts late). Nothing is yielded when
    the file has no audio.
    """
    if chunk_seconds <= 0 or sample_rate <= 0:
        raise ValueError("chunk_seconds and sample_rate must be positive")
    info = info or probe(path)
    if info.audio_stream is None:
        return iter(())
    return _iter_audio(Path(path), chunk_samples(chunk_seconds, sample_rate), sample_rate, info)


def _iter_audio(path: Path, size: int, sample_rate: int, info: MediaInfo) -> Iterator[np.ndarray]:
    buffer = _ChunkBuffer(size)
    with _open(path) as container:
        stream = container.streams[info.audio_stream]
        offset = _stream_start_seconds(stream) - _stream_start_seconds(
            container.streams[info.video_stream]
        )
        skip = max(0, round(-offset * sample_rate))  # audio that starts before the video
        for piece in silence(round(offset * sample_rate), size):  # audio that starts late
            yield from buffer.push(piece)
        decoded = bad = 0
        for samples in _resampled(path, container, stream, sample_rate):
            decoded += samples.size
            samples, n_bad = finite_samples(samples)
            bad += n_bad
            if skip:
                cut = min(skip, samples.size)
                samples, skip = samples[cut:], skip - cut
            yield from buffer.push(samples)
    if bad:
        log.warning(
            "%s: %d non-finite audio samples (NaN or infinity) replaced (NaN: 0, inf: +-1)",
            path,
            bad,
        )
    if decoded:
        yield from buffer.flush()


class _ChunkBuffer:
    """Collects 1-D float32 pieces and hands out chunks of exactly ``size`` samples."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pieces: list[np.ndarray] = []
        self._count = 0

    @property
    def empty(self) -> bool:
        return self._count == 0

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        if samples.size:
            self._pieces.append(samples)
            self._count += samples.size
        while self._count >= self.size:
            joined = np.concatenate(self._pieces)
            yield joined[: self.size]
            rest = joined[self.size :]
            self._pieces = [rest] if rest.size else []
            self._count = rest.size

    def flush(self) -> Iterator[np.ndarray]:
        if self._count:
            yield np.concatenate(self._pieces)
        self._pieces, self._count = [], 0


def _resampled(path: Path, container, stream, sample_rate: int) -> Iterator[np.ndarray]:
    """Decode ``stream`` and resample to float32 mono pieces (not yet sanitised); stops at a broken tail."""
    resampler = av.AudioResampler(
        format="flt", layout="mono", rate=sample_rate, options=_RESAMPLER_OPTIONS
    )
    got_any = False
    try:
        for packet in container.demux(stream):
            for frame in _decode_packet(packet):
                frame.pts = None  # let the resampler count samples; gaps are not padded
                for out in resampler.resample(frame):
                    got_any = True
                    yield _raw_mono(out)
        for out in resampler.resample(None):
            yield _raw_mono(out)
    except _AV_ERRORS as e:
        if not got_any:
            raise UnreadableMediaError(
                path, f"cannot decode the audio stream ({_reason(e)})"
            ) from e


def silence(samples: int, piece: int) -> Iterator[np.ndarray]:
    """``samples`` zeros as float32 pieces of at most ``piece`` samples (bounded memory, however
    late a track starts)."""
    while samples > 0:
        n = min(samples, piece)
        yield np.zeros(n, np.float32)
        samples -= n


def finite_samples(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """(samples with NaN -> 0 and values clipped to +-AUDIO_FULL_SCALE, count of non-finite ones)."""
    finite = np.isfinite(samples)
    bad = int(samples.size - np.count_nonzero(finite))
    if bad:
        samples = np.where(np.isnan(samples), np.float32(0.0), samples)
    if bad or np.abs(samples).max(initial=0.0) > AUDIO_FULL_SCALE:
        samples = np.clip(samples, -AUDIO_FULL_SCALE, AUDIO_FULL_SCALE).astype(
            np.float32, copy=False
        )
    return samples, bad


def _raw_mono(frame) -> np.ndarray:
    return frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)


def _mono(frame) -> np.ndarray:
    """Float32 mono samples (S,) of a resampled frame, finite and within full scale."""
    return finite_samples(_raw_mono(frame))[0]


def load_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, info: MediaInfo | None = None
) -> np.ndarray:
    """The whole audio track as float32 mono (S,) at ``sample_rate``; (0,) without audio."""
    chunks = list(iter_audio(path, chunk_seconds=60.0, sample_rate=sample_rate, info=info))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


# ----------------------------------------------------------------------- segments
#
# One segment iterator for files and live sources: extract (causal spec), predict --causal, stream
# and bench all cut media into segments here, so they see the same frames and the same samples.

AUDIO_LAG_LIMIT_S = 5.0  # a segment waits at most this long (media time) for late audio
MAX_AUDIO_HELD_S = (
    60.0  # audio running ahead of the video by more than this is dropped (oldest first)
)
READ_TIMEOUT_S = 10.0  # network sources: no data for this long ends the stream
OPEN_TIMEOUT_S = 15.0
MAX_TIME_JUMP_S = 10.0  # a timestamp jump larger than this is a discontinuity
EARLY_END_TOLERANCE_S = 1.0  # files: ending this much before the declared duration is a truncation
LINUX_CAPTURE_FORMAT = "v4l2"


class SourceError(MediaError):
    """A stream source cannot be opened or holds no usable video; one line naming the source."""


# ------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class SourceInfo:
    """What was opened. ``duration`` is known for files only (seconds)."""

    source: str
    kind: str  # "file" | "url" | "device"
    fps: float
    width: int
    height: int
    has_audio: bool
    duration: float | None


@dataclass(frozen=True)
class Segment:
    """One segment of a source: frames at its centre and its audio, ready for the encoders."""

    index: int
    start: float  # s, media time
    end: float  # s
    frames: np.ndarray  # (k, H, W, 3) uint8 RGB, shortest edge resized as the spec says
    audio: np.ndarray  # (S,) float32 at the spec's sample rate: this segment's samples only
    ready: float = 0.0  # time.monotonic() when the decoder finished it


def source_kind(source: str) -> str:
    """ "url" for anything with ``://``, "device" for /dev/video* paths, else "file"."""
    if "://" in source:
        return "url"
    if source.startswith("/dev/video"):
        return "device"
    return "file"


def _open_container(source: str, kind: str, input_format: str | None, options: dict[str, str]):
    opts = dict(options)
    fmt = input_format
    if kind == "url" and source.lower().startswith("rtsp") and "rtsp_transport" not in opts:
        opts["rtsp_transport"] = "tcp"
    if kind == "device" and fmt is None:
        fmt = LINUX_CAPTURE_FORMAT
    timeout = (OPEN_TIMEOUT_S, READ_TIMEOUT_S) if kind != "file" else None
    try:
        return av.open(source, mode="r", format=fmt, options=opts, timeout=timeout)
    except _AV_ERRORS as e:
        raise SourceError(source, f"cannot open ({_reason(e)})") from e


class SegmentCutter:
    """Cuts decoded video frames and audio samples into :class:`Segment` s, in order.

    Segment i spans [i, i+1) * segment_seconds on the video's timeline. Its frames are the decoded
    frames nearest to the k timestamps of :func:`avarnet.extract.segment_times` (as
    :func:`read_frames` picks them); its audio is samples [round(i*s*sr), round((i+1)*s*sr)) of
    the track aligned so sample 0 is video time 0 (as :func:`iter_audio`). A segment is handed
    out once its frames are chosen and its audio has arrived (or audio lags by more than
    ``audio_lag_limit_s`` of media time). Memory is bounded: only unfinished segments are held.
    """

    def __init__(
        self,
        segment_seconds: float,
        frames_per_segment: int,
        sample_rate: int,
        size: tuple[int, int] | None,
        has_audio: bool,
        fps: float,
        audio_lag_limit_s: float = AUDIO_LAG_LIMIT_S,
    ) -> None:
        self.seg = segment_seconds
        self.k = frames_per_segment
        self.sr = sample_rate
        self.size = size
        self.has_audio = has_audio
        self.fps = fps
        self.audio_lag_limit_s = audio_lag_limit_s
        self._next_target = 0  # index of the next frame timestamp to serve (over all segments)
        self._chosen: list[np.ndarray] = []  # frames chosen for segments not yet handed out
        self._prev: tuple[Any, float] | None = None  # last decoded frame and its time
        self._prev_array: np.ndarray | None = None  # the last frame as RGB, once converted
        self.frames_built = 0  # RGB conversions so far (at most one per decoded frame)
        self._seen_t: float | None = None  # time of the newest frame given to add_frame
        self._frame_seconds = 0.0  # duration of the last frame
        self._emit = 0  # next segment to hand out
        self._audio: list[np.ndarray | int] = []  # held samples; an int: that many zeros
        self._audio_base = 0  # absolute index of the first held sample
        self._audio_total = 0  # samples received so far
        self._real_held = 0  # held samples that are not silence

    @property
    def last_time(self) -> float | None:
        """Time (s) of the last decoded frame, None before the first."""
        return None if self._prev is None else self._prev[1]

    @property
    def audio_held(self) -> int:
        """Decoded audio samples held for segments not yet handed out (held silence is a count)."""
        return self._real_held

    @property
    def media_end(self) -> float:
        """End (s) of the video decoded so far: last frame time plus its duration."""
        return 0.0 if self._prev is None else self._prev[1] + self._frame_seconds

    def _target(self, j: int) -> float:
        i, r = divmod(j, self.k)
        return (i + (r + 0.5) / self.k) * self.seg

    def add_frame(self, frame, t: float, frame_seconds: float | None = None) -> Iterator[Segment]:
        """A decoded video frame at ``t`` seconds (presentation order); yields finished segments.

        Lazy: segments are handed out as soon as they are complete, so a timestamp jump (a gap in
        the file) never holds more than one segment. Each decoded frame is converted to RGB at
        most once (``frames_built``); segments inside a gap share that array instead of copying it.
        """
        rgb = None
        self._seen_t = t
        while t >= self._target(self._next_target):
            target = self._target(self._next_target)
            prev = self._prev
            if prev is not None and target - prev[1] <= t - target:
                self._chosen.append(self._prev_rgb())
            else:
                rgb = rgb if rgb is not None else self._rgb(frame)
                self._chosen.append(rgb)
            self._next_target += 1
            yield from self._finished()
        self._prev = (frame, t)
        self._prev_array = rgb
        self._frame_seconds = frame_seconds or (1.0 / self.fps if self.fps > 0 else 0.0)
        yield from self._finished()

    def _rgb(self, frame) -> np.ndarray:
        self.frames_built += 1
        return _to_rgb(frame, self.size)

    def _prev_rgb(self) -> np.ndarray:
        if self._prev_array is None:
            self._prev_array = self._rgb(self._prev[0])
        return self._prev_array

    def add_audio(self, samples: np.ndarray) -> list[Segment]:
        """Mono float32 samples continuing the aligned track; returns finished segments.

        At most MAX_AUDIO_HELD_S of audio is held: if the video stalls (or ends) while audio keeps
        coming, the oldest held samples are dropped, so memory stays bounded.
        """
        if samples.size:
            self._audio.append(samples)
            self._audio_total += samples.size
            self._real_held += samples.size
        excess = self._real_held - round(MAX_AUDIO_HELD_S * self.sr)
        if excess > 0:
            self._take_audio(self._audio_base, self._after_real(excess))
        return list(self._finished())

    def add_silence(self, samples: int) -> list[Segment]:
        """``samples`` zeros continuing the track (audio that starts late), held as a count, so a
        track starting hours after the video costs no memory."""
        if samples > 0:
            self._audio.append(samples)
            self._audio_total += samples
        return list(self._finished())

    def _after_real(self, n: int) -> int:
        """Absolute sample index just past the first ``n`` held real (non-silence) samples."""
        pos = self._audio_base
        for chunk in self._audio:
            size = chunk if isinstance(chunk, int) else chunk.size
            if not isinstance(chunk, int):
                if size >= n:
                    return pos + n
                n -= size
            pos += size
        return pos

    def _bounds(self, i: int) -> tuple[int, int]:
        return round(i * self.seg * self.sr), round((i + 1) * self.seg * self.sr)

    def _audio_ready(self, i: int) -> bool:
        if not self.has_audio or self._audio_total >= self._bounds(i)[1]:
            return True
        last = self._seen_t
        return last is not None and last - (i + 1) * self.seg > self.audio_lag_limit_s

    def _finished(self) -> Iterator[Segment]:
        while self._next_target >= (self._emit + 1) * self.k and self._audio_ready(self._emit):
            yield self._make(self._emit, (self._emit + 1) * self.seg)

    def _take_audio(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) that were received (held silence as zeros); older ones are released."""
        out: list[np.ndarray] = []
        keep: list[np.ndarray | int] = []
        pos = self._audio_base
        for chunk in self._audio:
            size = chunk if isinstance(chunk, int) else chunk.size
            a, b = max(lo, pos) - pos, min(hi, pos + size) - pos  # the part inside [lo, hi)
            if b > a:
                out.append(np.zeros(b - a, np.float32) if isinstance(chunk, int) else chunk[a:b])
            rest = max(0, min(size, pos + size - hi))  # the part at or after hi
            if rest:
                keep.append(rest if isinstance(chunk, int) else chunk[size - rest :])
            pos += size
        released = sum(c if isinstance(c, int) else c.size for c in self._audio) - sum(
            c if isinstance(c, int) else c.size for c in keep
        )
        self._audio = keep
        self._audio_base += released
        self._real_held = sum(c.size for c in keep if not isinstance(c, int))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _make(self, i: int, end: float) -> Segment:
        chosen = self._chosen[: self.k]
        del self._chosen[: self.k]
        if all(c is chosen[0] for c in chosen):  # one frame (k = 1, or a gap): a view, no copy
            frames = np.broadcast_to(chosen[0], (self.k, *chosen[0].shape))
        else:
            frames = np.stack(chosen)
        audio = self._take_audio(*self._bounds(i)) if self.has_audio else np.zeros(0, np.float32)
        self._emit += 1
        return Segment(i, i * self.seg, end, frames, audio, time.monotonic())

    def finish(self) -> Iterator[Segment]:
        """End of input: hand out the remaining segments (missing frames repeat the last frame)."""
        if self._prev is None:
            return
        end = self.media_end
        total = max(self._emit, math.ceil(end / self.seg - 1e-9), 1)
        while self._next_target < total * self.k:
            self._chosen.append(self._prev_rgb())
            self._next_target += 1
            while len(self._chosen) >= self.k and self._emit < total:
                yield self._make(self._emit, min((self._emit + 1) * self.seg, end))
        while self._emit < total:
            yield self._make(self._emit, min((self._emit + 1) * self.seg, end))


class _LiveClock:
    """Media time of live sources, with large timestamp jumps (discontinuities) closed up."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.shift = 0.0
        self.last: float | None = None

    def __call__(self, t: float, step: float) -> float:
        t += self.shift
        if self.live and self.last is not None and abs(t - self.last) > MAX_TIME_JUMP_S:
            log.warning("timestamp jump of %.1f s in a live source: closing the gap", t - self.last)
            self.shift += self.last + step - t
            t = self.last + step
        self.last = t
        return t


class PacketHook(Protocol):
    """Receives a source's demuxed packets (e.g. a clip recorder's ring buffer), in the decoder
    thread. :meth:`set_origin` maps media time 0 to source time (called at the first video frame,
    and again when the live clock closes a timestamp jump); :meth:`end_session` comes when the
    segments are over, while the streams given to :meth:`begin_session` are still open."""

    def begin_session(self, streams: dict, video_index: int) -> None: ...

    def set_origin(self, source_time: float) -> None: ...

    def add(self, packet) -> None: ...

    def end_session(self) -> None: ...


@dataclass
class ReconnectPolicy:
    """How long to wait before opening a source again: ``first_s``, doubling up to ``max_s``
    while attempts keep failing; a session that delivered video starts over at ``first_s``."""

    first_s: float = 1.0
    max_s: float = 30.0
    attempts: int = 0  # failed attempts since the last session that delivered video

    def failed(self) -> float:
        """One more failed attempt; returns the wait (s) before the next one."""
        self.attempts += 1
        return min(self.max_s, self.first_s * 2.0 ** min(self.attempts - 1, 32))

    def delivered(self) -> None:
        """A session delivered video: the next failure waits ``first_s`` again."""
        self.attempts = 0


class SegmentSource:
    """Opens a source and yields its :class:`Segment` s; decoding problems end it, never raise.

    Raises :class:`SourceError` (or another :class:`MediaError` for files) when the source cannot
    be opened or has no video. After iteration, ``end_reason`` says why it ended and ``complete``
    whether it ended normally (end of file/stream or a stop request). ``packets`` receives every
    demuxed packet before it is decoded (see :class:`PacketHook`); an application that reads a
    source again after it ends (a camera reconnecting) opens a new SegmentSource per session,
    waiting as a :class:`ReconnectPolicy` says.
    """

    def __init__(
        self,
        source: str | Path,
        spec: FeatureSpec,
        *,
        realtime: bool = False,
        stop: threading.Event | None = None,
        input_format: str | None = None,
        options: dict[str, str] | None = None,
        packets: PacketHook | None = None,
    ) -> None:
        self.source = str(source)
        self.spec = spec
        self.realtime = realtime
        self.packets = packets
        self.stop = stop or threading.Event()
        kind = source_kind(self.source)
        self.kind = "device" if input_format is not None and kind == "file" else kind
        self.end_reason = "not started"
        self.complete = False
        self.failure: Exception | None = None  # an error raised while reading (a defect)
        self.clock0: float | None = None  # time.monotonic() at media time 0 (live and realtime)
        self.segments = 0
        self.media_end = 0.0  # s of video decoded
        self._container = None
        self._cutter: SegmentCutter | None = None
        self._open(input_format, options or {})

    @property
    def frames_built(self) -> int:
        """Decoded frames converted to RGB so far (never more than one per decoded frame)."""
        return 0 if self._cutter is None else self._cutter.frames_built

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def paced(self) -> bool:
        """True when input arrives at real-time speed (live sources, --realtime files)."""
        return self.live or self.realtime

    def _open(self, input_format: str | None, options: dict[str, str]) -> None:
        probed = probe(self.source) if self.kind == "file" else None
        container = _open_container(self.source, self.kind, input_format, options)
        try:
            video = (
                container.streams[probed.video_stream] if probed else _best_video_stream(container)
            )
            if video is None:
                raise SourceError(self.source, "no video stream")
            audio = _best_audio_stream(container) if probed is None else None
            if probed is not None and probed.audio_stream is not None:
                audio = container.streams[probed.audio_stream]
        except BaseException:
            container.close()
            raise
        video.thread_type = "AUTO"
        self._container, self._video, self._audio = container, video, audio
        width, height = video.codec_context.width, video.codec_context.height
        fps = probed.fps if probed else _stream_fps(video)
        self.info = SourceInfo(
            self.source,
            self.kind,
            fps,
            width,
            height,
            audio is not None,
            probed.declared_duration if probed else None,
        )

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __iter__(self) -> Iterator[Segment]:
        if self._container is None:
            raise SourceError(self.source, "already read")
        try:
            yield from self._segments()
        except Exception as e:
            self.failure = e
            raise
        finally:
            try:
                if self.packets is not None:
                    self.packets.end_session()
            finally:
                self.close()

    def _new_cutter(self) -> SegmentCutter:
        size = None
        if self.info.width and self.info.height:
            size = target_size(self.info.width, self.info.height, self.spec.resize_shortest_edge)
        return SegmentCutter(
            self.spec.segment_seconds,
            self.spec.frames_per_segment,
            self.spec.sample_rate,
            size,
            self.info.has_audio,
            self.info.fps,
        )

    def _segments(self) -> Iterator[Segment]:
        cutter = self._cutter = self._new_cutter()
        self._start_decoding(cutter)
        streams = [s for s in (self._video, self._audio) if s is not None]
        if self.packets is not None:
            self.packets.begin_session({s.index: s for s in streams}, self._video.index)
        broke = None
        try:
            for packet in self._container.demux(*streams):
                if self.stop.is_set():
                    break
                if self.packets is not None and (packet.size or packet.dts is not None):
                    self.packets.add(packet)
                frames, ok = _decode(packet)
                self._bad += not ok
                if self._bad > MAX_BAD_PACKETS:
                    broke = "too many undecodable packets"
                    break
                on_frame = (
                    self._on_video if packet.stream.index == self._video.index else self._on_audio
                )
                for frame in frames:
                    yield from self._counted(on_frame(frame, cutter))
        except _AV_ERRORS as e:
            broke = _reason(e)
        if self._resampler is not None and broke is None:
            with contextlib.suppress(*_AV_ERRORS):
                for out in self._resampler.resample(None):
                    yield from self._counted(self._add_samples(_mono(out), cutter))
        yield from self._counted(cutter.finish())
        self._set_end(cutter, broke)

    def _start_decoding(self, cutter: SegmentCutter) -> None:
        """Timeline origin and audio alignment (files: as iter_audio does; live: first frame)."""
        self._bad = 0
        self._clock = _LiveClock(self.live)
        self._video_start: float | None = None if self.live else _stream_start_seconds(self._video)
        self._skip = 0  # leading audio samples to discard (audio that starts before the video)
        self._resampler = None
        if self._audio is None:
            return
        self._resampler = av.AudioResampler(
            format="flt", layout="mono", rate=self.spec.sample_rate, options=_RESAMPLER_OPTIONS
        )
        if not self.live:
            offset = _stream_start_seconds(self._audio) - _stream_start_seconds(self._video)
            cutter.add_silence(round(offset * self.spec.sample_rate))  # audio that starts late
            self._skip = max(0, round(-offset * self.spec.sample_rate))

    def _on_video(self, frame, cutter: SegmentCutter) -> list[Segment]:
        if self._video_start is None:  # live: the first frame is time 0
            self._video_start = _frame_seconds(frame, 0.0, None, self.info.fps)
        step = 1.0 / self.info.fps if self.info.fps > 0 else 0.0
        shift = self._clock.shift if cutter.last_time is not None else None
        t = self._clock(
            _frame_seconds(frame, self._video_start, cutter.last_time, self.info.fps), step
        )
        if self.packets is not None and self._clock.shift != shift:  # first frame, or a jump
            self.packets.set_origin(self._video_start - self._clock.shift)
        self._pace(t)
        return cutter.add_frame(frame, t, _frame_duration(frame))

    def _on_audio(self, frame, cutter: SegmentCutter) -> list[Segment]:
        if self._video_start is None:  # live: audio before the first video frame is dropped
            return []
        if not self.live and frame.pts is not None and frame.time_base is not None:
            # Files lead with audio; audio stamped far ahead of the pictures (a track starting
            # 1e5 s late) must not hold the reader: pace at most AUDIO_LAG_LIMIT_S past them.
            t = float(frame.pts * frame.time_base) - self._video_start
            self._pace(min(t, (cutter.last_time or 0.0) + AUDIO_LAG_LIMIT_S))
        frame.pts = None  # the resampler counts samples; gaps are not padded (as iter_audio)
        out: list[Segment] = []
        for piece in self._resampler.resample(frame):
            out += self._add_samples(_mono(piece), cutter)
        return out

    def _add_samples(self, samples: np.ndarray, cutter: SegmentCutter) -> list[Segment]:
        if self._skip:
            cut = min(self._skip, samples.size)
            samples, self._skip = samples[cut:], self._skip - cut
        return cutter.add_audio(samples)

    def _counted(self, segments: list[Segment]) -> Iterator[Segment]:
        for seg in segments:
            self.segments += 1
            yield seg

    def _pace(self, t: float) -> None:
        """Note the media clock at the first frame; with ``realtime``, hold decoding until ``t`` is due."""
        now = time.monotonic()
        if self.clock0 is None:
            self.clock0 = now - t
        if self.realtime:
            delay = self.clock0 + t - now
            if delay > 0:
                self.stop.wait(delay)

    def _set_end(self, cutter: SegmentCutter, broke: str | None) -> None:
        end = self.media_end = cutter.media_end
        declared = self.info.duration
        early = declared is not None and end < declared - max(
            EARLY_END_TOLERANCE_S, self.spec.segment_seconds
        )
        if cutter.last_time is None:
            reason, ok = "no video frame could be decoded" + (f" ({broke})" if broke else ""), False
        elif self.stop.is_set():
            reason, ok = f"stopped at {end:.1f} s", True
        elif broke is not None:
            reason, ok = f"source broke off at {end:.1f} s ({broke})", False
        elif early:
            reason, ok = (
                f"file ended early at {end:.1f} s of its declared {declared:.1f} s (truncated?)",
                False,
            )
        else:
            reason, ok = (
                f"end of {'file' if self.kind == 'file' else 'stream'} at {end:.1f} s",
                True,
            )
        self.end_reason, self.complete = reason, ok


def _decode(packet) -> tuple[list, bool]:
    """Frames of one packet (the decoder's flush for an empty packet) and whether it decoded."""
    try:
        return list(packet.decode()), True
    except av.error.FFmpegError:
        return [], False


def _frame_duration(frame) -> float | None:
    if frame.duration and frame.time_base is not None:
        return float(frame.duration * frame.time_base)
    return None
