"""Self-describing checkpoints: one safetensors file, no pickle.

Tensors: the model's state dict under ``model.``, normalisation statistics ``norm.mean`` / ``norm.std``,
and for random-weight features the video encoder's BatchNorm statistics under ``encoder.``.
Metadata (JSON strings): model config, class names, feature spec, train config, modality.
Loading builds the model from its stored config, so ``predict`` needs nothing but this file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import FeatureSpec, ModelConfig, TrainConfig
from .data import Normalizer
from .models import create_model

FORMAT = "avarnet-checkpoint-1"


class CheckpointError(Exception):
    """A checkpoint is missing, damaged or not an avarnet checkpoint."""


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
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
    tensors["norm.mean"] = torch.from_numpy(ckpt.norm.mean)
    tensors["norm.std"] = torch.from_numpy(ckpt.norm.std)
    for k, v in (ckpt.encoder_state or {}).items():
        tensors[f"encoder.{k}"] = v.contiguous()
    meta = {
        "format": FORMAT,
        "model_config": json.dumps(ckpt.model_config.to_dict()),
        "train_config": json.dumps(ckpt.train_config.to_dict()),
        "classes": json.dumps(ckpt.classes),
        "feature_spec": json.dumps(ckpt.spec.to_dict()),
        "extra": json.dumps(ckpt.extra),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".ckpt")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild model (eval mode), configs, classes, normaliser and encoder state from one file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an avarnet checkpoint")
    model_config = ModelConfig.from_dict(json.loads(meta["model_config"]))
    model = create_model(model_config)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.to(device).eval()
    encoder = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
    return Checkpoint(
        model=model,
        model_config=model_config,
        train_config=TrainConfig.from_dict(json.loads(meta["train_config"])),
        classes=json.loads(meta["classes"]),
        spec=FeatureSpec.from_dict(json.loads(meta["feature_spec"])),
        norm=Normalizer(tensors["norm.mean"].numpy(), tensors["norm.std"].numpy()),
        encoder_state=encoder or None,
        extra=json.loads(meta.get("extra", "{}")),
    )
