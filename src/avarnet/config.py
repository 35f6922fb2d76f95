"""Configuration dataclasses shared by every stage (to/from dict, YAML)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InvalidArgumentError
from .gate import gate_settings

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
AUDIO_MODES = ("chunked", "causal")  # how audio features are made (FeatureSpec.audio_mode)
DEFAULT_AUDIO_CONTEXT_S = 1.0  # causal audio look-back by default (docs/live.md: why 1 s)

# Allowed values of configuration fields, checked by the dataclasses below and offered as the
# command line's choices (one list each, tested against the parser in tests/test_cli.py).
WEIGHTS = ("pretrained", "random")  # FeatureSpec.weights: pretrained backbones or random init
ENCODER_PRECISIONS = ("fp32", "bf16", "fp16")  # torch encoders under autocast
PRECISIONS = ENCODER_PRECISIONS + ("int8",)  # live encoders; int8: dynamically quantised (CPU)
ONNX_PRECISIONS = ("fp32", "int8")  # what an ONNX export runs
INT8_MIN_SAVING = (
    0.05  # avarnet quantize: share of the encoders' fp32 time an encoder's int8 must save
)
INT8_MIN_COSINE = 0.99  # avarnet quantize: lowest segment cosine of int8 features to fp32's
RUNTIMES = ("torch", "onnx")  # live inference: PyTorch, or ONNX Runtime on an export
EXTRACT_ENGINES = ("local", "ray")  # extraction in this process's pool, or a Ray Data pipeline
MODALITIES = ("fused", "audio", "video")  # TrainConfig.modality: the senses a model sees
FUSIONS = ("early", "late")  # TrainConfig.fusion, ModelConfig.fusion
LATE_COMBINES = ("mean", "learned")  # ModelConfig.late_combine (late fusion only)
DEVICES = ("auto", "cpu", "cuda")  # TrainConfig.device; auto: cuda when available
SPLITS = ("train", "val", "test")
SENSES = ("audio", "video")  # a sense that can be blanked (modality dropout, evaluation)
WEAK_OBJECTIVES = ("refine", "mil")  # weak.WeakConfig.objective
SCORER_INPUTS = ("context", "snippet")  # weak.WeakConfig.scorer_inputs


def check_choice(owner: str, name: str, value: Any, allowed: tuple) -> None:
    """Raise InvalidArgumentError when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise InvalidArgumentError(
            f"{owner}.{name} must be one of {', '.join(map(str, allowed))}, got {value!r}"
        )


def check_device(owner: str, device: str) -> None:
    """A device name: one of DEVICES, or an indexed GPU such as ``cuda:1``."""
    kind, _, index = str(device).partition(":")
    if device not in DEVICES and not (kind == "cuda" and index.isdigit()):
        raise InvalidArgumentError(
            f"{owner}.device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}"
        )


