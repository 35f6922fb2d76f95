"""Configuration dataclasses shared by every stage (to/from dict, YAML)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The ten classes of the paper's VAAR dataset, in the order used everywhere.
VAAR_CLASSES: tuple[str, ...] = (
    "abuse",
    "baby_cry",
    "brawling",
    "crash",
    "explosion",
    "intruder",
    "normal",
    "pain",
    "police_siren",
    "vandalism",
)
NORMAL_CLASS = "normal"

SAMPLE_RATE = 16_000  # Wav2Vec2 expects 16 kHz mono
DEFAULT_VIDEO_BACKBONE = "apple/mobilevit-small"  # pooled output: 640-d
DEFAULT_AUDIO_BACKBONE = "facebook/wav2vec2-base"  # hidden size: 768-d


class _DictMixin:
    """to_dict / from_dict / YAML for flat dataclasses; unknown keys are rejected."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path):
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


@dataclass(frozen=True)
class FeatureSpec(_DictMixin):
    """How features were made; stored in the feature store and in every checkpoint."""

    video_backbone: str = DEFAULT_VIDEO_BACKBONE
    audio_backbone: str = DEFAULT_AUDIO_BACKBONE
    weights: str = "pretrained"  # "pretrained" | "random"
    seed: int = 0  # seed of random weights (weights == "random")
    segment_seconds: float = 1.0
    frames_per_segment: int = 1  # visual vector = mean over k frames around the segment centre
    video_dim: int = 640
    audio_dim: int = 768
    image_size: int = 256  # encoder input (centre crop), from the image processor
    resize_shortest_edge: int = 288  # shortest edge before the centre crop
    flip_channel_order: bool = True  # MobileViT checkpoints expect BGR
    sample_rate: int = SAMPLE_RATE
    audio_chunk_seconds: float = 10.0  # Wav2Vec2 runs over the track in chunks this long
    random_init: dict = field(default_factory=dict)  # how random weights were made (init, calibration)
    precision: str = "fp32"  # encoders' compute precision: fp32 | bf16 | fp16 (autocast)


@dataclass(frozen=True)
class ModelConfig(_DictMixin):
    """Temporal model hyper-parameters; each model reads the fields it needs."""

    name: str = "mtcn"
    input_dim: int = 640 + 768
    num_classes: int = len(VAAR_CLASSES)
    hidden: int = 64  # channels of TCN stages / hidden size of RNNs / d_model of transformer
    stages: int = 4  # MTCN stages
    layers: int = 10  # dilated layers per stage (dilation 2**i) / RNN or transformer layers
    heads: int = 4  # self-attention heads
    kernel_size: int = 3
    dropout: float = 0.3
    fusion: str = "early"  # "early" | "late"
    late_combine: str = "mean"  # "mean" | "learned" (late fusion only)
    video_dim: int = 640  # split point of the fused input (late fusion)
    audio_dim: int = 768


@dataclass(frozen=True)
class TrainConfig(_DictMixin):
    """Training loop settings."""

    model: str = "mtcn"
    modality: str = "fused"  # "fused" | "audio" | "video"
    fusion: str = "early"
    seq_len: int = 10  # L: segments per window (the paper's sequence length)
    window_stride: int = 5  # hop between training windows, in segments
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    plateau_factor: float = 0.5  # LR *= factor when validation loss stalls
    plateau_patience: int = 3  # epochs without improvement before the LR drops
    early_stop_patience: int = 10  # epochs without improvement before training stops
    smooth_weight: float = 0.15  # MS-TCN truncated-MSE smoothing loss weight (0 disables)
    smooth_clip: float = 4.0  # truncation of the log-probability difference (MS-TCN: sqrt(16))
    modality_dropout: float = 0.0  # probability of blanking one sense per training window
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # 0: torch's default
