"""Spectrogram-input audio models of the transformers backend: AST, Whisper's encoder and CLAP.

These models take a log-mel spectrogram of a fixed length, made by their own feature extractor
(``preprocessor_config.json`` beside the weights; for random weights without one, the family's
default built from the model's config). They fit the audio encoder contract as a ``logmel`` ONNX
encoder does: a window of samples is cut into patches of ``receptive_field`` samples every ``hop``
samples, each patch goes through the feature extractor and the model, and is pooled to one
vector, placed in time at the patch's centre and pooled per segment like a waveform encoder's
output frames.

Patches: 0.96 s every 0.48 s (as YAMNet), or the model's whole input when it is shorter. Every
patch is padded to the model's fixed input length, which sets the cost per patch:

* AST (``ast``): ``ASTFeatureExtractor`` (Kaldi fbank, 25 ms / 10 ms) padded to ``max_length``
  frames (1024, 10.24 s, for the AudioSet checkpoints: about 10x the compute of the 0.96 s of
  audio); vector: the pooler output (mean of the CLS and distillation tokens);
* Whisper (``whisper``): ``WhisperFeatureExtractor`` padded to ``chunk_length`` (30 s: about 31x);
  vector: the mean of the encoder's last hidden state over the output frames that cover the
  patch's samples (the padding's frames are left out); the decoder is not kept;
* CLAP (``clap``, or ``clap_audio_model``): ``ClapFeatureExtractor`` (48 kHz, the patch
  repeated to ``max_length_s``, 10 s); vector: the projected audio embedding, L2-normalised as
  ``ClapModel.get_audio_features`` gives it (``audio_embeds``); an audio model without a
  projection gives its pooler output. Models without fusion take the first of the extractor's
  fusion channels, which for a patch shorter than ``max_length_s`` is its whole mel spectrogram.

The encoder's ``entry`` (recorded in the feature spec) holds the model type, the patch and hop,
the pooling and the feature extractor's settings; its digest covers the config and weights of the
modules that compute the vector. ONNX export is not available for these encoders: their feature
extractors run in numpy / torch outside the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .hf import (
    AUDIO_MODEL_LOADERS,
    BACKEND,
    AudioEncoder,
    EncoderLoadError,
    load_generic,
)
from .logmel import frame_signal

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger("avarnet")

KIND = "spectrogram"
PATCH_SECONDS = 0.96  # as YAMNet: 0.96-s patches every 0.48 s
HOP_SECONDS = 0.48
CPU_PATCHES, GPU_PATCHES = 4, 32  # patches per forward pass (each padded to the model's input)
KALDI_WINDOW_SECONDS, KALDI_SHIFT_SECONDS = 0.025, 0.010  # ASTFeatureExtractor's frames
# Feature extractor attributes that are derived arrays or say where it was saved, not settings.
IGNORED_EXTRACTOR_KEYS = frozenset(
    {"mel_filters", "mel_filters_slaney", "window", "processor_class", "feature_extractor_type"}
)
MAX_SETTING_LIST = 16


def _plain(value: Any) -> Any:
    """A JSON value that reads back equal (lists for tuples), or ``...`` for anything else."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and len(value) <= MAX_SETTING_LIST:
        items = [_plain(v) for v in value]
        return ... if any(v is ... for v in items) else items
    return ...


def extractor_settings(extractor: Any) -> dict[str, Any]:
    """What a feature extractor computes with: its settings (plain values), sorted by name."""
    out = {}
    for key, value in sorted(extractor.to_dict().items()):
        plain = _plain(value)
        if key not in IGNORED_EXTRACTOR_KEYS and not key.startswith("_") and plain is not ...:
            out[key] = plain
    return out


class SpectrogramModel(nn.Module):
    """The modules of a spectrogram model that compute one vector per patch: ``forward`` takes the
    feature extractor's output (tensors by name) and gives (B, dim).

    ``config`` is the loaded model's, so :func:`~avarnet.encoders.hf.backbone_digest` covers it
    with the weights of these modules.
    """

    def __init__(
        self,
        family: str,
        model: nn.Module,
        config: PretrainedConfig,
        dim: int,
        pooling: str,
        projection: nn.Module | None = None,
        real_frames: int = 0,
    ) -> None:
        super().__init__()
        self.family = family
        self.model = model
        self.projection = projection
        self.config = config
        self.dim = dim
        self.pooling = pooling
        self.real_frames = real_frames  # Whisper: encoder frames that cover a patch's samples

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        if self.family == "ast":
            return self.model(input_values=features["input_values"]).pooler_output
        if self.family == "whisper":
            hidden = self.model(input_features=features["input_features"]).last_hidden_state
            return hidden[:, : self.real_frames].mean(1)
        x = features["input_features"]
        if not getattr(self.model.config, "enable_fusion", False):
            x = x[:, :1]  # the fusion channels of a short patch are four copies of its mel
        pooled = self.model(input_features=x, is_longer=features.get("is_longer")).pooler_output
        if self.projection is None:
            return pooled
        return F.normalize(self.projection(pooled), dim=-1)