class DictMixin:
    """to_dict / from_dict / YAML for flat dataclasses; unknown keys are rejected."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            # YAML and JSON booleans are ints to Python: `seq_len: true` must not read as 1
            numeric = str(f.type).split(" | ")[0] in ("int", "float")
            if numeric and isinstance(d.get(f.name), bool):
                raise ValueError(f"{cls.__name__}.{f.name} must be a number, got {d[f.name]!r}")
        return cls(**d)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_yaml(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path):
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


@dataclass(frozen=True)
class FeatureSpec(DictMixin):
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
    random_init: dict = field(
        default_factory=dict
    )  # how random weights were made (init, calibration)
    # content identity of pretrained backbones (config + weights; see encoders.backbone_digest), "" unknown
    video_backbone_sha256: str = ""
    audio_backbone_sha256: str = ""
    # "chunked": Wav2Vec2 over audio_chunk_seconds chunks of the whole track (sees the future);
    # "causal": per segment over its samples plus audio_context_seconds of the past (what a live
    # stream can compute). Stores and checkpoints without these fields are chunked.
    audio_mode: str = "chunked"
    audio_context_seconds: float = 0.0  # look-back of causal audio (0 allowed); 0 when chunked
    precision: str = "fp32"  # encoders' arithmetic: fp32 | bf16 | fp16 (autocast) | int8
    # what ran the encoders: "torch", or "onnx" (ONNX Runtime on an export, fp32 or int8). With
    # precision, how the numbers were computed, not what they define: stores that differ only here
    # hold the same features in other arithmetic (same_features), as a stream may run any of them.
    runtime: str = "torch"
    # The encoders beyond their name and digest: backend, input kind (frame, clip, waveform,
    # logmel) and its settings, output, licence and source (see avarnet.encoders). {}: MobileViT /
    # Wav2Vec2 through transformers, as in every store and checkpoint made before these fields.
    video_encoder: dict = field(default_factory=dict)
    audio_encoder: dict = field(default_factory=dict)
    # The motion-and-sound gate (avarnet.gate): {"motion", "sound_dbfs", "refresh"}; still, silent
    # segments repeat the last encoded segment's features. {}: off, as in every store and
    # checkpoint made before this field. Causal audio only (the gate is a live definition).
    gate: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.audio_mode not in AUDIO_MODES:
            raise InvalidArgumentError(
                f"audio_mode must be one of {AUDIO_MODES}, got {self.audio_mode!r}"
            )
        object.__setattr__(self, "gate", gate_settings(self.gate))
        if self.gate and self.audio_mode != "causal":
            raise InvalidArgumentError(
                "a motion-and-sound gate needs causal audio features (it decides per segment, "
                "as a live stream does); chunked audio cannot be gated"
            )
        check_choice("FeatureSpec", "runtime", self.runtime, RUNTIMES)
        check_choice(
            "FeatureSpec",
            "precision",
            self.precision,
            ONNX_PRECISIONS if self.runtime == "onnx" else PRECISIONS,
        )
        if not self.audio_context_seconds >= 0:
            raise InvalidArgumentError(
                f"audio_context_seconds must be >= 0, got {self.audio_context_seconds}"
            )
        if self.audio_mode == "chunked":  # no look-back: specs compare equal whatever was passed
            object.__setattr__(self, "audio_context_seconds", 0.0)
        object.__setattr__(self, "audio_context_seconds", float(self.audio_context_seconds))

    def describe_audio(self) -> str:
        """``chunked (10 s)`` or ``causal (look-back 0.5 s)``."""
        if self.audio_mode == "chunked":
            return f"chunked ({self.audio_chunk_seconds:g}-s chunks)"
        return f"causal (look-back {self.audio_context_seconds:g} s)"

    def same_features(self, other: FeatureSpec) -> bool:
        """True when features made under ``self`` and ``other`` are interchangeable.

        Backbones with a recorded identity on both sides match by identity (a moved folder is the
        same backbone); otherwise by name (or by being the same folder). ``random_init`` is ignored,
        and so are ``runtime`` and ``precision``: the same features computed in other arithmetic
        (a checkpoint trained in fp32 is evaluated on a store made by the int8 fast path; see
        :meth:`same_arithmetic`).
        """
        blank = {
            "random_init": {},
            "runtime": "torch",
            "precision": "fp32",
            "video_backbone": "",
            "audio_backbone": "",
            "video_backbone_sha256": "",
            "audio_backbone_sha256": "",
        }
        if self.replace(**blank) != other.replace(**blank):
            return False
        return all(
            _same_backbone(
                getattr(self, k),
                getattr(other, k),
                getattr(self, f"{k}_sha256"),
                getattr(other, f"{k}_sha256"),
            )
            for k in ("video_backbone", "audio_backbone")
        )

    def same_arithmetic(self, other: FeatureSpec) -> bool:
        """True when ``other`` also computed its features with this runtime and precision (a store
        is only ever resumed in the arithmetic it was started in)."""
        return (self.runtime, self.precision) == (other.runtime, other.precision)

    def describe_arithmetic(self) -> str:
        """``torch fp32``, ``onnx int8``."""
        return f"{self.runtime} {self.precision}"


# Bounds a feature spec read from a file must respect (memory and time stay bounded).
SPEC_LIMITS = {
    "segment_seconds": (0.02, 3600.0),
    "frames_per_segment": (1, 64),
    "video_dim": (1, 65_536),
    "audio_dim": (1, 65_536),
    "image_size": (1, 4096),
    "resize_shortest_edge": (1, 4096),
    "sample_rate": (1_000, 192_000),
    "audio_chunk_seconds": (0.1, 600.0),
    "audio_context_seconds": (0.0, 600.0),
}


def spec_problem(spec: FeatureSpec) -> str | None:
    """Why a feature spec read from a file cannot be used (a value out of bounds), or None."""
    for name, (low, high) in SPEC_LIMITS.items():
        value = getattr(spec, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            return f"feature spec {name} = {value!r} is outside [{low}, {high}]"
    if spec.weights not in WEIGHTS:
        return f"feature spec weights = {spec.weights!r} is neither 'pretrained' nor 'random'"
    for name in ("video_encoder", "audio_encoder"):
        if not isinstance(getattr(spec, name), dict):
            return f"feature spec {name} = {getattr(spec, name)!r} is not an object"
    return None


def _same_backbone(a: str, b: str, digest_a: str, digest_b: str) -> bool:
    if digest_a and digest_b:
        return digest_a == digest_b
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


@dataclass(frozen=True)
class ModelConfig(DictMixin):
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

    def __post_init__(self) -> None:
        check_choice("ModelConfig", "fusion", self.fusion, FUSIONS)
        check_choice("ModelConfig", "late_combine", self.late_combine, LATE_COMBINES)


@dataclass(frozen=True)
class TrainConfig(DictMixin):
    """Training loop settings."""

    model: str = "mtcn"
    modality: str = "fused"  # "fused" | "audio" | "video"
    fusion: str = "early"
    seq_len: int = 10  # L: segments per window (the paper's sequence length)
    window_stride: int = 5  # hop between training windows, in segments
    # offline: windows of L segments every window_stride, every step supervised (what evaluate
    # scores); live: one window per segment t ending at t (segments max(0, t-L+1)..t), supervised
    # at its last step only, as stream and predict --causal score segment t
    windows: str = "offline"
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

    def __post_init__(self) -> None:
        check_choice("TrainConfig", "modality", self.modality, MODALITIES)
        check_choice("TrainConfig", "fusion", self.fusion, FUSIONS)
        check_choice("TrainConfig", "windows", self.windows, ("offline", "live"))
        check_device("TrainConfig", self.device)
