"""Self-describing checkpoints: one safetensors file, no pickle.

Tensors: the model's state dict under ``model.``, normalisation statistics ``norm.mean`` / ``norm.std``,
and for random-weight features the video encoder's BatchNorm statistics under ``encoder.``.
Metadata (JSON strings): model config, class names, feature spec, train config, modality.
Loading builds the model from its stored config, so ``predict`` needs nothing but this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import io
from .config import FeatureSpec, ModelConfig, TrainConfig, spec_problem
from .data import Normalizer, input_dims
from .errors import AvarnetError
from .models import create_model

FORMAT = "avarnet-checkpoint-1"
METADATA_KEYS = ("model_config", "train_config", "classes", "feature_spec")
MAX_SEQ_LEN = 100_000  # segments per window
MAX_CLASS_NAME = 128  # characters; a class name is also a folder name of datasets


class CheckpointError(AvarnetError):
    """A checkpoint is missing, damaged, inconsistent or not an avarnet checkpoint."""


@dataclass
class Checkpoint:
    model: torch.nn.Module
    model_config: ModelConfig
    train_config: TrainConfig
    classes: list[str]
    spec: FeatureSpec
    norm: Normalizer
    encoder_state: dict[str, torch.Tensor] | None
    extra: dict  # e.g. best epoch and validation loss

    @property
    def modality(self) -> str:
        return self.train_config.modality


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write atomically (temp file + rename)."""
    path = Path(path)
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()
    }
    tensors["norm.mean"] = torch.from_numpy(ckpt.norm.mean)
    tensors["norm.std"] = torch.from_numpy(ckpt.norm.std)
    for k, v in (ckpt.encoder_state or {}).items():
        tensors[f"encoder.{k}"] = v.contiguous()
    meta = {
        "format": FORMAT,
        "model_config": io.dumps(ckpt.model_config.to_dict(), indent=None),
        "train_config": io.dumps(ckpt.train_config.to_dict(), indent=None),
        "classes": io.dumps(ckpt.classes, indent=None),
        "feature_spec": io.dumps(ckpt.spec.to_dict(), indent=None),
        "extra": io.dumps(ckpt.extra, indent=None),
    }
    io.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild model (eval mode), configs, classes, normaliser and encoder state from one file.

    Everything is checked before the model is built: metadata parses, the model config's tensor
    shapes match the stored tensors (a config edited to a huge width fails here, with no memory
    spent), the normaliser is finite with positive spread, and the class list fits the model.
    Raises CheckpointError (one line naming the file) for any inconsistency.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except PermissionError:
        raise
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an avarnet checkpoint")
    parts = {key: _metadata(meta, key, path) for key in METADATA_KEYS}
    extra = _metadata(meta, "extra", path) if "extra" in meta else {}
    model_config, train_config, spec, classes = check_metadata(parts, path)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model = _build_model(model_config, state, path)
    model.to(device).eval()
    encoder = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
    return Checkpoint(
        model=model,
        model_config=model_config,
        train_config=train_config,
        classes=classes,
        spec=spec,
        norm=_normalizer(tensors, model_config.input_dim, path),
        encoder_state=encoder or None,
        extra=extra if isinstance(extra, dict) else {},
    )


def read_classes(path: str | Path) -> list[str]:
    """The class names of a checkpoint, read from its metadata only (no tensor is loaded)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except PermissionError:
        raise
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an avarnet checkpoint")
    parts = {key: _metadata(meta, key, path) for key in METADATA_KEYS}
    return check_metadata(parts, path)[3]


def class_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a class name (classes are also dataset folder names), or None."""
    if not isinstance(name, str):
        return f"class name {name!r} is not a string"
    if (
        not name
        or len(name) > MAX_CLASS_NAME
        or name.startswith(".")
        or name != name.strip()
        or any(c in name for c in "/\\")
        or not name.isprintable()
    ):
        return f"class name {name!r} is not a plain folder name"
    return None


def check_metadata(
    parts: dict[str, Any], path: str | Path, error: type[AvarnetError] = CheckpointError
) -> tuple[ModelConfig, TrainConfig, FeatureSpec, list[str]]:
    """Model config, train config, feature spec and classes from their parsed JSON
    (``parts``: model_config, train_config, feature_spec, classes), checked against each other.

    Raises ``error`` (one line naming ``path``) for a wrong type, a value out of range or an
    inconsistency. Checkpoints and ONNX export manifests are checked by this same function.
    """
    model_config = _config(ModelConfig, parts["model_config"], "model_config", path, error)
    train_config = _config(TrainConfig, parts["train_config"], "train_config", path, error)
    spec = _config(FeatureSpec, parts["feature_spec"], "feature_spec", path, error)
    classes = _classes(parts["classes"], model_config, path, error)
    _check_dims(model_config, train_config, spec, path, error)
    return model_config, train_config, spec, classes


