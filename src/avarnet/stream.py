"""Live inference: a source (file, URL or capture device) -> one prediction per segment, with alerts.

Pipeline (one process)::

    decoder thread ── SegmentSource: demux + decode, cut into segments ──▶ SegmentQueue (bounded)
    main thread    ── SegmentEncoder (MobileViT, Wav2Vec2 with left context) ──▶ StreamingPredictor
                   ── AlertTracker ──▶ records (JSON lines, live view, webhook)

The decoder never waits on the model for live sources and ``--realtime`` files: when the queue is
full the oldest segment is dropped and counted. Files read as fast as possible block instead (no
drops), so their scores equal ``predict --causal`` for the same file, which uses the same
:class:`SegmentSource` and :class:`SegmentEncoder` (:func:`causal_features`).

A stream cannot look ahead, so features differ from ``extract`` in one respect: Wav2Vec2 runs per
segment over the segment's audio plus ``AUDIO_CONTEXT_SECONDS`` of the audio before it (extract runs
it over 10-s chunks of the whole track). The video vector is the same frame through the same encoder.

Sources: an existing path is a file (``/dev/video*`` is a V4L2 capture device on Linux); anything
with ``://`` is a network URL (RTSP is read over TCP). Other capture APIs are reached with
``input_format`` (``avfoundation`` on macOS, ``dshow`` on Windows) and FFmpeg ``options``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import av
import numpy as np
import torch

from . import media
from .alerts import AlertRule, AlertTracker, WebhookPoster
from .checkpoint import Checkpoint
from .config import FeatureSpec
from .encoders import AudioEncoder, resolve_device
from .extract import Extractor

# Decoding helpers of media.read_frames / media.iter_audio: a stream picks the same frames and
# produces the same samples as extraction does.
from .media import (
    _AV_ERRORS,
    _RESAMPLER_OPTIONS,
    _best_audio_stream,
    _best_video_stream,
    _frame_seconds,
    _mono,
    _reason,
    _stream_start_seconds,
    _target_size,
    _to_rgb,
)
from .predict import _window_probs, anomaly_scores, model_input

log = logging.getLogger("avarnet")

AUDIO_CONTEXT_SECONDS = 1.0  # Wav2Vec2 sees this much audio before each segment
QUEUE_SEGMENTS = 8  # decoded segments waiting for the model (~0.5 MB each at 288p)
BATCH_SEGMENTS = 8  # most segments encoded together when the model is behind
CPU_FRAME_BATCH = 4  # MobileViT frames per CPU forward (larger batches fall out of cache: slower)
GPU_FRAME_BATCH = 64
AUDIO_LAG_LIMIT_S = 5.0  # a segment waits at most this long (media time) for late audio
MAX_AUDIO_HELD_S = (
    60.0  # audio running ahead of the video by more than this is dropped (oldest first)
)
READ_TIMEOUT_S = 10.0  # network sources: no data for this long ends the stream
OPEN_TIMEOUT_S = 15.0
STOP_GRACE_S = 3.0  # after a stop request, how long to wait for a decoder stuck in a read
POLL_S = 0.1
MAX_TIME_JUMP_S = 10.0  # live sources: a timestamp jump larger than this is a discontinuity
TOP_K = 3  # probabilities listed per segment record
EARLY_END_TOLERANCE_S = 1.0  # files: ending this much before the declared duration is a truncation
LINUX_CAPTURE_FORMAT = "v4l2"


class SourceError(media.MediaError):
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
    ``media.read_frames`` picks them); its audio is samples [round(i*s*sr), round((i+1)*s*sr)) of
    the track aligned so sample 0 is video time 0 (as ``media.iter_audio``). A segment is handed
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
        self._frame_seconds = 0.0  # duration of the last frame
        self._emit = 0  # next segment to hand out
        self._audio: list[np.ndarray] = []
        self._audio_base = 0  # absolute index of the first held sample
        self._audio_total = 0  # samples received so far

    @property
    def last_time(self) -> float | None:
        """Time (s) of the last decoded frame, None before the first."""
        return None if self._prev is None else self._prev[1]

    @property
    def audio_held(self) -> int:
        """Audio samples held for segments not yet handed out."""
        return self._audio_total - self._audio_base

    @property
    def media_end(self) -> float:
        """End (s) of the video decoded so far: last frame time plus its duration."""
        return 0.0 if self._prev is None else self._prev[1] + self._frame_seconds

    def _target(self, j: int) -> float:
        i, r = divmod(j, self.k)
        return (i + (r + 0.5) / self.k) * self.seg

    def add_frame(self, frame, t: float, frame_seconds: float | None = None) -> list[Segment]:
        """A decoded video frame at ``t`` seconds (presentation order); returns finished segments."""
        while t >= self._target(self._next_target):
            target = self._target(self._next_target)
            prev = self._prev
            nearer_prev = prev is not None and target - prev[1] <= t - target
            self._chosen.append(_to_rgb(prev[0] if nearer_prev else frame, self.size))
            self._next_target += 1
        self._prev = (frame, t)
        self._frame_seconds = frame_seconds or (1.0 / self.fps if self.fps > 0 else 0.0)
        return self._finished()

    def add_audio(self, samples: np.ndarray) -> list[Segment]:
        """Mono float32 samples continuing the aligned track; returns finished segments.

        At most MAX_AUDIO_HELD_S of audio is held: if the video stalls (or ends) while audio keeps
        coming, the oldest held samples are dropped, so memory stays bounded.
        """
        if samples.size:
            self._audio.append(samples)
            self._audio_total += samples.size
        excess = self.audio_held - round(MAX_AUDIO_HELD_S * self.sr)
        if excess > 0:
            self._take_audio(self._audio_base, self._audio_base + excess)
        return self._finished()

    def _bounds(self, i: int) -> tuple[int, int]:
        return round(i * self.seg * self.sr), round((i + 1) * self.seg * self.sr)

    def _audio_ready(self, i: int) -> bool:
        if not self.has_audio or self._audio_total >= self._bounds(i)[1]:
            return True
        last = self.last_time
        return last is not None and last - (i + 1) * self.seg > self.audio_lag_limit_s

    def _finished(self) -> list[Segment]:
        out = []
        while self._next_target >= (self._emit + 1) * self.k and self._audio_ready(self._emit):
            out.append(self._make(self._emit, (self._emit + 1) * self.seg))
        return out

    def _take_audio(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) that were received; older ones are released."""
        held = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        a, b = max(0, lo - self._audio_base), max(0, hi - self._audio_base)
        out = held[a:b].copy()
        rest = held[b:]
        self._audio = [rest] if rest.size else []
        self._audio_base += min(b, held.size)
        return out

    def _make(self, i: int, end: float) -> Segment:
        frames = np.stack(self._chosen[: self.k])
        del self._chosen[: self.k]
        audio = self._take_audio(*self._bounds(i)) if self.has_audio else np.zeros(0, np.float32)
        self._emit += 1
        return Segment(i, i * self.seg, end, frames, audio, time.monotonic())

    def finish(self) -> list[Segment]:
        """End of input: hand out the remaining segments (missing frames repeat the last frame)."""
        if self._prev is None:
            return []
        end = self.media_end
        total = max(self._emit, math.ceil(end / self.seg - 1e-9), 1)
        last = None
        while self._next_target < total * self.k:
            last = last if last is not None else _to_rgb(self._prev[0], self.size)
            self._chosen.append(last.copy())
            self._next_target += 1
        out = []
        while self._emit < total:
            out.append(self._make(self._emit, min((self._emit + 1) * self.seg, end)))
        return out


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