@dataclass(frozen=True)
class Family:
    """How one family of spectrogram models is loaded, fed and pooled."""

    extractor: str  # the feature extractor's class name
    default_extractor: Callable[[Any], Any]  # model config -> the family's default extractor
    wrap: Callable[[nn.Module, Any, Any], SpectrogramModel]  # (model, config, extractor)
    input_samples: Callable[[Any], int]  # extractor -> samples each patch is padded to
    check: Callable[[Any, Any], str]  # (config, extractor) -> what does not fit ("" if all does)


def _transformers(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


# -- AST


def _ast_extractor(config: Any) -> Any:
    return _transformers("ASTFeatureExtractor")(
        num_mel_bins=config.num_mel_bins, max_length=config.max_length
    )


def _ast_samples(extractor: Any) -> int:
    rate = extractor.sampling_rate
    window, shift = round(KALDI_WINDOW_SECONDS * rate), round(KALDI_SHIFT_SECONDS * rate)
    return window + (int(extractor.max_length) - 1) * shift


def _ast_check(config: Any, extractor: Any) -> str:
    if (extractor.max_length, extractor.num_mel_bins) != (config.max_length, config.num_mel_bins):
        return (
            f"its feature extractor gives {extractor.max_length} frames of "
            f"{extractor.num_mel_bins} mel bins, the model takes {config.max_length} of "
            f"{config.num_mel_bins}"
        )
    return ""


def _ast_wrap(model: nn.Module, config: Any, extractor: Any) -> SpectrogramModel:
    return SpectrogramModel("ast", model, config, int(config.hidden_size), "pooler_output")


# -- Whisper


def _whisper_frames(config: Any) -> int:
    """Mel frames Whisper's encoder takes (two per position: its second convolution's stride)."""
    return 2 * int(config.max_source_positions)


def _whisper_extractor(config: Any) -> Any:
    extractor = _transformers("WhisperFeatureExtractor")(feature_size=config.num_mel_bins)
    frames = _whisper_frames(config)
    extractor.nb_max_frames = frames
    extractor.n_samples = frames * extractor.hop_length
    extractor.chunk_length = extractor.n_samples / extractor.sampling_rate
    if float(extractor.chunk_length).is_integer():
        extractor.chunk_length = int(extractor.chunk_length)
    return extractor


def _whisper_samples(extractor: Any) -> int:
    return int(extractor.n_samples)


def _whisper_check(config: Any, extractor: Any) -> str:
    frames, mels = _whisper_frames(config), int(config.num_mel_bins)
    if (int(extractor.nb_max_frames), int(extractor.feature_size)) != (frames, mels):
        return (
            f"its feature extractor gives {extractor.nb_max_frames} frames of "
            f"{extractor.feature_size} mel bins, the encoder takes {frames} of {mels}"
        )
    return ""


def _whisper_wrap(model: nn.Module, config: Any, extractor: Any) -> SpectrogramModel:
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
    return SpectrogramModel(
        "whisper", encoder, config, int(config.d_model), "mean_over_audio_frames"
    )


# -- CLAP


def _clap_audio_config(config: Any) -> Any:
    return getattr(config, "audio_config", None) or config


def _clap_extractor(config: Any) -> Any:
    return _transformers("ClapFeatureExtractor")(
        feature_size=_clap_audio_config(config).num_mel_bins
    )


def _clap_samples(extractor: Any) -> int:
    return int(extractor.nb_max_samples)


def _clap_check(config: Any, extractor: Any) -> str:
    mels = int(_clap_audio_config(config).num_mel_bins)
    if int(extractor.feature_size) != mels:
        return (
            f"its feature extractor gives {extractor.feature_size} mel bins, the model takes {mels}"
        )
    return ""


def _clap_wrap(model: nn.Module, config: Any, extractor: Any) -> SpectrogramModel:
    audio = getattr(model, "audio_model", model)  # ClapModel / ClapAudioModelWithProjection
    projection = getattr(model, "audio_projection", None)
    if projection is None:
        dim = int(_clap_audio_config(config).hidden_size)
        return SpectrogramModel("clap", audio, config, dim, "pooler_output")
    dim = int(projection.linear2.out_features)
    return SpectrogramModel("clap", audio, config, dim, "audio_embeds", projection)


def _clap_audio_model_class(config: Any) -> Any:
    """CLAP's audio side alone (not an AutoModel): with its projection where it was saved so."""
    if "ClapAudioModelWithProjection" in (getattr(config, "architectures", None) or []):
        return _transformers("ClapAudioModelWithProjection")
    return _transformers("ClapAudioModel")


FAMILIES: dict[str, Family] = {
    "ast": Family("ASTFeatureExtractor", _ast_extractor, _ast_wrap, _ast_samples, _ast_check),
    "whisper": Family(
        "WhisperFeatureExtractor",
        _whisper_extractor,
        _whisper_wrap,
        _whisper_samples,
        _whisper_check,
    ),
    "clap": Family("ClapFeatureExtractor", _clap_extractor, _clap_wrap, _clap_samples, _clap_check),
}
MODEL_TYPES = {"audio-spectrogram-transformer": "ast", "whisper": "whisper", "clap": "clap",
               "clap_audio_model": "clap"}  # fmt: skip


def build_extractor(family: Family, prep: dict[str, Any], config: Any, source: str) -> Any:
    """The model's feature extractor from its ``preprocessor_config.json`` (``prep``), or the
    family's default for the model's config when it has none."""
    if not prep:
        logger.info("%s: no feature extractor config; using the default of its family", source)
        return family.default_extractor(config)
    named = prep.get("feature_extractor_type", family.extractor)
    if named != family.extractor:
        raise EncoderLoadError(
            f"audio_backbone {source!r}: its feature extractor is {named}, expected "
            f"{family.extractor}"
        )
    try:
        return _transformers(family.extractor).from_dict(prep)
    except Exception as err:  # a malformed preprocessor config
        line = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise EncoderLoadError(
            f"audio_backbone {source!r}: unusable feature extractor config ({line})"
        ) from None


class SpectrogramEncoder(AudioEncoder):
    """A spectrogram model (AST, Whisper's encoder, CLAP's audio side) as an audio encoder: one
    vector per patch of ``receptive_field`` samples every ``hop`` samples."""

    kind = KIND

    def __init__(
        self,
        model: SpectrogramModel,
        extractor: Any,
        *,
        source: str,
        weights: str,
        seed: int,
        device: torch.device,
        input_samples: int,
    ) -> None:
        self.model = model
        self.extractor = extractor
        self.source = source
        self.weights = weights
        self.seed = seed
        self.device = device
        self.sample_rate = int(extractor.sampling_rate)
        self.do_normalize = False  # the feature extractor normalises
        self.receptive_field = min(round(PATCH_SECONDS * self.sample_rate), input_samples)
        self.hop = max(1, min(round(HOP_SECONDS * self.sample_rate), self.receptive_field // 2))
        self.dim = model.dim
        if model.family == "whisper":
            positions = int(model.config.max_source_positions)
            model.real_frames = min(
                positions, max(1, math.ceil(self.receptive_field * positions / input_samples))
            )
        self.entry = {
            "backend": BACKEND,
            "kind": KIND,
            "model_type": model.config.model_type,
            "pooling": model.pooling,
            "patch_seconds": self.receptive_field / self.sample_rate,
            "hop_seconds": self.hop / self.sample_rate,
            "input_seconds": input_samples / self.sample_rate,
            "feature_extractor": extractor_settings(extractor),
        }
        model.to(device)
        model.eval()
        model.requires_grad_(False)

    def patches_per_pass(self) -> int:
        return GPU_PATCHES if self.device.type == "cuda" else CPU_PATCHES

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """Padded windows (B, N) float32 -> one vector per patch (B, patches, dim) float32."""
        inputs = np.asarray(inputs, np.float32)
        per_row = [frame_signal(row, self.receptive_field, self.hop) for row in inputs]
        counts = {len(p) for p in per_row}
        if len(counts) != 1:
            raise ValueError("windows of one batch must have the same length")
        P = counts.pop()
        patches = [np.array(p) for row in per_row for p in row]  # (B * P) patches of samples
        out = [np.zeros((0, self.dim), np.float32)]
        step = self.patches_per_pass()
        with torch.inference_mode():
            for start in range(0, len(patches), step):
                features = self.extractor(
                    patches[start : start + step],
                    sampling_rate=self.sample_rate,
                    return_tensors="pt",
                )
                tensors = {k: v.to(self.device) for k, v in features.items()}
                out.append(self.model(**tensors).float().cpu().numpy())
        return np.concatenate(out).reshape(len(inputs), P, self.dim)


def load_spectrogram_model(
    config: PretrainedConfig, source: str, weights: str, seed: int, device: torch.device
) -> SpectrogramEncoder:
    """An AST, Whisper or CLAP model from a hub id or folder (pretrained, or seeded random
    weights of its architecture) with its feature extractor, as an audio encoder."""
    family = FAMILIES[MODEL_TYPES[config.model_type]]
    model_cls = _clap_audio_model_class(config) if config.model_type == "clap_audio_model" else None
    model, prep = load_generic(config, source, weights, seed, "audio_backbone", "audio", model_cls)
    extractor = build_extractor(family, prep, model.config, source)
    problem = family.check(model.config, extractor)
    if problem:
        raise EncoderLoadError(f"audio_backbone {source!r}: {problem}")
    wrapped = family.wrap(model, model.config, extractor)
    return SpectrogramEncoder(
        wrapped,
        extractor,
        source=source,
        weights=weights,
        seed=seed,
        device=device,
        input_samples=family.input_samples(extractor),
    )


for _model_type in MODEL_TYPES:
    AUDIO_MODEL_LOADERS[_model_type] = load_spectrogram_model

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "SpectrogramEncoder",
    "SpectrogramModel",
    "build_extractor",
    "extractor_settings",
    "load_spectrogram_model",
]
