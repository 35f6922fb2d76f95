"""Video -> per-segment features, and the dataset extraction loop (resumable, failures recorded)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import media
from .config import FeatureSpec
from .data import VideoItem, scan_dataset
from .encoders import AudioEncoder, VideoEncoder, absolute_source, backbone_digest, check_backbone
from .errors import NonFiniteError
from .runtime import configure_cpu
from .store import Entry, FeatureStore, StoreError, video_id

log = logging.getLogger("avarnet")

FRAME_BATCH = 16  # frames per MobileViT forward pass
CALIBRATION_VIDEOS = 24  # random weights: BatchNorm statistics come from frames of this many videos
CALIBRATION_FRAMES_PER_VIDEO = 4


@dataclass
class ExtractResult:
    """What a dataset extraction did."""

    done: int = 0
    skipped: int = 0
    failures: list[dict] = field(default_factory=list)


def segment_times(duration: float, segment_seconds: float, frames_per_segment: int = 1) -> np.ndarray:
    """Timestamps (s) of the frames encoded for each segment: (T, k), k frames spread inside each segment.

    T = ceil(duration / segment_seconds); with k = 1 the frame is the segment centre.
    """
    T = max(1, math.ceil(duration / segment_seconds - 1e-9))
    starts = np.arange(T) * segment_seconds  # (T,)
    offsets = (np.arange(frames_per_segment) + 0.5) / frames_per_segment * segment_seconds  # (k,)
    times = starts[:, None] + offsets[None, :]  # (T, k)
    return np.minimum(times, max(duration - 1e-3, 0.0))


def pool_audio_frames(
    feats: np.ndarray, times: np.ndarray, T: int, segment_seconds: float, sums: np.ndarray, counts: np.ndarray
) -> None:
    """Add Wav2Vec2 frames (F, D) with centre times (F,) into per-segment sums (T, D) and counts (T,)."""
    seg = np.floor(times / segment_seconds).astype(np.int64)  # (F,)
    keep = (seg >= 0) & (seg < T)
    np.add.at(sums, seg[keep], feats[keep])
    np.add.at(counts, seg[keep], 1)


class Extractor:
    """Turns one video into its timeline of features with the encoders a :class:`FeatureSpec` names."""

    def __init__(self, spec: FeatureSpec, video_encoder: VideoEncoder, audio_encoder: AudioEncoder):
        self.spec = spec
        self.video = video_encoder
        self.audio = audio_encoder

    @classmethod
    def from_spec(cls, spec: FeatureSpec, device: str = "auto", encoder_state: dict | None = None) -> Extractor:
        """Rebuild the encoders a spec describes (random weights: same seed + stored BatchNorm statistics)."""
        configure_cpu()
        v = VideoEncoder.load(spec.video_backbone, weights=spec.weights, seed=spec.seed, device=device)
        a = AudioEncoder.load(spec.audio_backbone, weights=spec.weights, seed=spec.seed, device=device)
        check_backbone(v, "video", spec.video_dim, spec.video_backbone_sha256)
        check_backbone(a, "audio", spec.audio_dim, spec.audio_backbone_sha256)
        if spec.weights == "random":
            if encoder_state is None:
                raise StoreError("random-weight features need the stored encoder state (BatchNorm statistics)")
            try:
                v.load_bn_state(encoder_state)
            except ValueError as e:  # a damaged or foreign encoder state
                raise StoreError(f"the stored encoder state does not fit the video backbone: {e}") from None
        return cls(spec, v, a)

    def video_features(self, path: Path, info: media.MediaInfo) -> np.ndarray:
        """MobileViT vector per segment: (T, Dv), the mean over the segment's k frames."""
        times = segment_times(info.duration, self.spec.segment_seconds, self.spec.frames_per_segment)
        T, k = times.shape
        frames = media.read_frames(path, times.ravel().tolist(), self.spec.resize_shortest_edge, info=info)
        out = np.concatenate(list(self._encode_batches(frames)), axis=0)  # (T*k, Dv)
        return out.reshape(T, k, -1).mean(axis=1).astype(np.float32)

    def _encode_batches(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        batch: list[np.ndarray] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == FRAME_BATCH:
                yield self.video.encode(np.stack(batch))
                batch = []
        if batch:
            yield self.video.encode(np.stack(batch))

    def audio_features(self, path: Path, info: media.MediaInfo, T: int) -> tuple[np.ndarray, np.ndarray]:
        """Wav2Vec2 frames mean-pooled per segment: (T, Da) and a mask (T,) of segments that had audio."""
        sums = np.zeros((T, self.audio.dim), dtype=np.float64)
        counts = np.zeros(T, dtype=np.int64)
        if info.has_audio:
            offset = 0.0
            chunks = media.iter_audio(path, self.spec.audio_chunk_seconds, self.spec.sample_rate, info=info)
            for chunk in chunks:
                feats = self.audio.encode_chunk(chunk)  # (F, Da)
                pool_audio_frames(feats, self.audio.frame_times(len(feats), offset), T, self.spec.segment_seconds, sums, counts)
                offset += len(chunk) / self.spec.sample_rate
        mask = counts > 0
        audio = np.zeros((T, self.audio.dim), dtype=np.float32)
        audio[mask] = (sums[mask] / counts[mask, None]).astype(np.float32)
        return audio, mask

    def __call__(self, path: str | Path) -> tuple[dict[str, np.ndarray], media.MediaInfo]:
        """Features of one video: {"video": (T, Dv), "audio": (T, Da), "audio_mask": (T,) bool}."""
        path = Path(path)
        info = media.probe(path)
        video = self.video_features(path, info)
        audio, mask = self.audio_features(path, info, len(video))
        return {"video": video, "audio": audio, "audio_mask": mask}, info


def calibration_frames(items: list[VideoItem], spec: FeatureSpec, seed: int) -> Iterator[np.ndarray]:
    """Frames from a seeded sample of videos, used to recalibrate a random MobileViT's BatchNorm."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))[:CALIBRATION_VIDEOS]
    for i in sorted(order.tolist()):
        path = items[i].path
        try:
            info = media.probe(path)
            fractions = (np.arange(CALIBRATION_FRAMES_PER_VIDEO) + 0.5) / CALIBRATION_FRAMES_PER_VIDEO
            yield from media.read_frames(path, (fractions * info.duration).tolist(), spec.resize_shortest_edge, info=info)
        except media.MediaError:
            continue


def build_spec(
    video: VideoEncoder, audio: AudioEncoder, weights: str, seed: int, segment_seconds: float, frames_per_segment: int
) -> FeatureSpec:
    pretrained = weights == "pretrained"
    return FeatureSpec(
        video_backbone=absolute_source(video.source),
        audio_backbone=absolute_source(audio.source),
        video_backbone_sha256=backbone_digest(video.model) if pretrained else "",
        audio_backbone_sha256=backbone_digest(audio.model) if pretrained else "",
        weights=weights,
        seed=seed,
        segment_seconds=segment_seconds,
        frames_per_segment=frames_per_segment,
        video_dim=video.dim,
        audio_dim=audio.dim,
        image_size=video.image_size,
        resize_shortest_edge=video.resize_shortest_edge,
        flip_channel_order=video.flip_channel_order,
        sample_rate=audio.sample_rate,
    )


def _prepare_store(out: Path, spec: FeatureSpec, video: VideoEncoder, items: list[VideoItem], info: dict) -> FeatureStore:
    """Create or reopen the store; for random weights, calibrate (or restore) the video encoder's BatchNorm."""
    if (out / "spec.json").exists():
        existing = FeatureStore.open(out)
        existing.remove_stale_temp_files()
        if not existing.spec.same_features(spec):
            raise StoreError(f"{out} holds features made with a different spec; use a new --out folder")
        if spec.weights == "random":
            state = existing.load_encoder_state()
            if state is None:
                raise StoreError(f"{out} lacks its encoder state; use a new --out folder")
            video.load_bn_state(state)
        return existing
    if spec.weights == "random":
        train = [it for it in items if it.split == "train"] or items
        n = video.calibrate(calibration_frames(train, spec, spec.seed))
        log.warning("RANDOM WEIGHTS: MobileViT BatchNorm recalibrated on %d frames of this dataset", n)
        spec = spec.replace(random_init=video.describe())
    store = FeatureStore.create(out, spec, info)
    if spec.weights == "random":
        store.save_encoder_state(video.bn_state())
    return store


def extract_dataset(
    data: str | Path,
    out: str | Path,
    weights: str = "pretrained",
    video_backbone: str = "apple/mobilevit-small",
    audio_backbone: str = "facebook/wav2vec2-base",
    segment_seconds: float = 1.0,
    frames_per_segment: int = 1,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> ExtractResult:
    """Extract features for every video of a VAAR-style dataset folder into the store at ``out``.

    Finished videos are skipped, so an interrupted run resumes. Unreadable inputs are reported one line
    each, recorded in the store, and the run continues.
    """
    data, out = Path(data), Path(out)
    scan = scan_dataset(data, seed=seed)
    items, classes = scan.items, scan.classes
    configure_cpu()
    video = VideoEncoder.load(video_backbone, weights=weights, seed=seed, device=device)
    audio = AudioEncoder.load(audio_backbone, weights=weights, seed=seed, device=device)
    spec = build_spec(video, audio, weights, seed, segment_seconds, frames_per_segment)
    info = {"classes": classes, "data_root": str(data.resolve()), "split_seed": seed}
    store = _prepare_store(out, spec, video, items, info)
    store.check_classes(classes)
    extractor = Extractor(store.spec, video, audio)
    result = ExtractResult()
    for rel, reason in scan.problems:  # folders and links that could not be scanned
        tqdm.write(f"failed: {rel}: {reason}", file=sys.stderr)
        store.record_failure(rel, reason)
        result.failures.append({"path": rel, "reason": reason})
    bar = tqdm(items, desc="extract", unit="video", disable=not progress, dynamic_ncols=True)
    for item in bar:
        vid = video_id(item.rel_path)
        if store.is_done(vid):
            result.skipped += 1
            continue
        try:
            tensors, minfo = extractor(item.path)
        except media.MediaError as e:
            reason = str(e)
        except Exception as e:  # a decoder or model failure on one input must not stop the run
            reason = f"{type(e).__name__}: {e}"
        else:
            entry = Entry(
                id=vid,
                file=str(store.feature_path(vid).relative_to(store.root)),
                label=item.label,
                split=item.split,
                source=item.rel_path,
                duration=minfo.duration,
                fps=minfo.fps,
                has_audio=minfo.has_audio,
                T=len(tensors["video"]),
            )
            try:
                store.write(entry, tensors)
            except NonFiniteError:  # refused by the store: a failure of this input only
                reason = "features hold NaN or infinity (not stored)"
            else:
                result.done += 1
                continue
        line = f"{item.rel_path}: {reason}"
        tqdm.write(f"failed: {line}", file=sys.stderr)
        store.record_failure(item.rel_path, reason)
        result.failures.append({"path": item.rel_path, "reason": reason})
        bar.set_postfix(failed=len(result.failures))
    return result