def _metadata(meta: dict[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        raise CheckpointError(f"{path}: metadata {key!r} is missing")
    try:
        return io.loads(meta[key])
    except ValueError as e:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({e})") from None


def _config(cls: type, value: Any, key: str, path, error: type[AvarnetError]):
    if not isinstance(value, dict):
        raise error(f"{path}: {key!r} is not a JSON object")
    try:
        return cls.from_dict(value)
    except (TypeError, ValueError) as e:
        raise error(f"{path}: {key!r} is invalid ({e})") from None


def _classes(value: Any, cfg: ModelConfig, path, error: type[AvarnetError]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise error(f"{path}: 'classes' is not a list of names")
    problem = next((p for p in map(class_name_problem, value) if p), None)
    if problem:
        raise error(f"{path}: {problem}")
    if (
        not isinstance(cfg.num_classes, int)
        or len(value) != cfg.num_classes
        or len(set(value)) != len(value)
    ):
        raise error(f"{path}: {len(value)} class names for a model with {cfg.num_classes} outputs")
    return value


def _check_dims(
    cfg: ModelConfig, train: TrainConfig, spec: FeatureSpec, path, error: type[AvarnetError]
) -> None:
    problem = spec_problem(spec)
    if problem:
        raise error(f"{path}: {problem}")
    try:
        vd, ad = input_dims(spec.video_dim, spec.audio_dim, train.modality)
    except (KeyError, TypeError):
        raise error(f"{path}: unknown modality {train.modality!r}") from None
    if vd + ad != cfg.input_dim:
        raise error(
            f"{path}: the model takes {cfg.input_dim} features but the feature spec gives "
            f"{vd + ad} ({train.modality})"
        )
    seq_len = train.seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= MAX_SEQ_LEN:
        raise error(f"{path}: seq_len {seq_len!r} is outside [1, {MAX_SEQ_LEN}]")


def _build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """Check the config's parameter shapes on the meta device (no memory), then build and load."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in create_model(cfg).state_dict().items()}
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: model config is invalid ({e})") from None
    stored = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != stored:
        missing = sorted(set(shapes) - set(stored))
        wrong = sorted(k for k in set(shapes) & set(stored) if shapes[k] != stored[k])
        what = (
            f"tensor {wrong[0]} is {stored[wrong[0]]}, the config needs {shapes[wrong[0]]}"
            if wrong
            else f"missing tensor {missing[0]}"
            if missing
            else f"unexpected tensor {sorted(set(stored) - set(shapes))[0]}"
        )
        raise CheckpointError(f"{path}: model config does not match the stored weights ({what})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: weights hold NaN or infinity (e.g. {bad[0]})")
    model = create_model(cfg)
    model.load_state_dict(state)
    return model


def _normalizer(tensors: dict[str, torch.Tensor], dim: int, path: Path) -> Normalizer:
    if "norm.mean" not in tensors or "norm.std" not in tensors:
        raise CheckpointError(f"{path}: normalisation statistics (norm.mean, norm.std) are missing")
    mean = tensors["norm.mean"].float().numpy()
    std = tensors["norm.std"].float().numpy()
    return check_normalizer(mean, std, dim, path)


def check_normalizer(
    mean: np.ndarray, std: np.ndarray, dim: int, path, error: type[AvarnetError] = CheckpointError
) -> Normalizer:
    """The normaliser of ``dim`` features, once its statistics are known to be usable: float
    vectors of that length, finite, with a positive spread. Raises ``error`` (one line) if not."""
    if mean.dtype.kind != "f" or std.dtype.kind != "f":
        raise error(f"{path}: normalisation statistics are not numbers")
    if mean.shape != (dim,) or std.shape != (dim,):
        raise error(
            f"{path}: normalisation statistics have shapes {mean.shape}, {std.shape}; expected ({dim},)"
        )
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std <= 0).any():
        raise error(
            f"{path}: normalisation statistics are not finite, or norm.std has zero/negative values"
        )
    return Normalizer(mean, std)
