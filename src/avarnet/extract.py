"""Video -> per-segment features, and the dataset extraction loop (resumable, failures recorded)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import media
from .config import DEFAULT_AUDIO_CONTEXT_S, FeatureSpec
from .data import VideoItem, scan_dataset
from .encoders import AudioEncoder, VideoEncoder, absolute_source, backbone_digest
from .errors import NonFiniteError
from .features import Extractor, pool_audio_frames, segment_times  # noqa: F401  (re-exported)
from .runtime import configure_cpu
from .store import Entry, FeatureStore, StoreError, video_id

log = logging.getLogger("avarnet")

CALIBRATION_VIDEOS = 24  # random weights: BatchNorm statistics come from frames of this many videos
CALIBRATION_FRAMES_PER_VIDEO = 4


@dataclass
class ExtractResult:
    """What a dataset extraction did."""

    done: int = 0
    skipped: int = 0
    failures: list[dict] = field(default_factory=list)


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
    video: VideoEncoder,
    audio: AudioEncoder,
    weights: str,
    seed: int,
    segment_seconds: float,
    frames_per_segment: int,
    audio_mode: str = "chunked",
    audio_context_seconds: float = DEFAULT_AUDIO_CONTEXT_S,
) -> FeatureSpec:
    pretrained = weights == "pretrained"
    return FeatureSpec(
        audio_mode=audio_mode,
        audio_context_seconds=audio_context_seconds,
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
    audio_mode: str = "chunked",
    audio_context_seconds: float = DEFAULT_AUDIO_CONTEXT_S,
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
    spec = build_spec(
        video, audio, weights, seed, segment_seconds, frames_per_segment, audio_mode, audio_context_seconds
    )
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