class SegmentSource:
    """Opens a source and yields its :class:`Segment` s; decoding problems end it, never raise.

    Raises :class:`SourceError` (or another ``media.MediaError`` for files) when the source cannot
    be opened or has no video. After iteration, ``end_reason`` says why it ended and ``complete``
    whether it ended normally (end of file/stream or a stop request).
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
    ) -> None:
        self.source = str(source)
        self.spec = spec
        self.realtime = realtime
        self.stop = stop or threading.Event()
        kind = source_kind(self.source)
        self.kind = "device" if input_format is not None and kind == "file" else kind
        self.end_reason = "not started"
        self.complete = False
        self.clock0: float | None = None  # time.monotonic() at media time 0 (live and realtime)
        self.segments = 0
        self.media_end = 0.0  # s of video decoded
        self._container = None
        self._open(input_format, options or {})

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def paced(self) -> bool:
        """True when input arrives at real-time speed (live sources, --realtime files)."""
        return self.live or self.realtime

    def _open(self, input_format: str | None, options: dict[str, str]) -> None:
        probed = media.probe(self.source) if self.kind == "file" else None
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
        fps = probed.fps if probed else media._stream_fps(video)
        self.info = SourceInfo(
            self.source,
            self.kind,
            fps,
            width,
            height,
            audio is not None,
            probed.duration if probed else None,
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
        finally:
            self.close()

    def _cutter(self) -> SegmentCutter:
        size = None
        if self.info.width and self.info.height:
            size = _target_size(self.info.width, self.info.height, self.spec.resize_shortest_edge)
        return SegmentCutter(
            self.spec.segment_seconds,
            self.spec.frames_per_segment,
            self.spec.sample_rate,
            size,
            self.info.has_audio,
            self.info.fps,
        )

    def _segments(self) -> Iterator[Segment]:
        cutter = self._cutter()
        self._start_decoding(cutter)
        streams = [s for s in (self._video, self._audio) if s is not None]
        broke = None
        try:
            for packet in self._container.demux(*streams):
                if self.stop.is_set():
                    break
                frames, ok = _decode(packet)
                self._bad += not ok
                if self._bad > media.MAX_BAD_PACKETS:
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
        """Timeline origin and audio alignment (files: as media.iter_audio does; live: first frame)."""
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
            if offset > 0:
                cutter.add_audio(np.zeros(round(offset * self.spec.sample_rate), np.float32))
            self._skip = max(0, round(-offset * self.spec.sample_rate))

    def _on_video(self, frame, cutter: SegmentCutter) -> list[Segment]:
        if self._video_start is None:  # live: the first frame is time 0
            self._video_start = _frame_seconds(frame, 0.0, None, self.info.fps)
        step = 1.0 / self.info.fps if self.info.fps > 0 else 0.0
        t = self._clock(
            _frame_seconds(frame, self._video_start, cutter.last_time, self.info.fps), step
        )
        self._pace(t)
        return cutter.add_frame(frame, t, _frame_duration(frame))

    def _on_audio(self, frame, cutter: SegmentCutter) -> list[Segment]:
        if self._video_start is None:  # live: audio before the first video frame is dropped
            return []
        if not self.live and frame.pts is not None and frame.time_base is not None:
            self._pace(
                float(frame.pts * frame.time_base) - self._video_start
            )  # files lead with audio
        frame.pts = None  # the resampler counts samples; gaps are not padded (as media.iter_audio)
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


# ---------------------------------------------------------------------------------- hand-over


class SegmentQueue:
    """Bounded hand-over between the decoder thread and the model.

    ``drop_oldest``: a full queue discards its oldest segment (counted in ``dropped``) so the
    producer never waits; otherwise :meth:`put` blocks until there is room.
    """

    def __init__(self, capacity: int = QUEUE_SEGMENTS, drop_oldest: bool = True) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self.high_water = 0
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._aborted = False

    def put(self, item) -> bool:
        """Add ``item``; False when the queue was aborted (the consumer is gone)."""
        with self._cond:
            while not self.drop_oldest and len(self._items) >= self.capacity and not self._aborted:
                self._cond.wait(POLL_S)
            if self._aborted:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """No more items will come; getters drain what is left, then get None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Consumer gone: discard everything and release a waiting producer."""
        with self._cond:
            self._aborted = self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def get_batch(self, max_items: int, timeout: float) -> list | None:
        """Up to ``max_items`` waiting items (at least one, waiting up to ``timeout`` s for it).

        Returns [] on timeout and None once the queue is closed and empty.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None if self._closed else []
            out = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
            self._cond.notify_all()
            return out


