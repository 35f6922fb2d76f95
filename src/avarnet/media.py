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

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avarnet.config import SAMPLE_RATE
from avarnet.errors import AvarnetError

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

log = logging.getLogger("avarnet")


class MediaError(AvarnetError):
    """A media file cannot be used; ``str(e)`` is one line naming the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line
        super().__init__(f"{self.path}: {self.reason}")


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
    return MediaInfo(path=str(path), duration=duration, num_frames=num_frames,
                     declared_duration=declared or duration, **fields)


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
    log.warning("%s: declares %.6g s but its streams end at %.3f s; using %.3f s", path, declared, end, end)
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
    size = _target_size(info.width, info.height, shortest_edge)
    return _iter_frames(Path(path), times, info, size)


def _target_size(width: int, height: int, shortest_edge: int | None) -> tuple[int, int] | None:
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
        if offset > 0:
            yield from buffer.push(np.zeros(round(offset * sample_rate), np.float32))
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
        log.warning("%s: %d non-finite audio samples (NaN or infinity) replaced (NaN: 0, inf: +-1)", path, bad)
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


def finite_samples(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """(samples with NaN -> 0 and values clipped to +-AUDIO_FULL_SCALE, count of non-finite ones)."""
    finite = np.isfinite(samples)
    bad = int(samples.size - np.count_nonzero(finite))
    if bad:
        samples = np.where(np.isnan(samples), np.float32(0.0), samples)
    if bad or np.abs(samples).max(initial=0.0) > AUDIO_FULL_SCALE:
        samples = np.clip(samples, -AUDIO_FULL_SCALE, AUDIO_FULL_SCALE).astype(np.float32, copy=False)
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
