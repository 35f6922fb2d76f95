"""Tiny encoders of every kind, built in the test: ONNX files (exported from small torch modules,
with their manifests) and transformers models of other families than MobileViT / Wav2Vec2."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

FRAME_SIZE = 32
CLIP_FRAMES = 4
CLIP_FPS = 8.0  # 4 frames at 8 fps: 0.5-s segments
WAVE_HOP, WAVE_FIELD = 320, 400
DIMS = {"frame": 6, "clip": 5, "waveform": 7, "logmel": 4}
LICENCE = "CC0-1.0"
SOURCE = "built in the test suite"


class TinyFrame(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.head = nn.Linear(8, DIMS["frame"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(pixels)).mean((2, 3)))


class TinyClip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 8, (2, 5, 5), stride=(1, 4, 4))
        self.head = nn.Linear(8, DIMS["clip"])

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (B, 3, T, S, S)
        return self.head(torch.relu(self.conv(clips)).mean((2, 3, 4)))


class TinyWaveform(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, DIMS["waveform"], WAVE_FIELD, stride=WAVE_HOP)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, F, D)
        return torch.tanh(self.conv(samples[:, None])).transpose(1, 2)


class TinyLogMel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 8, stride=8)
        self.head = nn.Linear(8, DIMS["logmel"])

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # (N, 1, 96, 64)
        return self.head(torch.relu(self.conv(patches)).mean((2, 3)))


def _export(module: nn.Module, example: torch.Tensor, path: Path, dynamic: dict) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": dynamic, "y": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


MANIFEST_INPUTS = {
    "frame": {
        "name": "x",
        "image_size": FRAME_SIZE,
        "resize_shortest_edge": FRAME_SIZE + 4,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
    },
    "clip": {"name": "x", "image_size": FRAME_SIZE, "frames": CLIP_FRAMES, "fps": CLIP_FPS},
    "waveform": {"name": "x", "hop": WAVE_HOP, "receptive_field": WAVE_FIELD, "normalise": True},
    "logmel": {"name": "x"},
}


def manifest(kind: str) -> dict:
    """The manifest of the tiny model of ``kind``."""
    return {
        "format": "avarnet-encoder-1",
        "kind": kind,
        "input": dict(MANIFEST_INPUTS[kind]),
        "output": {"name": "y", "dim": DIMS[kind]},
        "licence": LICENCE,
        "source": SOURCE,
    }


def save_onnx_encoder(
    kind: str, folder: Path, seed: int = 0, clip_frames: int = CLIP_FRAMES
) -> Path:
    """A tiny ONNX encoder of ``kind`` (frame, clip, waveform, logmel) and its manifest in
    ``folder``; returns the .onnx path."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path = folder / f"tiny-{kind}.onnx"
    S = FRAME_SIZE
    if kind == "frame":
        _export(TinyFrame(), torch.rand(2, 3, S, S), path, {0: "batch"})
    elif kind == "clip":
        _export(TinyClip(), torch.rand(2, 3, clip_frames, S, S), path, {0: "batch"})
    elif kind == "waveform":
        _export(TinyWaveform(), torch.randn(2, 16_000), path, {0: "batch", 1: "samples"})
    elif kind == "logmel":
        _export(TinyLogMel(), torch.randn(2, 1, 96, 64), path, {0: "batch"})
    else:
        raise ValueError(kind)
    path.with_suffix(".json").write_text(json.dumps(manifest(kind)))
    return path


def save_tiny_vit(folder: Path) -> Path:
    """A tiny ViT image model (another family than MobileViT) with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(3)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_tiny_hubert(folder: Path) -> Path:
    """A tiny HuBERT waveform model (another family than Wav2Vec2) with its feature extractor."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(4)
    config = HubertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    HubertModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16_000).save_pretrained(folder)
    return folder


XDV_IMAGE, XDV_RESIZE = 32, 40  # tiny stand-ins for I3D's 224-pixel crops of 256-pixel frames


def save_xdv_encoders(folder: Path) -> tuple[Path, Path]:
    """Tiny stand-ins for the user's I3D (a 16-frame clip encoder at 24 fps) and VGGish (a log-mel
    patch encoder) ONNX files; returns (clip path, logmel path)."""
    clip = save_onnx_encoder("clip", folder / "i3d", seed=5, clip_frames=16)
    m = manifest("clip")
    m["input"] |= {"frames": 16, "fps": 24.0, "image_size": XDV_IMAGE}
    m["input"]["resize_shortest_edge"] = XDV_RESIZE
    clip.with_suffix(".json").write_text(json.dumps(m))
    return clip, save_onnx_encoder("logmel", folder / "vggish", seed=6)
