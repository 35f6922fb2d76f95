"""Registry of temporal models: register by name, build from a ModelConfig.

Every model maps ``x`` (B, L, D) and ``mask`` (B, L), True at valid steps, to stage
logits (S, B, L, C); S = 1 for single-stage models.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from avarnet.config import FUSIONS, ModelConfig
from avarnet.models.fusion import LATE_COMBINES, LateFusion

ModelBuilder = Callable[[ModelConfig], nn.Module]

_MODEL_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``builder(cfg) -> nn.Module`` under ``name``."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODEL_BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _MODEL_BUILDERS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of the registered temporal models, sorted."""
    return sorted(_MODEL_BUILDERS)


def _builder(name: str) -> ModelBuilder:
    if name not in _MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODEL_BUILDERS[name]


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build the model ``cfg.name`` for input (B, L, cfg.input_dim).

    ``cfg.fusion == "early"``: one model over the concatenated features.
    ``cfg.fusion == "late"``: one model per modality with the same hyper-parameters,
    video = x[..., :video_dim], audio = x[..., video_dim:video_dim + audio_dim]; their
    class probabilities are combined by ``cfg.late_combine`` (see LateFusion).
    Raises ValueError for an unknown name, fusion or combine, or mismatched dims.
    """
    builder = _builder(cfg.name)
    if cfg.fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {cfg.fusion!r}; expected one of {FUSIONS}")
    if cfg.fusion == "early":
        return builder(cfg)
    if cfg.late_combine not in LATE_COMBINES:
        raise ValueError(
            f"unknown late_combine {cfg.late_combine!r}; expected one of {LATE_COMBINES}"
        )
    if cfg.input_dim != cfg.video_dim + cfg.audio_dim:
        raise ValueError(
            f"late fusion needs input_dim == video_dim + audio_dim, got {cfg.input_dim} != "
            f"{cfg.video_dim} + {cfg.audio_dim}"
        )
    video = builder(cfg.replace(input_dim=cfg.video_dim, fusion="early"))
    audio = builder(cfg.replace(input_dim=cfg.audio_dim, fusion="early"))
    return LateFusion(video, audio, cfg.video_dim, cfg.audio_dim, combine=cfg.late_combine)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (elements, not tensors)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
