"""Features from the spec: one code path for extract, predict, predict --causal and stream.

A :class:`~avarnet.config.FeatureSpec` says how features are made:

* video: MobileViT on the frame(s) nearest each segment's centre (mean over k frames);
* audio ``chunked``: Wav2Vec2 over ``audio_chunk_seconds`` chunks of the whole track, output frames
  mean-pooled per segment (sees up to one chunk of the future);
* audio ``causal``: Wav2Vec2 per segment over [look-back | segment], the look-back being the last
  ``audio_context_seconds`` of audio before the segment; the output frames whose centres fall in
  the segment are mean-pooled. This is what a live stream can compute.

:class:`Extractor` computes a whole file's features from its spec. With a causal spec it cuts the
file with :class:`avarnet.media.SegmentSource` and encodes with :class:`SegmentEncoder`, the very
objects a stream uses, so ``extract`` and ``stream`` produce the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import media
from .config import DEFAULT_AUDIO_CONTEXT_S, FeatureSpec
from .encoders import AudioEncoder, VideoEncoder, check_backbone
from .errors import AvarnetError
from .gate import Gate, GateState
from .media import Segment, SegmentSource, segment_times
from .runtime import autocast, configure_cpu, precision_dtype

log = logging.getLogger("avarnet")

# Batch sizes per forward pass, by device. On a CPU, MobileViT-small slows down past 4 frames a
# pass (its activations fall out of cache: 2 cores gave 16.5 frames/s at 4, 9.5 at 16, 8.2 at 32)
# and Wav2Vec2-base gains no speed past one or two 10-s chunks, while each chunk costs ~170 MiB.
CPU_FRAME_BATCH = 4
GPU_FRAME_BATCH = 64
CPU_AUDIO_BATCH = 2  # equal-length audio chunks
GPU_AUDIO_BATCH = 8
BATCH_SEGMENTS = 8  # segments encoded together when reading a whole file causally


def frame_batch(device: torch.device) -> int:
    """MobileViT frames per forward pass on ``device``."""
    return GPU_FRAME_BATCH if device.type == "cuda" else CPU_FRAME_BATCH


def audio_batch(device: torch.device) -> int:
    """Equal-length Wav2Vec2 chunks per forward pass on ``device``."""
    return GPU_AUDIO_BATCH if device.type == "cuda" else CPU_AUDIO_BATCH


class FeatureError(AvarnetError):
    """Features cannot be made as asked (e.g. random weights without their encoder state)."""


def pool_audio_frames(
    feats: np.ndarray,
    times: np.ndarray,
    T: int,
    segment_seconds: float,
    sums: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Add Wav2Vec2 frames (F, D) with centre times (F,) into per-segment sums (T, D), counts (T,)."""
    seg = np.floor(times / segment_seconds).astype(np.int64)  # (F,)
    keep = (seg >= 0) & (seg < T)
    np.add.at(sums, seg[keep], feats[keep])
    np.add.at(counts, seg[keep], 1)


