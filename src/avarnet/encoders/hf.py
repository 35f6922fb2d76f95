"""The transformers backend: frame encoders (MobileViT by default, any image model) and waveform
encoders (Wav2Vec2 by default, any waveform model of the Wav2Vec2 family): load, preprocess, encode.

Weights come from a hub id, a local folder (``save_pretrained`` / ``hf download``
layout) or, with ``weights="random"``, a seeded initialisation of the same
architecture. Random MobileViT weights only carry information about the input
when initialised with Kaiming-normal convolutions and unit BatchNorm scales and
then BatchNorm-recalibrated on real frames (:meth:`VideoEncoder.calibrate`).

:meth:`VideoEncoder.load` and :meth:`AudioEncoder.load` also take sources of the other backends
(``onnx:PATH``), which register their loaders in :data:`SOURCE_LOADERS`, and
:meth:`AudioEncoder.load` takes the spectrogram models (AST, Whisper, CLAP) that
:mod:`avarnet.encoders.spectrogram` registers in :data:`AUDIO_MODEL_LOADERS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from torch import nn

if TYPE_CHECKING:  # transformers is imported where a model is built: decoding alone never needs it
    from transformers import (
        MobileViTModel,
        PretrainedConfig,
        PreTrainedModel,
        Wav2Vec2Config,
        Wav2Vec2Model,
    )

from avarnet.config import DEFAULT_AUDIO_BACKBONE, DEFAULT_VIDEO_BACKBONE, SAMPLE_RATE, WEIGHTS
from avarnet.errors import AvarnetError, InvalidArgumentError
from avarnet.runtime import resolve_device  # noqa: F401  (re-exported)

logger = logging.getLogger("avarnet")

WEIGHT_CHOICES = WEIGHTS
PREPROCESSOR_FILE = "preprocessor_config.json"

# apple/mobilevit-small's image processor, used when a source has none.
DEFAULT_SHORTEST_EDGE = 288
DEFAULT_CROP_SIZE = 256
DEFAULT_FLIP_CHANNEL_ORDER = True  # the checkpoints were trained on BGR input
PIXEL_SCALE = 1.0 / 255.0  # MobileViT rescales to [0, 1] and does not normalise

# Configs of known hub ids, so random weights of these need no network.
# Overrides of MobileViTConfig() (which is mobilevit-small itself).
MOBILEVIT_KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "apple/mobilevit-small": {},
    "apple/mobilevit-x-small": {
        "hidden_sizes": [96, 120, 144],
        "neck_hidden_sizes": [16, 32, 48, 64, 80, 96, 384],
    },
    "apple/mobilevit-xx-small": {
        "hidden_sizes": [64, 80, 96],
        "neck_hidden_sizes": [16, 16, 24, 48, 64, 80, 320],
        "expand_ratio": 2.0,
        "hidden_dropout_prob": 0.05,
    },
}
WAV2VEC2_KNOWN_CONFIGS: dict[str, dict[str, Any]] = {"facebook/wav2vec2-base": {}}

RANDOM_VIDEO_INIT = "kaiming_normal(fan_out, relu); bn gamma=1, beta=0"
RANDOM_AUDIO_INIT = "transformers Wav2Vec2 default init"
AUDIO_NORM_EPS = 1e-7  # as in Wav2Vec2FeatureExtractor(do_normalize=True)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUTHY = {"1", "ON", "YES", "TRUE"}
PROXY_ENV_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
HUB_PROBE_TIMEOUT_S = 3.0

# Audio models that take the raw waveform through a Wav2Vec2-style convolutional feature encoder.
WAVEFORM_MODEL_TYPES = (
    "wav2vec2",
    "hubert",
    "wavlm",
    "data2vec-audio",
    "unispeech",
    "unispeech-sat",
    "sew",
    "sew-d",
    "wav2vec2-conformer",
)
# Image-text models whose image side is used (get_image_features).
VISION_SIDE_MODEL_TYPES = ("clip", "siglip", "siglip2", "align", "blip", "chinese_clip")
RANDOM_GENERIC_INIT = "transformers default init"
BACKEND = "transformers"

# Loaders of source prefixes other than transformers' ("onnx:"): prefix -> (video, audio) loader,
# each called as loader(source, weights=..., seed=..., device=...).
SOURCE_LOADERS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}
# Loaders of audio model types whose input is not the raw waveform (spectrogram models, registered
# by :mod:`avarnet.encoders.spectrogram`): model_type -> loader(config, source, weights, seed,
# device) returning an AudioEncoder.
AUDIO_MODEL_LOADERS: dict[str, Callable[..., Any]] = {}

_ModelT = TypeVar("_ModelT", bound="PreTrainedModel")
_T = TypeVar("_T")


class EncoderLoadError(AvarnetError):
    """A backbone's weights or config could not be loaded; the message is one line."""


# --------------------------------------------------------------------------- loading helpers