# ----------------------------------------------------------------------------------- features


def quantize_audio_encoder(encoder: AudioEncoder) -> None:
    """Replace Wav2Vec2's linear layers by dynamically quantised int8 ones, in place (CPU only)."""
    if encoder.device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on the CPU only")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        encoder.model = torch.ao.quantization.quantize_dynamic(
            encoder.model, {torch.nn.Linear}, dtype=torch.qint8
        )


class SegmentEncoder:
    """Feature vectors of consecutive segments using only the past: the stream's and ``predict --causal``'s.

    Video: the extractor's MobileViT on each segment's frames (mean over its k frames), exactly as
    ``extract``. Audio: Wav2Vec2 over [context | segment], where context is the last
    ``audio_context_seconds`` of the audio before the segment; the output frames whose centres fall
    inside the segment are mean-pooled (as ``extract`` pools its chunk frames). A segment without
    samples gets a zero vector and ``audio_mask`` False; a gap in segment indices (dropped
    segments) or in the audio clears the context.
    """

    def __init__(
        self,
        extractor: Extractor,
        audio_context_seconds: float = AUDIO_CONTEXT_SECONDS,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if audio_context_seconds < 0:
            raise ValueError("audio_context_seconds must be >= 0")
        self.extractor = extractor
        self.spec = extractor.spec
        self.context_samples = round(audio_context_seconds * self.spec.sample_rate)
        self.autocast_dtype = autocast_dtype
        self._tail = np.zeros(0, np.float32)
        self._last_index: int | None = None

    def reset(self) -> None:
        """Forget the audio context (a new, unrelated stream follows)."""
        self._tail = np.zeros(0, np.float32)
        self._last_index = None

    def encode(self, segments: Sequence[Segment]) -> dict[str, np.ndarray]:
        """{"video": (n, Dv), "audio": (n, Da), "audio_mask": (n,) bool} for segments in order."""
        if not segments:
            raise ValueError("encode() needs at least one segment")
        with self._autocast():
            video = self._video(segments)
            audio, mask = self._audio(segments)
        return {"video": video, "audio": audio, "audio_mask": mask}

    def _autocast(self):
        device = self.extractor.video.device
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _video(self, segments: Sequence[Segment]) -> np.ndarray:
        k = segments[0].frames.shape[0]
        frames = np.concatenate([s.frames for s in segments])  # (n*k, H, W, 3)
        batch = GPU_FRAME_BATCH if self.extractor.video.device.type == "cuda" else CPU_FRAME_BATCH
        out = self.extractor.video.encode(frames, batch_size=batch)  # (n*k, Dv)
        return out.reshape(len(segments), k, -1).mean(axis=1).astype(np.float32)

    def _audio(self, segments: Sequence[Segment]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.extractor.audio
        audio = np.zeros((len(segments), enc.dim), np.float32)
        mask = np.zeros(len(segments), bool)
        windows = self._windows(segments)  # i -> (window, context samples)
        feats = _encode_windows(enc, [w for w, _ in windows.values()])
        for (i, (_, context)), f in zip(windows.items(), feats, strict=True):
            times = enc.frame_times(len(f), -context / enc.sample_rate)  # s from the segment start
            keep = (times >= 0) & (times < self.spec.segment_seconds)
            if keep.any():
                audio[i] = f[keep].astype(np.float64).mean(axis=0).astype(np.float32)
                mask[i] = True
        return audio, mask

    def _windows(self, segments: Sequence[Segment]) -> dict[int, tuple[np.ndarray, int]]:
        """[context | segment] sample windows of the segments with audio, and their context lengths."""
        out = {}
        for i, seg in enumerate(segments):
            if self._last_index is not None and seg.index != self._last_index + 1:
                self._tail = self._tail[:0]  # a gap: the context is not this segment's past
            self._last_index = seg.index
            if seg.audio.size == 0:
                self._tail = self._tail[:0]
                continue
            window = np.concatenate([self._tail, seg.audio])  # (C + S,)
            out[i] = (window, len(self._tail))
            keep = min(self.context_samples, len(window))
            self._tail = window[len(window) - keep :]
        return out


def _encode_windows(enc: AudioEncoder, windows: list[np.ndarray]) -> list[np.ndarray]:
    """Wav2Vec2 frames (F_i, Da) of each window, as ``enc.encode_chunk`` gives them, equal lengths batched."""
    out: list[np.ndarray | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_length.setdefault(len(w), []).append(i)
    for length, idx in by_length.items():
        # (B, S): normalised and padded exactly as encode_chunk does for one window
        x = np.stack([enc.normalise(windows[i]) for i in idx]).astype(np.float32)
        if length < enc.receptive_field:
            x = np.pad(x, ((0, 0), (0, enc.receptive_field - length)))
        with torch.inference_mode():
            inputs = torch.from_numpy(x).to(enc.device)
            hidden = enc.model(input_values=inputs).last_hidden_state  # (B, F, Da)
        hidden = hidden.float().cpu().numpy()
        for j, i in enumerate(idx):
            out[i] = hidden[j]
    return out


def causal_features(
    video: str | Path,
    extractor: Extractor,
    audio_context_seconds: float = AUDIO_CONTEXT_SECONDS,
) -> tuple[dict[str, np.ndarray], float]:
    """Features of a whole file as a stream sees them (same segments, same look-back-only audio).

    Returns ({"video": (T, Dv), "audio": (T, Da), "audio_mask": (T,)}, media end in seconds).
    """
    source = SegmentSource(video, extractor.spec)
    encoder = SegmentEncoder(extractor, audio_context_seconds)
    parts, batch = [], []
    for segment in source:
        batch.append(segment)
        if len(batch) == BATCH_SEGMENTS:
            parts.append(encoder.encode(batch))
            batch = []
    if batch:
        parts.append(encoder.encode(batch))
    if not parts:
        raise media.UnreadableMediaError(video, source.end_reason)
    tensors = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return tensors, source.media_end


# ---------------------------------------------------------------------------------- predictor


class StreamingPredictor:
    """One prediction per pushed segment, from that segment and the ones before it.

    Keeps the last L = ``seq_len`` normalised inputs; the prediction for segment t is the last step
    of the model run on segments [t-L+1 .. t], exactly ``step_probabilities(..., causal=True)``.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        extractor: Extractor | None = None,
        *,
        audio_context_seconds: float = AUDIO_CONTEXT_SECONDS,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.ckpt = ckpt
        self.seq_len = ckpt.train_config.seq_len
        self.segment_seconds = ckpt.spec.segment_seconds
        self.encoder = None
        if extractor is not None:
            self.encoder = SegmentEncoder(extractor, audio_context_seconds, autocast_dtype)
        self._window: deque[np.ndarray] = deque(maxlen=self.seq_len)
        self.index = 0  # index of the next segment

    def reset(self) -> None:
        """Start over: empty window, no audio context, segment index 0."""
        self._window.clear()
        self.index = 0
        if self.encoder is not None:
            self.encoder.reset()

    def push_features(
        self,
        video: np.ndarray,
        audio: np.ndarray,
        has_audio: bool = True,
        *,
        start: float | None = None,
        end: float | None = None,
    ) -> dict:
        """Features of the next segment, video (Dv,) and audio (Da,) -> its prediction.

        Returns {"segment", "start", "end", "label", "anomaly_score", "probabilities"}; times default
        to the segment index times ``segment_seconds``.
        """
        tensors = {
            "video": np.asarray(video, np.float32)[None],  # (1, Dv)
            "audio": np.asarray(audio, np.float32)[None],  # (1, Da)
            "audio_mask": np.array([bool(has_audio)]),
        }
        self._window.append(model_input(self.ckpt, tensors)[0])  # (D,)
        n = len(self._window)
        x = np.stack(self._window)  # (n, D)
        probs = _window_probs(self.ckpt.model, x, [0], [n], self.seq_len)[0, n - 1]  # (C,)
        index = self.index
        self.index += 1
        start = index * self.segment_seconds if start is None else start
        end = start + self.segment_seconds if end is None else end
        classes = self.ckpt.classes
        return {
            "segment": index,
            "start": float(start),
            "end": float(end),
            "label": classes[int(probs.argmax())],
            "anomaly_score": float(anomaly_scores(probs[None], classes)[0]),
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
        }

    def push(self, frames: np.ndarray, audio: np.ndarray) -> dict:
        """Raw segment -> prediction: frames (k, H, W, 3) or (H, W, 3) uint8 RGB, audio (S,) float32.

        Audio is this segment's samples at the spec's rate (16 kHz); the predictor keeps the left
        context itself. Needs the ``extractor`` given at construction.
        """
        if self.encoder is None:
            raise ValueError(
                "push() needs a StreamingPredictor built with an extractor; use push_features()"
            )
        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 3 else frames
        start = self.index * self.segment_seconds
        seg = Segment(
            self.index, start, start + self.segment_seconds, frames, np.asarray(audio, np.float32)
        )
        f = self.encoder.encode([seg])
        return self.push_features(
            f["video"][0], f["audio"][0], bool(f["audio_mask"][0]), start=seg.start, end=seg.end
        )


# -------------------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class StreamOptions:
    """How :func:`run_stream` reads and reports."""

    realtime: bool = False  # files: pace input at the file's own speed (live sources always are)
    rule: AlertRule = field(default_factory=AlertRule)
    queue_segments: int = QUEUE_SEGMENTS
    batch_segments: int = BATCH_SEGMENTS
    audio_context_seconds: float = AUDIO_CONTEXT_SECONDS
    input_format: str | None = None  # FFmpeg input format, e.g. v4l2, avfoundation, dshow
    options: dict[str, str] = field(default_factory=dict)  # FFmpeg demuxer/protocol options
    autocast_dtype: torch.dtype | None = None  # e.g. torch.float16 on a GPU


@dataclass
class StreamSummary:
    """How a stream went; ``record()`` is its JSON summary line."""

    source: str
    end_reason: str = "not started"
    complete: bool = False  # ended normally (end of input or a stop request)
    interrupted: bool = False
    segments: int = 0
    dropped: int = 0
    media_seconds: float = 0.0
    wall_seconds: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    compute_ms: list[float] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    webhook: dict | None = None
    label: str | None = None  # argmax of the mean probabilities over all segments
    queue_high_water: int = 0

    @property
    def realtime_factor(self) -> float:
        """Seconds of media processed per wall-clock second."""
        return self.media_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def record(self) -> dict:
        return {
            "type": "summary",
            "source": self.source,
            "end_reason": self.end_reason,
            "complete": self.complete,
            "interrupted": self.interrupted,
            "segments": self.segments,
            "dropped": self.dropped,
            "media_seconds": round(self.media_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "realtime_factor": round(self.realtime_factor, 3),
            "latency_ms": _percentiles(self.latency_ms),
            "compute_ms": _percentiles(self.compute_ms),
            "lag_s": {"final": round(self.lag_s[-1], 3), "max": round(max(self.lag_s), 3)}
            if self.lag_s
            else None,
            "queue_high_water": self.queue_high_water,
            "label": self.label,
            "events": self.events,
            "webhook": self.webhook,
        }


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    p50, p95 = np.percentile(values, [50, 95])
    return {
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "max": round(float(max(values)), 1),
    }


def segment_record(
    pred: dict, latency_ms: float, compute_ms: float, lag_s: float | None, has_audio: bool
) -> dict:
    """The JSON line of one segment: time span, label, score, top probabilities, latency."""
    top = sorted(pred["probabilities"].items(), key=lambda kv: -kv[1])[:TOP_K]
    return {
        "type": "segment",
        "segment": pred["segment"],
        "start": round(pred["start"], 6),
        "end": round(pred["end"], 6),
        "label": pred["label"],
        "anomaly_score": round(pred["anomaly_score"], 6),
        "top": {c: round(p, 6) for c, p in top},
        "has_audio": has_audio,
        "latency_ms": round(latency_ms, 1),
        "compute_ms": round(compute_ms, 1),
        "lag_s": None if lag_s is None else round(lag_s, 3),
    }


class _Runner:
    """Decoder thread -> queue -> encoders/model/alerts in the calling thread."""

    def __init__(
        self,
        source: SegmentSource,
        predictor: StreamingPredictor,
        options: StreamOptions,
        emit: Callable[[dict], None],
        webhook: WebhookPoster | None,
    ) -> None:
        self.source = source
        self.predictor = predictor
        self.options = options
        self.emit = emit
        self.webhook = webhook
        self.tracker = AlertTracker(options.rule)
        self.queue = SegmentQueue(options.queue_segments, drop_oldest=source.paced)
        self.summary = StreamSummary(source.source)
        self._prob_sum: np.ndarray | None = None
        self._reader_error: str | None = None

    def run(self) -> StreamSummary:
        reader = threading.Thread(target=self._pump, name="avarnet-decoder", daemon=True)
        started = time.monotonic()
        reader.start()
        try:
            self._consume()
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self.source.stop.set()
            self.queue.abort()
        finally:
            self.summary.wall_seconds = time.monotonic() - started
            reader.join(timeout=STOP_GRACE_S)
            self._finish(reader.is_alive())
        return self.summary

    def _pump(self) -> None:
        try:
            for segment in self.source:
                if not self.queue.put(segment):
                    break
        except Exception as e:  # a decoder failure ends the stream; the consumer reports it
            self._reader_error = f"{type(e).__name__}: {e}"
        finally:
            self.queue.close()

    def _consume(self) -> None:
        stop_seen: float | None = None
        while True:
            batch = self.queue.get_batch(self.options.batch_segments, POLL_S)
            if batch is None:
                return
            if batch:
                self._process(batch)
            elif self.source.stop.is_set():
                stop_seen = stop_seen or time.monotonic()
                if time.monotonic() - stop_seen > STOP_GRACE_S:
                    return  # the decoder is stuck in a read: do not wait for it

    def _process(self, batch: list[Segment]) -> None:
        t0 = time.monotonic()
        feats = self.predictor.encoder.encode(batch)
        for i, seg in enumerate(batch):
            pred = self.predictor.push_features(
                feats["video"][i],
                feats["audio"][i],
                bool(feats["audio_mask"][i]),
                start=seg.start,
                end=seg.end,
            )
            now = time.monotonic()
            lag = (
                now - (self.source.clock0 + seg.end)
                if self.source.paced and self.source.clock0 is not None
                else None
            )
            record = segment_record(
                pred, (now - seg.ready) * 1e3, (now - t0) * 1e3, lag, bool(feats["audio_mask"][i])
            )
            self._account(pred, record)
            self.emit(record)
            for update in self.tracker.update(
                seg.start, seg.end, pred["anomaly_score"], pred["probabilities"]
            ):
                self._event(update.event.record())

    def _account(self, pred: dict, record: dict) -> None:
        s = self.summary
        s.segments += 1
        s.media_seconds = pred["end"]
        s.latency_ms.append(record["latency_ms"])
        s.compute_ms.append(record["compute_ms"])
        if record["lag_s"] is not None:
            s.lag_s.append(record["lag_s"])
        probs = np.array(list(pred["probabilities"].values()))
        self._prob_sum = probs if self._prob_sum is None else self._prob_sum + probs

    def _event(self, record: dict) -> None:
        if record["state"] == "closed":
            self.summary.events.append(record)
        self.emit(record)
        if self.webhook is not None:
            self.webhook.post(record)

    def _finish(self, reader_stuck: bool) -> None:
        for update in self.tracker.finish():
            self._event(update.event.record())
        s = self.summary
        s.dropped, s.queue_high_water = self.queue.dropped, self.queue.high_water
        s.end_reason, s.complete = self.source.end_reason, self.source.complete
        if self._reader_error is not None:
            s.end_reason, s.complete = f"decoder failed: {self._reader_error}", False
        elif s.interrupted:
            s.end_reason = f"interrupted at {s.media_seconds:.1f} s"
        elif reader_stuck:
            s.end_reason, s.complete = (
                f"stopped at {s.media_seconds:.1f} s (the source did not answer)",
                True,
            )
        if self._prob_sum is not None:
            s.label = self.predictor.ckpt.classes[int(self._prob_sum.argmax())]
        if self.webhook is not None:
            s.webhook = self.webhook.close().to_dict()
        self.emit(s.record())


PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # int8: Wav2Vec2 linears dynamically quantised (CPU)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a precision runs the encoders in (None: fp32 weights and activations).

    bf16 runs on CPUs with bf16 instructions (AVX-512 BF16 / AMX) and on GPUs; fp16 on GPUs only.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a GPU; on a CPU use bf16 or int8")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on the CPU only; on a GPU use fp16")
    if (
        precision == "bf16"
        and device.type == "cpu"
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        log.warning("this CPU has no bf16 instructions: bf16 will be slower than fp32")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def stream_extractor(ckpt: Checkpoint, device: str = "auto", precision: str = "fp32") -> Extractor:
    """The encoders a checkpoint's feature spec names; ``precision`` int8 quantises Wav2Vec2 (CPU)."""
    dev = resolve_device(device)
    autocast_dtype(precision, dev)  # validates
    extractor = Extractor.from_spec(ckpt.spec, str(dev), ckpt.encoder_state)
    if precision == "int8":
        quantize_audio_encoder(extractor.audio)
    return extractor


def open_source(
    source: str | Path,
    spec: FeatureSpec,
    options: StreamOptions | None = None,
    stop: threading.Event | None = None,
) -> SegmentSource:
    """Open ``source`` for streaming as ``options`` say; raises SourceError / media.MediaError."""
    options = options or StreamOptions()
    return SegmentSource(
        source,
        spec,
        realtime=options.realtime,
        stop=stop,
        input_format=options.input_format,
        options=options.options,
    )


def run_stream(
    source: str | Path | SegmentSource,
    ckpt: Checkpoint,
    extractor: Extractor,
    emit: Callable[[dict], None],
    options: StreamOptions | None = None,
    *,
    stop: threading.Event | None = None,
    webhook: WebhookPoster | None = None,
) -> StreamSummary:
    """Read ``source`` to its end (or until ``stop`` is set) and emit one record per segment.

    ``source`` is a path or URL, or a :class:`SegmentSource` opened by :func:`open_source` (then
    its own reading options and stop event apply). ``emit`` receives, in order: ``{"type":
    "segment", ...}`` per segment, ``{"type": "event", "state": "open"|"closed", ...}`` per alert
    change (also POSTed to ``webhook``), and a final ``{"type": "summary", ...}``. On a stop request
    or end of input, queued segments are still processed and open events closed. Raises
    :class:`SourceError` / ``media.MediaError`` when the source cannot be opened.
    """
    options = options or StreamOptions()
    src = (
        source
        if isinstance(source, SegmentSource)
        else open_source(source, ckpt.spec, options, stop)
    )
    predictor = StreamingPredictor(
        ckpt,
        extractor,
        audio_context_seconds=options.audio_context_seconds,
        autocast_dtype=options.autocast_dtype,
    )
    return _Runner(src, predictor, options, emit, webhook).run()


# ----------------------------------------------------------------------------------- live view


BAR_WIDTH = 20
CLEAR_LINE = "\r\x1b[2K"
RED, BOLD, RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LiveView:
    """Terminal view: one status line rewritten per segment, a permanent line per alert change."""

    def __init__(self, out: TextIO, threshold: float) -> None:
        self.out = out
        self.threshold = threshold
        self.open_event: dict | None = None

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def __call__(self, record: dict) -> None:
        kind = record["type"]
        if kind == "segment":
            self.write(CLEAR_LINE + self.status_line(record))
        elif kind == "event":
            self.open_event = record if record["state"] == "open" else None
            self.write(CLEAR_LINE + self.event_line(record) + "\n")
        elif kind == "summary":
            self.write(CLEAR_LINE)

    def status_line(self, r: dict) -> str:
        score = r["anomaly_score"]
        filled = min(BAR_WIDTH, round(score * BAR_WIDTH))
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        hot = score >= self.threshold
        colour = f"{RED}{BOLD}" if hot else ""
        lag = f"  lag {r['lag_s']:.1f} s" if r.get("lag_s") is not None else ""
        alert = (
            f"  {RED}ALERT #{self.open_event['id']} {self.open_event['class']}{RESET}"
            if self.open_event
            else ""
        )
        return (
            f"{_clock(r['start'])}  {r['label']:<14s} {colour}{bar} {score:.2f}{RESET if hot else ''}"
            f"  {r['latency_ms']:.0f} ms{lag}{alert}"
        )

    @staticmethod
    def event_line(r: dict) -> str:
        if r["state"] == "open":
            return f"{RED}{BOLD}{_clock(r['start'])}  ALERT #{r['id']} opened: {r['class']} (score {r['peak_score']:.2f}){RESET}"
        return (
            f"{_clock(r['end'])}  alert #{r['id']} closed: {r['class']}, {_clock(r['start'])}-{_clock(r['end'])},"
            f" peak {r['peak_score']:.2f} ({r['closed_by']})"
        )


def summary_text(record: dict) -> str:
    """Human-readable lines of a summary record."""
    lat, comp, lag = record["latency_ms"], record["compute_ms"], record["lag_s"]
    lines = [
        f"stream ended: {record['end_reason']}",
        f"  {record['segments']} segments ({record['media_seconds']:.1f} s of media) in {record['wall_seconds']:.1f} s"
        f" = {record['realtime_factor']:.2f}x real time; dropped {record['dropped']}",
    ]
    if lat:
        lines.append(
            f"  latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms"
            f" (compute p50 {comp['p50']:.0f} ms, p95 {comp['p95']:.0f} ms)"
        )
    if lag:
        lines.append(f"  lag behind the source: final {lag['final']:.2f} s, max {lag['max']:.2f} s")
    if record["label"]:
        lines.append(f"  overall: {record['label']}")
    lines.append(f"  events: {len(record['events'])}")
    lines += [
        f"    #{e['id']} {e['class']} {e['start']:.1f}-{e['end']:.1f} s, peak {e['peak_score']:.2f}"
        for e in record["events"]
    ]
    if record["webhook"]:
        w = record["webhook"]
        lines.append(
            f"  webhook: {w['delivered']} delivered, {w['failed']} failed, {w['dropped']} dropped"
        )
    return "\n".join(lines)


class StreamOutput:
    """Where records go: JSON lines to a text stream, the live view, plain event lines otherwise."""

    def __init__(self, jsonl: TextIO | None, view: LiveView | None, text: TextIO) -> None:
        self.jsonl = jsonl
        self.view = view
        self.text = text
        self.summary: dict = {}

    def __call__(self, record: dict) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.jsonl.flush()
        if self.view is not None:
            self.view(record)
        elif record["type"] == "event":
            print(
                f"event #{record['id']} {record['state']}: {record['class']} from {record['start']:.1f} s"
                f" (peak {record['peak_score']:.2f})",
                file=self.text,
                flush=True,
            )
        if record["type"] == "summary":
            self.summary = record


@contextlib.contextmanager
def stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C sets ``stop`` (graceful: queued segments are finished); a second one aborts."""

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nstopping: finishing queued segments (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