def chunked_audio(
    encoder: AudioEncoder, chunks: Iterator[np.ndarray], T: int, segment_seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """Chunked audio features: Wav2Vec2 per chunk (consecutive pieces of one track starting at
    t = 0), frames pooled per segment. Returns (T, Da) float32 and the mask (T,) of segments
    that had audio."""
    sums = np.zeros((T, encoder.dim), dtype=np.float64)
    counts = np.zeros(T, dtype=np.int64)
    offset = 0.0
    for chunk in chunks:
        feats = encoder.encode_chunk(chunk)  # (F, Da)
        times = encoder.frame_times(len(feats), offset)
        pool_audio_frames(feats, times, T, segment_seconds, sums, counts)
        offset += len(chunk) / encoder.sample_rate
    mask = counts > 0
    audio = np.zeros((T, encoder.dim), dtype=np.float32)
    audio[mask] = (sums[mask] / counts[mask, None]).astype(np.float32)
    return audio, mask


def split_chunks(samples: np.ndarray, spec: FeatureSpec) -> Iterator[np.ndarray]:
    """A track held in memory, cut as ``media.iter_audio`` cuts a file's track for chunked audio."""
    size = media.chunk_samples(spec.audio_chunk_seconds, spec.sample_rate)
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def live_spec(spec: FeatureSpec, audio_context_seconds: float | None = None) -> FeatureSpec:
    """The spec a live source computes for a checkpoint trained on ``spec``.

    A causal spec is kept (a different look-back only when asked); a chunked one cannot be computed
    live, so it becomes causal with ``audio_context_seconds`` (default DEFAULT_AUDIO_CONTEXT_S).
    """
    if spec.audio_mode == "causal" and audio_context_seconds is None:
        return spec
    context = DEFAULT_AUDIO_CONTEXT_S if audio_context_seconds is None else audio_context_seconds
    return spec.replace(audio_mode="causal", audio_context_seconds=float(context))


@dataclass
class _Context:
    """What a :class:`SegmentEncoder` keeps per source between calls."""

    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # audio look-back
    last_index: int | None = None
    last_frames: np.ndarray | None = None
    last_video: np.ndarray | None = None  # the feature of last_frames
    gate: GateState = field(default_factory=GateState)  # the motion-and-sound gate's reference
    last_audio: tuple[np.ndarray, bool] | None = None  # the last encoded segment's audio, mask


class SegmentEncoder:
    """Causal features of consecutive segments, using only the past: stream, serve, predict
    --causal and extract with a causal spec all encode through this.

    Video: MobileViT on each segment's frames (mean over its k frames), as for whole files. Audio:
    Wav2Vec2 over [context | segment], context being the last ``audio_context_seconds`` of audio
    before the segment; output frames whose centres fall inside the segment are mean-pooled. A
    segment without samples gets a zero vector and ``audio_mask`` False; a gap in segment indices
    (dropped segments) or in the audio clears the context. A segment whose frames are the previous
    segment's (a gap in the video) reuses its video vector.

    One encoder serves many sources at once (a server's cameras): :meth:`encode` takes a ``keys``
    list naming each segment's source; the audio context and the last video vector are kept per
    key, and one batch may mix sources (and frame sizes).

    With a motion-and-sound gate in the spec (:mod:`avarnet.gate`), a still, silent segment skips
    both encoders: its video, audio and audio mask repeat the last encoded segment's of its
    source, and :meth:`encode` also returns ``gated`` (n,) bool. ``segments_seen`` and
    ``segments_gated`` count them.
    """

    def __init__(
        self,
        extractor: Extractor,
        audio_context_seconds: float | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        spec = extractor.spec
        if audio_context_seconds is None:
            audio_context_seconds = live_spec(spec).audio_context_seconds
        if audio_context_seconds < 0:
            raise ValueError("audio_context_seconds must be >= 0")
        self.extractor = extractor
        self.spec = spec
        self.audio_context_seconds = float(audio_context_seconds)
        self.context_samples = round(audio_context_seconds * spec.sample_rate)
        self.autocast_dtype = autocast_dtype
        self.frames_encoded = 0  # video frames run through MobileViT so far
        self.gate = Gate.from_dict(spec.gate)  # None: every segment is encoded
        self.segments_seen = 0
        self.segments_gated = 0  # held by the gate: neither encoder ran
        self._contexts: dict[Hashable, _Context] = {}

    def reset(self, key: Hashable | None = None) -> None:
        """Forget a source's context (a new, unrelated stream follows); every source's without
        ``key``."""
        if key is None:
            self._contexts.clear()
        else:
            self._contexts.pop(key, None)

    def encode(
        self, segments: Sequence[Segment], keys: Sequence[Hashable] | None = None
    ) -> dict[str, np.ndarray]:
        """{"video": (n, Dv), "audio": (n, Da), "audio_mask": (n,) bool} for segments in order
        (per key: ``keys[i]`` names segment i's source; None: all from one source); with a gate,
        also "gated": (n,) bool, the segments held from the last encoded one."""
        if not segments:
            raise ValueError("encode() needs at least one segment")
        keys = [None] * len(segments) if keys is None else list(keys)
        if len(keys) != len(segments):
            raise ValueError("encode() needs one key per segment")
        gated = self._gated(segments, keys)
        with self._autocast():
            video = self._video(segments, keys, gated)
            audio, mask = self.encode_audio(segments, keys, gated)
        out = {"video": video, "audio": audio, "audio_mask": mask}
        if self.gate is not None:
            out["gated"] = gated
        return out

    def _gated(self, segments: Sequence[Segment], keys: list) -> np.ndarray:
        """(n,) bool: the segments the gate holds (all False without a gate)."""
        gated = np.zeros(len(segments), bool)
        self.segments_seen += len(segments)
        if self.gate is None:
            return gated
        for i, (seg, key) in enumerate(zip(segments, keys, strict=True)):
            gated[i] = self._context(key).gate.still(self.gate, seg.index, seg.frames, seg.audio)
        self.segments_gated += int(gated.sum())
        return gated

    def _context(self, key: Hashable) -> _Context:
        return self._contexts.setdefault(key, _Context())

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = self.extractor.video.device
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _video(self, segments: Sequence[Segment], keys: list, gated: np.ndarray) -> np.ndarray:
        source: list[int | np.ndarray] = []  # per segment: the segment it copies, or a vector
        for i, (seg, key) in enumerate(zip(segments, keys, strict=True)):
            ctx = self._context(key)
            if gated[i]:  # held: the last encoded segment's vector (the previous one's)
                source.append(ctx.last_video)
            elif ctx.last_frames is not None and _same_frames(seg.frames, ctx.last_frames):
                source.append(ctx.last_video)  # a repeated frame (a gap): the same vector
            else:
                source.append(i)
            ctx.last_frames, ctx.last_video = seg.frames, source[-1]
        encoded = self._encode_frames(
            segments, [i for i, s in enumerate(source) if isinstance(s, int) and s == i]
        )
        out = np.stack([encoded[s] if isinstance(s, int) else s for s in source])
        out = out.astype(np.float32)
        for ctx in {id(c): c for c in map(self._context, keys)}.values():
            if isinstance(ctx.last_video, int):
                ctx.last_video = out[ctx.last_video].copy()
        return out

    def _encode_frames(self, segments: Sequence[Segment], todo: list[int]) -> dict[int, np.ndarray]:
        """MobileViT vector (mean over k frames) of segments ``todo``; one pass per frame shape."""
        enc = self.extractor.video
        out: dict[int, np.ndarray] = {}
        for shape in dict.fromkeys(segments[i].frames.shape for i in todo):
            group = [i for i in todo if segments[i].frames.shape == shape]
            frames = np.concatenate([segments[i].frames for i in group])  # (n*k, H, W, 3)
            feats = enc.encode(frames, batch_size=frame_batch(enc.device))
            feats = feats.reshape(len(group), shape[0], -1).mean(axis=1)
            out.update(zip(group, feats, strict=True))
            self.frames_encoded += len(frames)
        return out

    def encode_audio(
        self,
        segments: Sequence[Segment],
        keys: Sequence[Hashable] | None = None,
        gated: Sequence[bool] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Causal audio vectors (n, Da) and mask (n,) of segments, consecutive per key; a segment
        ``gated`` repeats the last encoded segment's of its key (its samples still extend the
        look-back)."""
        keys = [None] * len(segments) if keys is None else list(keys)
        gated = np.zeros(len(segments), bool) if gated is None else np.asarray(gated, bool)
        enc = self.extractor.audio
        audio = np.zeros((len(segments), enc.dim), np.float32)
        mask = np.zeros(len(segments), bool)
        windows = self._windows(segments, keys, gated)  # i -> (window, context samples)
        feats = enc.encode_batch([w for w, _ in windows.values()]) if windows else []
        for (i, (_, context)), f in zip(windows.items(), feats, strict=True):
            times = enc.frame_times(len(f), -context / enc.sample_rate)  # s from the segment start
            keep = (times >= 0) & (times < self.spec.segment_seconds)
            if keep.any():
                audio[i] = f[keep].astype(np.float64).mean(axis=0).astype(np.float32)
                mask[i] = True
        if self.gate is not None:
            for i, key in enumerate(keys):  # in order: a held segment copies the last encoded
                ctx = self._context(key)
                if gated[i] and ctx.last_audio is not None:
                    audio[i], mask[i] = ctx.last_audio
                else:
                    ctx.last_audio = (audio[i].copy(), bool(mask[i]))
        return audio, mask

    def _windows(self, segments: Sequence[Segment], keys: list, gated: np.ndarray) -> dict:
        """[context | segment] windows of the segments with audio that are not held, and their
        context lengths."""
        out = {}
        for i, (seg, key) in enumerate(zip(segments, keys, strict=True)):
            ctx = self._context(key)
            if ctx.last_index is not None and seg.index != ctx.last_index + 1:
                ctx.tail = ctx.tail[:0]  # a gap: the context is not this segment's past
            ctx.last_index = seg.index
            if seg.audio.size == 0:
                ctx.tail = ctx.tail[:0]
                continue
            window = np.concatenate([ctx.tail, seg.audio])  # (C + S,)
            if not gated[i]:
                out[i] = (window, len(ctx.tail))
            keep = min(self.context_samples, len(window))
            ctx.tail = window[len(window) - keep :]
        return out


def _same_frames(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two segments hold the very same frame array (a repeated frame in a video gap)."""
    return a is b or (a.shape == b.shape and a.base is not None and a.base is b.base)


class Extractor:
    """One file -> its timeline of features, made as a :class:`FeatureSpec` says."""

    def __init__(self, spec: FeatureSpec, video_encoder: VideoEncoder, audio_encoder: AudioEncoder):
        self.spec = spec
        self.video = video_encoder
        self.audio = audio_encoder
        self.dtype = precision_dtype(spec.precision)  # the spec's own

    @classmethod
    def from_spec(
        cls, spec: FeatureSpec, device: str = "auto", encoder_state: dict | None = None
    ) -> Extractor:
        """Rebuild the encoders a spec describes (random weights: same seed + stored BatchNorm
        statistics)."""
        configure_cpu()
        v = VideoEncoder.load(
            spec.video_backbone, weights=spec.weights, seed=spec.seed, device=device
        )
        a = AudioEncoder.load(
            spec.audio_backbone, weights=spec.weights, seed=spec.seed, device=device
        )
        check_backbone(v, "video", spec.video_dim, spec.video_backbone_sha256, spec.video_encoder)
        check_backbone(a, "audio", spec.audio_dim, spec.audio_backbone_sha256, spec.audio_encoder)
        if spec.weights == "random":
            if encoder_state is None:
                raise FeatureError(
                    "random-weight features need the stored encoder state (BatchNorm statistics)"
                )
            try:
                v.load_bn_state(encoder_state)
            except ValueError as e:  # a damaged or foreign encoder state
                raise FeatureError(
                    f"the stored encoder state does not fit the video backbone: {e}"
                ) from None
        return cls(spec, v, a)

    def with_spec(self, spec: FeatureSpec) -> Extractor:
        """The same encoders computing features as ``spec`` says (e.g. its live counterpart)."""
        return Extractor(spec, self.video, self.audio)

    def video_features(self, path: Path, info: media.MediaInfo) -> np.ndarray:
        """MobileViT vector per segment: (T, Dv), the mean over the segment's k frames."""
        spec = self.spec
        times = segment_times(info.duration, spec.segment_seconds, spec.frames_per_segment)
        T, k = times.shape
        frames = media.read_frames(
            path, times.ravel().tolist(), spec.resize_shortest_edge, info=info
        )
        out = np.concatenate(list(self._encode_batches(frames)), axis=0)  # (T*k, Dv)
        return out.reshape(T, k, -1).mean(axis=1).astype(np.float32)

    def _encode_batches(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        batch: list[np.ndarray] = []
        size = frame_batch(self.video.device) * self.video.clip_frames  # whole clips a pass
        for frame in frames:
            batch.append(frame)
            if len(batch) == size:
                yield self.video.encode(np.stack(batch))
                batch = []
        if batch:
            yield self.video.encode(np.stack(batch))

    def audio_features(
        self, path: Path, info: media.MediaInfo, T: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chunked audio: Wav2Vec2 frames mean-pooled per segment, (T, Da) and mask (T,)."""
        spec = self.spec
        chunks: Iterator[np.ndarray] = iter(())
        if info.has_audio:
            chunks = media.iter_audio(path, spec.audio_chunk_seconds, spec.sample_rate, info=info)
        return chunked_audio(self.audio, chunks, T, spec.segment_seconds)

    def causal(
        self, path: str | Path, audio_context_seconds: float | None = None
    ) -> tuple[dict[str, np.ndarray], float]:
        """Features of a whole file as a stream computes them (same segments, same look-back-only
        audio). Returns the tensors and the media end (s)."""
        source = SegmentSource(path, self.spec)
        encoder = SegmentEncoder(self, audio_context_seconds)
        parts, batch = [], []
        for segment in source:
            batch.append(segment)
            if len(batch) == BATCH_SEGMENTS:
                parts.append(encoder.encode(batch))
                batch = []
        if batch:
            parts.append(encoder.encode(batch))
        if not parts:
            raise media.UnreadableMediaError(path, source.end_reason)
        tensors = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        return tensors, source.media_end

    def __call__(self, path: str | Path) -> tuple[dict[str, np.ndarray], media.MediaInfo]:
        """Features of one video: {"video": (T, Dv), "audio": (T, Da), "audio_mask": (T,) bool}."""
        path = Path(path)
        info = media.probe(path)
        with autocast(self.video.device, self.dtype):  # the spec's precision (fp32: no-op)
            if self.spec.audio_mode == "causal":
                tensors, _ = self.causal(path)
                return tensors, info
            video = self.video_features(path, info)
            audio, mask = self.audio_features(path, info, len(video))
        return {"video": video, "audio": audio, "audio_mask": mask}, info


def causal_features(
    video: str | Path, extractor: Extractor, audio_context_seconds: float | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """Features of a whole file as a live stream computes them for ``extractor``'s spec (see
    :func:`live_spec`): ({"video", "audio", "audio_mask"}, media end in seconds)."""
    return extractor.with_spec(live_spec(extractor.spec, audio_context_seconds)).causal(video)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (n, D) arrays (1 where both rows are zero)."""
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (den == 0) & (num == 0)
    return np.where(both_zero, 1.0, num / np.maximum(den, 1e-12))


__all__ = [
    "Extractor",
    "FeatureError",
    "SegmentEncoder",
    "causal_features",
    "chunked_audio",
    "cosine",
    "live_spec",
    "pool_audio_frames",
    "segment_times",
    "split_chunks",
]