def _local_dir(source: str) -> Path | None:
    """The folder ``source`` names, or None when it is not an existing directory."""
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def _looks_like_path(source: str) -> bool:
    """True for sources that cannot be hub ids (absolute, ./, ~, or deeper than org/name)."""
    return Path(source).is_absolute() or source.startswith((".", "~")) or source.count("/") > 1


def _one_line(err: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, truncated."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pretrained_error(source: str, parameter: str, cause: BaseException) -> EncoderLoadError:
    """``parameter``: the setting that names this backbone (video_backbone or audio_backbone)."""
    hub_id = "ID" if _looks_like_path(source) else source
    return EncoderLoadError(
        f"could not load pretrained weights from {source!r} ({_one_line(cause)}); "
        f"download them once (e.g. `hf download {hub_id} --local-dir DIR`, or from_pretrained "
        f"with network) and pass the local folder DIR as the {parameter.replace('_', ' ')}, "
        f"or run offline with random weights",
        remedies=(f"{parameter}=DIR", "weights=random"),
    )


def _validate_weights(weights: str) -> None:
    if weights not in WEIGHT_CHOICES:
        raise InvalidArgumentError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")


def _offline() -> bool:
    """True when the environment asks for no hub traffic (read at call time, not import time)."""
    flags = (os.environ.get(name, "") for name in OFFLINE_ENV_VARS)
    return hf_constants.HF_HUB_OFFLINE or any(f.strip().upper() in TRUTHY for f in flags)


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint accepts a TCP connection (assumed yes behind a proxy).

    huggingface_hub retries unreachable hosts with back-off for tens of
    seconds; one short probe fails fast instead.
    """
    if any(os.environ.get(name) for name in PROXY_ENV_VARS):
        return True
    url = urlparse(hf_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cache_then_hub(source: str, fetch: Callable[[bool], _T]) -> tuple[_T, bool]:
    """Run ``fetch(local_files_only)`` on a local folder or the cache first, then on the hub.

    Cached models load without touching the network; the hub is only tried
    when it is allowed (no HF_HUB_OFFLINE) and reachable. Returns the result
    and the ``local_files_only`` value that produced it.
    """
    if _local_dir(source) is not None:
        return fetch(True), True
    if _looks_like_path(source):
        raise OSError(f"no such folder: {source}")
    try:
        return fetch(True), True
    except OSError as err:
        if _offline():
            raise OSError("not in the local cache and hub access is off (HF_HUB_OFFLINE)") from err
        if not _hub_reachable():
            raise OSError(
                f"not in the local cache and {hf_constants.ENDPOINT} is unreachable"
            ) from err
    return fetch(False), False


def _check_model_type(config: PretrainedConfig, model_type: str, source: str) -> None:
    if config.model_type != model_type:
        raise InvalidArgumentError(
            f"{source!r} holds a {config.model_type!r} model, expected {model_type!r}"
        )


def _load_pretrained(
    model_cls: type[_ModelT], model_type: str, source: str, parameter: str
) -> tuple[_ModelT, dict[str, Any]]:
    """``model_cls.from_pretrained(source)`` and the source's preprocessor config ({} if none)."""

    from transformers import AutoConfig

    def fetch(local_only: bool) -> _ModelT:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        _check_model_type(config, model_type, source)
        model, info = model_cls.from_pretrained(
            source, config=config, local_files_only=local_only, output_loading_info=True
        )
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            logger.warning(
                "%s: %d weights missing from the checkpoint and left at their initial values: %s",
                source,
                len(missing),
                ", ".join(missing[:5]),
            )
        return model

    try:
        model, local_only = _cache_then_hub(source, fetch)
    except Exception as err:  # any failure means no usable pretrained weights
        raise _pretrained_error(source, parameter, err) from err
    return model, _read_preprocessor(source, local_only)


def _read_preprocessor(source: str, local_files_only: bool) -> dict[str, Any]:
    """The source's ``preprocessor_config.json`` as a dict; {} when it has none."""
    folder = _local_dir(source)
    try:
        if folder is not None:
            path = folder / PREPROCESSOR_FILE
        else:
            path = Path(
                hf_hub_download(source, PREPROCESSOR_FILE, local_files_only=local_files_only)
            )
        return json.loads(path.read_text())
    except Exception as err:  # absent or unreadable: the caller falls back to defaults
        logger.info("%s: no usable %s (%s); using defaults", source, PREPROCESSOR_FILE, err)
        return {}


def _random_config(
    config_cls: type[PretrainedConfig],
    model_type: str,
    source: str,
    known: dict[str, dict[str, Any]],
) -> PretrainedConfig:
    """Architecture config for random weights: known id, local folder, or cached/hub config."""
    from transformers import AutoConfig

    if _local_dir(source) is None and source in known:
        return config_cls(**known[source])
    try:
        config, _ = _cache_then_hub(
            source,
            lambda local_only: AutoConfig.from_pretrained(source, local_files_only=local_only),
        )
        _check_model_type(config, model_type, source)
    except Exception as err:
        raise EncoderLoadError(
            f"cannot build random weights for {source!r} ({_one_line(err)}): not a known id "
            f"({', '.join(known)}) and no readable {model_type} config.json; pass a local folder "
            f"holding the model's config.json"
        ) from err
    return config


def _build_random(model_cls: type[_ModelT], config: PretrainedConfig, seed: int) -> _ModelT:
    """``model_cls(config)`` initialised from ``seed`` without disturbing the global RNG."""
    from transformers import MobileViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        if isinstance(model, MobileViTModel):
            init_mobilevit_random(model)
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds BatchNorm layers (random weights then need the MobileViT recipe)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _load_model(
    model_cls: type[_ModelT],
    config_cls: type[PretrainedConfig],
    model_type: str,
    source: str,
    setting: str,
    known: dict[str, dict[str, Any]],
    weights: str,
    seed: int,
    what: str,
) -> tuple[_ModelT, dict[str, Any]]:
    """(model, preprocessor settings): pretrained from ``source``, or seeded random weights of its
    architecture (with a warning naming ``what`` backbone)."""
    if weights == "pretrained":
        return _load_pretrained(model_cls, model_type, source, setting)
    model = _build_random(model_cls, _random_config(config_cls, model_type, source, known), seed)
    logger.warning(
        "RANDOM weights for the %s backbone (%s architecture, seed %d): features "
        "carry no pretrained knowledge%s",
        what,
        source,
        seed,
        "; calibrate BatchNorm on real frames before use" if what == "video" else "",
    )
    return model, _read_preprocessor(source, True) if _local_dir(source) else {}


def _prepare(model: nn.Module, device: torch.device) -> None:
    model.to(device)
    model.eval()
    model.requires_grad_(False)


def init_mobilevit_random(model: nn.Module) -> None:
    """Random init under which MobileViT's activations keep their scale (in place).

    Kaiming-normal (fan_out, relu) conv and linear weights with zero biases,
    BatchNorm gamma = 1 and beta = 0 with reset statistics, LayerNorm default.
    transformers draws BatchNorm gamma ~ N(0, 0.02) instead, which shrinks the
    activations stage by stage until the pooled features are ~1e-37.
    Uses the global torch RNG.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()
        elif isinstance(module, nn.LayerNorm):
            module.reset_parameters()


def _size_edge(value: Any, keys: tuple[str, ...], default: int) -> int:
    """An edge length from an image-processor size entry (int or dict)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in keys:
            if key in value:
                return int(value[key])
    return default


def _image_preprocessing(prep: dict[str, Any]) -> tuple[int, int, bool]:
    """(crop size, shortest edge, flip channel order) from a MobileViT preprocessor config."""
    crop = _size_edge(prep.get("crop_size"), ("height", "shortest_edge"), DEFAULT_CROP_SIZE)
    shortest = _size_edge(prep.get("size"), ("shortest_edge", "height"), DEFAULT_SHORTEST_EDGE)
    flip = bool(prep.get("do_flip_channel_order", DEFAULT_FLIP_CHANNEL_ORDER))
    return crop, shortest, flip


# --------------------------------------------------------------------------- any transformers model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_EDGE = 224
CROP_PCT_MAX_EDGE = 384  # ConvNeXt's processors crop (edge / crop_pct) to edge below this size


def source_loader(source: str, which: int) -> Callable[..., Any] | None:
    """The loader a prefixed source (``onnx:PATH``) names (which: 0 video, 1 audio), or None."""
    for prefix, loaders in SOURCE_LOADERS.items():
        if source.startswith(prefix):
            return loaders[which]
    return None


def peek_config(source: str) -> PretrainedConfig | None:
    """The transformers config a source holds (local folder, cache, or hub), or None when it cannot
    be read (the caller then takes the default architecture's path and its error messages)."""
    from transformers import AutoConfig

    if _local_dir(source) is None and (
        source in MOBILEVIT_KNOWN_CONFIGS or source in WAV2VEC2_KNOWN_CONFIGS
    ):
        return None
    try:
        config, _ = _cache_then_hub(
            source,
            lambda local_only: AutoConfig.from_pretrained(source, local_files_only=local_only),
        )
    except Exception:  # unreadable here: the default path reports it
        return None
    return config


def is_image_config(config: PretrainedConfig) -> bool:
    """Whether a transformers config describes a model that takes images."""
    return any(hasattr(config, key) for key in ("num_channels", "vision_config")) or (
        config.model_type in VISION_SIDE_MODEL_TYPES
    )


def is_waveform_config(config: PretrainedConfig) -> bool:
    """Whether a transformers config describes a raw-waveform model (a convolutional front end)."""
    return config.model_type in WAVEFORM_MODEL_TYPES or (
        hasattr(config, "conv_kernel") and hasattr(config, "conv_stride")
    )


class PooledImageModel(nn.Module):
    """Any transformers image model as ``model(pixel_values=...).pooler_output`` (B, dim), taking
    pixels in [0, 1] (as MobileViT does) and applying the processor's rescale and mean/std itself,
    so an ONNX export of it takes the same input as MobileViT's and its digest covers them.

    Pooling: the model's image features where it has them (CLIP-like models), else its pooler
    output, else the mean of its last hidden state over tokens (or positions).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        rescale: float = PIXEL_SCALE,
    ) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.pooling = "image_features" if hasattr(model, "get_image_features") else ""
        self.register_buffer("scale", torch.tensor(rescale / PIXEL_SCALE, dtype=torch.float32))
        mean = (0.0, 0.0, 0.0) if mean is None else mean
        std = (1.0, 1.0, 1.0) if std is None else std
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixel_values: torch.Tensor) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pixel_values = (pixel_values * self.scale - self.mean) / self.std

        if self.pooling == "image_features":
            out = self.model.get_image_features(pixel_values=pixel_values)
            pooled = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            out = self.model(pixel_values=pixel_values)
            pooled = getattr(out, "pooler_output", None)
            if pooled is not None:
                self.pooling = "pooler_output"
            else:
                self.pooling = "mean"
                hidden = out.last_hidden_state
                pooled = hidden.mean(1) if hidden.ndim == 3 else hidden.flatten(2).mean(-1)
        return BaseModelOutputWithPooling(pooler_output=pooled.flatten(1))


def generic_image_preprocessing(
    prep: dict[str, Any], config: PretrainedConfig
) -> tuple[int, int, bool, tuple | None, tuple | None, float]:
    """(crop, shortest edge, flip, mean, std, rescale) from any image processor's config.

    The shortest edge is resized (aspect kept) and the centre cropped; processors that resize to a
    fixed height x width (ViT) get the same on square inputs, a centre crop on others.
    """
    vision = getattr(config, "vision_config", None) or config
    native = getattr(vision, "image_size", DEFAULT_IMAGE_EDGE)
    native = native if isinstance(native, int) else DEFAULT_IMAGE_EDGE
    if not prep:
        logger.info("no image processor config: edge %d, ImageNet mean/std", native)
        return native, native, False, IMAGENET_MEAN, IMAGENET_STD, PIXEL_SCALE
    shortest = _size_edge(prep.get("size"), ("shortest_edge", "height"), native)
    crop_size = prep.get("crop_size")
    crop_pct = prep.get("crop_pct")
    if crop_pct and shortest < CROP_PCT_MAX_EDGE:
        crop, shortest = shortest, int(shortest / float(crop_pct))
    elif prep.get("do_center_crop", crop_size is not None) and crop_size is not None:
        crop = _size_edge(crop_size, ("height", "shortest_edge"), shortest)
    else:
        crop = shortest
    mean = std = None
    if prep.get("do_normalize", "image_mean" in prep):
        mean = tuple(prep.get("image_mean", IMAGENET_MEAN))
        std = tuple(prep.get("image_std", IMAGENET_STD))
    rescale = (
        float(prep.get("rescale_factor", PIXEL_SCALE)) if prep.get("do_rescale", True) else 1.0
    )
    flip = bool(prep.get("do_flip_channel_order", False))
    return crop, shortest, flip, mean, std, rescale


def load_generic(
    config: PretrainedConfig,
    source: str,
    weights: str,
    seed: int,
    setting: str,
    what: str,
    model_cls: type[PreTrainedModel] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """(model, preprocessor config) of any transformers model (``model_cls``, AutoModel by
    default): pretrained, or random weights of its architecture (seeded; for a video model with
    BatchNorm layers, the MobileViT recipe, whose statistics are then calibrated on frames)."""
    from transformers import AutoModel

    if weights == "pretrained":
        return _load_pretrained(model_cls or AutoModel, config.model_type, source, setting)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config) if model_cls is None else model_cls(config)
        if what == "video" and has_batchnorm(model):
            init_mobilevit_random(model)
    logger.warning(
        "RANDOM weights for the %s backbone (%s architecture, seed %d): features carry no "
        "pretrained knowledge",
        what,
        source,
        seed,
    )
    return model, _read_preprocessor(source, True) if _local_dir(source) else {}


def load_image_model(
    cls: type[VideoEncoder],
    config: PretrainedConfig,
    source: str,
    weights: str,
    seed: int,
    device: torch.device,
) -> VideoEncoder:
    """A frame encoder over any transformers image model (ViT, CLIP, DINOv2, ConvNeXt, ...)."""
    if not is_image_config(config):
        raise EncoderLoadError(
            f"video_backbone {source!r} holds a {config.model_type!r} model, expected 'mobilevit' "
            f"or another image model"
        )
    model, prep = load_generic(config, source, weights, seed, "video_backbone", "video")
    crop, shortest, flip, mean, std, rescale = generic_image_preprocessing(prep, config)
    encoder = cls(
        PooledImageModel(model, mean, std, rescale),
        source=source,
        weights=weights,
        seed=seed,
        image_size=crop,
        resize_shortest_edge=shortest,
        flip_channel_order=flip,
        device=device,
    )
    encoder.entry = {
        "backend": BACKEND,
        "kind": "frame",
        "model_type": config.model_type,
        "pooling": encoder.model.pooling,
        "image_mean": None if mean is None else [float(v) for v in mean],
        "image_std": None if std is None else [float(v) for v in std],
        "rescale": float(rescale),
    }
    return encoder


# --------------------------------------------------------------------------- video


def _as_batch(frames: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3) uint8 -> (N, H, W, 3)."""
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames (N, H, W, 3), got shape {frames.shape}")
    return frames


def _resize_shortest_edge(x: torch.Tensor, edge: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H', W') with min(H', W') == edge, aspect kept (HF rounding)."""
    h, w = x.shape[-2:]
    if min(h, w) == edge:
        return x
    if h <= w:
        size = (edge, int(edge * w / h))
    else:
        size = (int(edge * h / w), edge)
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size); zero-pads (centred) sides shorter than ``size``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


class VideoEncoder:
    """A frame encoder: one frame -> one pooled vector (MobileViT-small: 640-d).

    The base of every video encoder (kind ``frame``; a clip encoder, kind ``clip``, takes
    ``clip_frames`` consecutive frames and gives each of them the clip's vector). ``entry``: what the
    feature spec records about the encoder beyond its name and digest ({} for MobileViT).
    """

    kind = "frame"
    clip_frames = 1  # frames that make one input of the encoder
    clip_seconds = 0.0  # a clip encoder's span (s); 0 for frames
    # pixel scaling after the crop (see set_normalisation); subclasses that skip __init__ keep these
    rescale = PIXEL_SCALE
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    _norm: tuple[torch.Tensor, torch.Tensor] | None = None

    def __init__(
        self,
        model: MobileViTModel | nn.Module,
        *,
        source: str,
        weights: str,
        seed: int,
        image_size: int,
        resize_shortest_edge: int,
        flip_channel_order: bool,
        device: torch.device,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        rescale: float = PIXEL_SCALE,
        entry: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.source = source
        self.weights = weights
        self.seed = seed
        self.image_size = image_size
        self.resize_shortest_edge = resize_shortest_edge
        self.flip_channel_order = flip_channel_order
        self.device = device
        self.set_normalisation(image_mean, image_std, rescale)
        self.entry = dict(entry or {})
        self.calibration_frames = 0
        _prepare(model, device)
        config = getattr(model, "config", None)
        if isinstance(model, PooledImageModel):
            self.dim = self.probe_dim()
        else:
            self.dim = int(config.neck_hidden_sizes[-1])

    def set_normalisation(
        self, mean: Sequence[float] | None, std: Sequence[float] | None, rescale: float
    ) -> None:
        """Pixel scaling after the crop: x * rescale, then (x - mean) / std per channel if given."""
        self.rescale = float(rescale)
        self.image_mean = None if mean is None else [float(v) for v in mean]
        self.image_std = None if std is None else [float(v) for v in std]
        self._norm = None
        if mean is not None and std is not None:
            self._norm = (
                torch.tensor(self.image_mean, dtype=torch.float32).view(1, -1, 1, 1),
                torch.tensor(self.image_std, dtype=torch.float32).view(1, -1, 1, 1),
            )

    def probe_dim(self) -> int:
        """The output width, from one forward pass on a blank input."""
        blank = torch.zeros(1, 3, self.image_size, self.image_size)
        with torch.inference_mode():
            return int(self._pooled(blank).shape[-1])

    def digest(self) -> str:
        """The encoder's identity (sha256 of its config and weights)."""
        return backbone_digest(self.model)

    @classmethod
    def load(
        cls,
        source: str = DEFAULT_VIDEO_BACKBONE,
        weights: str = "pretrained",
        seed: int = 0,
        device: str = "auto",
    ) -> VideoEncoder:
        """Load MobileViT from a hub id or local folder, or build it with seeded random weights.

        Random weights still need :meth:`calibrate` on real frames before use.
        Raises EncoderLoadError when pretrained weights (or a random-weights
        config) cannot be obtained.
        """
        from transformers import MobileViTConfig, MobileViTModel

        loader = source_loader(source, 0)
        if loader is not None:
            return loader(source, weights=weights, seed=seed, device=device)
        _validate_weights(weights)
        torch_device = resolve_device(device)
        config = peek_config(source)
        if config is not None and config.model_type != "mobilevit":
            return load_image_model(cls, config, source, weights, seed, torch_device)
        model, prep = _load_model(MobileViTModel, MobileViTConfig, "mobilevit", source, "video_backbone",
                                  MOBILEVIT_KNOWN_CONFIGS, weights, seed, "video")  # fmt: skip
        crop, shortest, flip = _image_preprocessing(prep)
        return cls(
            model,
            source=source,
            weights=weights,
            seed=seed,
            image_size=crop,
            resize_shortest_edge=shortest,
            flip_channel_order=flip,
            device=torch_device,
        )

    def preprocess(self, frames: np.ndarray, box: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 RGB (N, H, W, 3) -> float (N, 3, S, S) in [0, 1], S = image_size, on the CPU.

        Resizes the shortest edge to ``resize_shortest_edge`` (bilinear, antialiased)
        when it differs, centre-crops (or crops at ``box`` = (top, left) of the resized frame),
        and flips RGB -> BGR if the model expects it.
        """
        x = torch.from_numpy(np.ascontiguousarray(_as_batch(frames)))  # (N, H, W, 3)
        x = x.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
        x = _resize_shortest_edge(x, self.resize_shortest_edge)
        if box is None:
            x = _center_crop(x, self.image_size)  # (N, 3, S, S)
        else:
            top, left = box
            x = x[..., top : top + self.image_size, left : left + self.image_size]
        if self.flip_channel_order:
            x = x.flip(1)
        if self._norm is None and self.rescale == PIXEL_SCALE:
            return (x * PIXEL_SCALE).contiguous()
        x = x * self.rescale
        if self._norm is not None:
            x = (x - self._norm[0]) / self._norm[1]
        return x.contiguous()

    def _pixel_batches(
        self, frames: Iterable[np.ndarray] | np.ndarray, batch_size: int
    ) -> Iterator[torch.Tensor]:
        """Preprocessed (B, 3, S, S) batches; items may be frames or frame arrays of any size."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items = [frames] if isinstance(frames, np.ndarray) else frames
        pending: list[torch.Tensor] = []
        count = 0
        for item in items:
            item = _as_batch(item)
            for start in range(0, len(item), batch_size):
                pending.append(self.preprocess(item[start : start + batch_size]))
                count += len(pending[-1])
                while count >= batch_size:
                    merged = torch.cat(pending)
                    yield merged[:batch_size]
                    pending, count = [merged[batch_size:]], count - batch_size
        if count:
            yield torch.cat(pending)

    def _pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, dim) pooled features."""
        return self.model(pixel_values=pixels.to(self.device)).pooler_output

    def forward(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed pixels (B, 3, S, S) -> pooled features (B, dim) float32."""
        with torch.inference_mode():
            return self._pooled(pixels).float().cpu().numpy()

    def encode(self, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 RGB frames (N, H, W, 3) -> features (N, dim) float32."""
        frames = _as_batch(frames)
        outputs = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for pixels in self._pixel_batches(frames, batch_size):
                outputs.append(self.forward(pixels))
        return np.concatenate(outputs)

    def _batchnorms(self) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
        return [
            (name, module)
            for name, module in self.model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        ]

    def calibrate(self, frames: Iterable[np.ndarray] | np.ndarray, batch_size: int = 16) -> int:
        """Recompute BatchNorm statistics of random weights on real frames; returns frames used.

        ``frames``: one (N, H, W, 3) array or an iterable of frames / frame arrays
        (e.g. a few frames per video). Statistics are reset and re-estimated as the
        cumulative average over all batches, with every other layer in eval mode.
        """
        if self.weights != "random":
            raise ValueError(
                "calibrate() is for random weights; it would overwrite pretrained BatchNorm statistics"
            )
        batchnorms = [module for _, module in self._batchnorms()]
        for bn in batchnorms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average
            bn.train()
        used = 0
        try:
            with torch.no_grad():
                for pixels in self._pixel_batches(frames, batch_size):
                    self._pooled(pixels)
                    used += len(pixels)
        finally:
            self.model.eval()
        if used == 0:
            raise ValueError("calibrate() needs at least one frame")
        self.calibration_frames = used
        return used

    def bn_state(self) -> dict[str, torch.Tensor]:
        """BatchNorm running statistics, ``{"<module>.running_mean": tensor, ...}`` (CPU copies)."""
        return {
            f"{name}.{buffer}": getattr(module, buffer).detach().cpu().clone()
            for name, module in self._batchnorms()
            for buffer in BN_BUFFERS
        }

    def load_bn_state(
        self, state: dict[str, torch.Tensor], calibration_frames: int | None = None
    ) -> None:
        """Restore statistics saved by :meth:`bn_state` (keys must match exactly)."""
        expected = {f"{name}.{buffer}" for name, _ in self._batchnorms() for buffer in BN_BUFFERS}
        if set(state) != expected:
            missing, unexpected = expected - set(state), set(state) - expected
            raise ValueError(
                f"BatchNorm state does not fit this model: {len(missing)} missing, "
                f"{len(unexpected)} unexpected keys"
            )
        for name, module in self._batchnorms():
            for buffer in BN_BUFFERS:
                getattr(module, buffer).copy_(state[f"{name}.{buffer}"])
        if calibration_frames is not None:
            self.calibration_frames = calibration_frames

    def describe(self) -> dict[str, Any]:
        """How random weights were made (for FeatureSpec.random_init); {} for pretrained."""
        if self.weights != "random":
            return {}
        init = RANDOM_VIDEO_INIT
        if isinstance(self.model, PooledImageModel) and not has_batchnorm(self.model):
            init = RANDOM_GENERIC_INIT
        return {"seed": self.seed, "init": init, "calibration_frames": self.calibration_frames}


# --------------------------------------------------------------------------- audio


def conv_geometry(config: Wav2Vec2Config) -> tuple[int, int]:
    """(hop, receptive field) in samples of Wav2Vec2's conv feature encoder (base: 320, 400)."""
    hop, field = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


class AudioEncoder:
    """A waveform encoder: vectors per output frame of a window of samples (Wav2Vec2-base: one
    768-d vector per 20 ms). The base of every audio encoder; ``hop`` and ``receptive_field`` (in
    samples) place each output frame in time, so any of them pools per segment the same way."""

    kind = "waveform"
    hop: int = 320  # samples per output frame (wav2vec2-base); set from the config per instance

    def __init__(
        self,
        model: Wav2Vec2Model,
        *,
        source: str,
        weights: str,
        seed: int,
        sample_rate: int,
        do_normalize: bool,
        device: torch.device,
        entry: dict[str, Any] | None = None,
    ) -> None:
        self.entry = dict(entry or {})
        if getattr(model.config, "add_adapter", False):
            raise EncoderLoadError(f"{source!r}: Wav2Vec2 models with an adapter are not supported")
        self.model = model
        self.source = source
        self.weights = weights
        self.seed = seed
        self.sample_rate = sample_rate
        self.do_normalize = do_normalize
        self.device = device
        self.dim = int(model.config.hidden_size)
        self.hop, self.receptive_field = conv_geometry(model.config)
        _prepare(model, device)

    @classmethod
    def load(
        cls,
        source: str = DEFAULT_AUDIO_BACKBONE,
        weights: str = "pretrained",
        seed: int = 0,
        device: str = "auto",
    ) -> AudioEncoder:
        """Load Wav2Vec2 from a hub id or local folder, or build it with seeded random weights.

        Raises EncoderLoadError when pretrained weights (or a random-weights
        config) cannot be obtained.
        """
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        loader = source_loader(source, 1)
        if loader is not None:
            return loader(source, weights=weights, seed=seed, device=device)
        _validate_weights(weights)
        torch_device = resolve_device(device)
        config = peek_config(source)
        if config is not None and config.model_type in AUDIO_MODEL_LOADERS:
            return AUDIO_MODEL_LOADERS[config.model_type](
                config, source, weights, seed, torch_device
            )
        if config is not None and config.model_type != "wav2vec2":
            if not is_waveform_config(config):
                raise EncoderLoadError(
                    f"audio_backbone {source!r} holds a {config.model_type!r} model, expected "
                    f"'wav2vec2' or another waveform model ({', '.join(WAVEFORM_MODEL_TYPES[1:])}) "
                    f"or a spectrogram model ({', '.join(AUDIO_MODEL_LOADERS) or 'none'})"
                )
            model, prep = load_generic(config, source, weights, seed, "audio_backbone", "audio")
            entry = {"backend": BACKEND, "kind": "waveform", "model_type": config.model_type}
            return cls(
                model,
                source=source,
                weights=weights,
                seed=seed,
                sample_rate=int(prep.get("sampling_rate", SAMPLE_RATE)),
                do_normalize=bool(prep.get("do_normalize", True)),
                device=torch_device,
                entry=entry,
            )
        model, prep = _load_model(Wav2Vec2Model, Wav2Vec2Config, "wav2vec2", source, "audio_backbone",
                                  WAV2VEC2_KNOWN_CONFIGS, weights, seed, "audio")  # fmt: skip
        return cls(
            model,
            source=source,
            weights=weights,
            seed=seed,
            sample_rate=int(prep.get("sampling_rate", SAMPLE_RATE)),
            do_normalize=bool(prep.get("do_normalize", True)),
            device=torch_device,
        )

    def num_frames(self, num_samples: int) -> int:
        """Output frames for a chunk of ``num_samples`` (non-empty chunks give at least 1)."""
        if num_samples <= 0:
            return 0
        return (max(num_samples, self.receptive_field) - self.receptive_field) // self.hop + 1

    def normalise(self, samples: np.ndarray) -> np.ndarray:
        """Zero mean, unit variance (as Wav2Vec2FeatureExtractor), if the model expects it."""
        if not self.do_normalize:
            return samples
        return (samples - samples.mean()) / np.sqrt(samples.var() + AUDIO_NORM_EPS)

    def window_input(self, samples: np.ndarray) -> np.ndarray:
        """One window of samples (S,) as the model takes it: normalised, float32, padded to the
        receptive field (what :meth:`encode_chunk` and :meth:`encode_batch` feed to :meth:`forward`)."""
        x = self.normalise(np.asarray(samples, np.float32)).astype(np.float32)
        if x.size < self.receptive_field:
            x = np.pad(x, (0, self.receptive_field - x.size))
        return x

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """Normalised, padded windows (B, S) float32 -> last hidden state (B, F, dim) float32."""
        with torch.inference_mode():
            hidden = self.model(input_values=torch.from_numpy(inputs).to(self.device))
            return hidden.last_hidden_state.float().cpu().numpy()

    def encode_chunk(self, samples: np.ndarray) -> np.ndarray:
        """Mono float32 samples (S,) at ``sample_rate`` -> features (F, dim) float32.

        F = (S - receptive_field) // hop + 1; chunks shorter than the receptive
        field (400 samples) are zero-padded to it, so any non-empty chunk gives
        one frame, and an empty chunk gives (0, dim).
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (S,), got shape {samples.shape}")
        if samples.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_batch([samples])[0]

    def encode_batch(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Frames (F_i, dim) of each window, as :meth:`encode_chunk` gives them; windows of equal
        length run as one batch. Each window is normalised on its own (zero mean, unit variance).
        """
        out: list[np.ndarray | None] = [None] * len(windows)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        for length, idx in by_length.items():
            if length == 0:
                for i in idx:
                    out[i] = np.zeros((0, self.dim), np.float32)
                continue
            hidden = self.forward(
                np.stack([self.window_input(windows[i]) for i in idx])
            )  # (B, F, dim)
            for j, i in enumerate(idx):
                out[i] = hidden[j]
        return out  # type: ignore[return-value]

    def frame_times(self, num_frames: int, offset_seconds: float = 0.0) -> np.ndarray:
        """Centre time (s) of each output frame of a chunk starting at ``offset_seconds``."""
        starts = np.arange(num_frames, dtype=np.float64) * self.hop  # samples
        return offset_seconds + (starts + self.receptive_field / 2) / self.sample_rate

    def describe(self) -> dict[str, Any]:
        """How random weights were made; {} for pretrained."""
        if self.weights != "random":
            return {}
        init = RANDOM_AUDIO_INIT if not self.entry else RANDOM_GENERIC_INIT
        return {"seed": self.seed, "init": init}

    def digest(self) -> str:
        """The encoder's identity (sha256 of its config and weights)."""
        return backbone_digest(self.model)


# Config keys that say where or with what a backbone was saved, not what it computes.
IDENTITY_IGNORED_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "torch_dtype",
        "dtype",
        "architectures",
        "_commit_hash",
        "_attn_implementation_autoset",
        "_attn_implementation",
        "id2label",
        "label2id",
    }
)


def backbone_digest(model: nn.Module) -> str:
    """SHA-256 over a backbone's config (minus where/how it was saved) and every tensor of its state.

    Two folders holding the same weights and architecture have the same digest; a re-trained or
    re-configured backbone has another.
    """
    h = hashlib.sha256()
    config = {
        k: v for k, v in model.config.to_dict().items() if k not in IDENTITY_IGNORED_CONFIG_KEYS
    }
    h.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def check_backbone(
    encoder: VideoEncoder | AudioEncoder,
    kind: str,
    dim: int,
    digest: str,
    entry: dict[str, Any] | None = None,
) -> None:
    """Refuse an encoder whose output size, input settings (``entry``: what the feature spec
    records, when given) or (pretrained) identity differs from the recorded one."""
    if entry is not None and encoder.entry != entry:
        fields = sorted(
            k for k in set(entry) | set(encoder.entry) if entry.get(k) != encoder.entry.get(k)
        )
        raise EncoderLoadError(
            f"{kind} backbone {encoder.source!r} is not the encoder these features were made with "
            f"({kind}_encoder {', '.join(fields) or 'settings'} differ)"
        )
    if encoder.dim != dim:
        raise EncoderLoadError(
            f"{kind} backbone {encoder.source!r} gives {encoder.dim}-d features; "
            f"these features were made with a {dim}-d backbone"
        )
    if digest and encoder.weights == "pretrained":
        found = encoder.digest()
        if found != digest:
            raise EncoderLoadError(
                f"{kind} backbone {encoder.source!r} is not the one these features were made with "
                f"(weights or config differ: sha256 {found[:12]}, recorded {digest[:12]})"
            )


def absolute_source(source: str) -> str:
    """A local backbone folder (or a prefixed file, ``onnx:PATH``) as an absolute path (hub ids
    unchanged)."""
    for prefix in SOURCE_LOADERS:
        if source.startswith(prefix):
            return prefix + str(Path(source[len(prefix) :]).expanduser().resolve())
    local = _local_dir(source)
    return str(local.resolve()) if local is not None else source


__all__ = [
    "AUDIO_MODEL_LOADERS",
    "SOURCE_LOADERS",
    "AudioEncoder",
    "EncoderLoadError",
    "PooledImageModel",
    "VideoEncoder",
    "absolute_source",
    "backbone_digest",
    "check_backbone",
    "conv_geometry",
    "init_mobilevit_random",
    "resolve_device",
]
