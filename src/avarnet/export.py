"""ONNX export of a checkpoint (both encoders + the temporal model) and the ONNX Runtime path.

``avarnet export CKPT --out DIR`` writes::

    DIR/manifest.json     format, feature spec (the live one), classes, normalisation, model and
                          train config, the encoders' preprocessing, and the files below
    DIR/video.onnx        MobileViT: pixels (B, 3, S, S) in [0, 1] -> pooled features (B, Dv)
    DIR/audio.onnx        Wav2Vec2: normalised samples (B, N) -> last hidden state (B, F, Da)
    DIR/temporal.onnx     temporal model: x (B, L, D), mask (B, L) -> last-stage logits (1, B, L, C)
    DIR/*.int8.onnx       the encoders with MatMul weights dynamically quantised to int8

:func:`load_onnx` turns such a folder into what ``stream`` needs (a checkpoint-like object, an
extractor whose encoders run in ONNX Runtime, the temporal model as a callable), so the same
segment iterator, feature code and predictor run on either runtime.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Wav2Vec2Config

from .checkpoint import Checkpoint, load_checkpoint
from .config import ONNX_PRECISIONS, FeatureSpec, ModelConfig, TrainConfig
from .data import Normalizer
from .encoders import AudioEncoder, VideoEncoder, conv_geometry
from .errors import AvarnetError
from .features import Extractor, live_spec

log = logging.getLogger("avarnet")

FORMAT = "avarnet-onnx-1"
MANIFEST = "manifest.json"
OPSET = 17
FILES = {"video": "video.onnx", "audio": "audio.onnx", "temporal": "temporal.onnx"}
INT8_FILES = {"video": "video.int8.onnx", "audio": "audio.int8.onnx"}
QUANTISED_OPS = ["MatMul"]  # ConvInteger is slower than fp32 Conv in ONNX Runtime's CPU kernels


class ExportError(AvarnetError):
    """An export folder is missing, incomplete or not an avarnet export; one line."""


def _require_onnx():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ExportError("ONNX Runtime is not installed: pip install 'avarnet[onnx]'") from None


class _Wrapped(torch.nn.Module):
    """A model whose forward returns only the tensor the exported graph outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model


class _Pooled(_Wrapped):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).pooler_output


class _Hidden(_Wrapped):
    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=samples).last_hidden_state


class _LastStage(_Wrapped):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, mask)[-1:]


def _export(module: torch.nn.Module, args: tuple, path: Path, names: list[str], dynamic: dict):
    module = module.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX op
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        try:
            _export_traced(module, args, path, names, dynamic)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def _export_traced(module: torch.nn.Module, args: tuple, path: Path, names: list[str], dynamic):
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=names[:-1],
        output_names=names[-1:],
        dynamic_axes=dynamic,
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter handles transformers' models as they are
    )


def _quantise(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=QUANTISED_OPS
    )


def _atomic_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_checkpoint(
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    *,
    int8: bool = True,
    audio_context_seconds: float | None = None,
    extractor: Extractor | None = None,
) -> Path:
    """Export ``checkpoint`` to ``out`` (see the module docstring); returns the manifest path.

    The manifest's feature spec is the live one (:func:`avarnet.features.live_spec`): what
    ``stream --runtime onnx`` computes. The manifest is written last, so a folder without one is
    an unfinished export. ``extractor``: the checkpoint's encoders when already loaded.
    """
    _require_onnx()
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    extractor = extractor or Extractor.from_spec(ckpt.spec, "cpu", ckpt.encoder_state)
    video, audio = extractor.video, extractor.audio
    spec = live_spec(ckpt.spec, audio_context_seconds)
    size = video.image_size
    _export(
        _Pooled(video.model),
        (torch.rand(2, 3, size, size),),
        out / FILES["video"],
        ["pixels", "features"],
        {"pixels": {0: "batch"}, "features": {0: "batch"}},
    )
    _export(
        _Hidden(audio.model),
        (torch.randn(2, 2 * audio.sample_rate),),
        out / FILES["audio"],
        ["samples", "hidden"],
        {"samples": {0: "batch", 1: "samples"}, "hidden": {0: "batch", 1: "frames"}},
    )
    L, D = ckpt.train_config.seq_len, ckpt.model_config.input_dim
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, L // 2 :] = False
    _export(
        _LastStage(ckpt.model.cpu()),
        (torch.randn(2, L, D), mask),
        out / FILES["temporal"],
        ["x", "mask", "logits"],
        {"x": {0: "batch"}, "mask": {0: "batch"}, "logits": {1: "batch"}},
    )
    files = dict(FILES)
    if int8:
        for key, name in INT8_FILES.items():
            _quantise(out / FILES[key], out / name)
        files |= {f"{key}_int8": name for key, name in INT8_FILES.items()}
    manifest = {
        "format": FORMAT,
        "files": files,
        "feature_spec": spec.to_dict(),
        "trained_feature_spec": ckpt.spec.to_dict(),
        "classes": list(ckpt.classes),
        "model_config": ckpt.model_config.to_dict(),
        "train_config": ckpt.train_config.to_dict(),
        "norm": {"mean": ckpt.norm.mean.tolist(), "std": ckpt.norm.std.tolist()},
        "video": {
            "dim": video.dim,
            "image_size": video.image_size,
            "resize_shortest_edge": video.resize_shortest_edge,
            "flip_channel_order": video.flip_channel_order,
        },
        "audio": {
            "dim": audio.dim,
            "sample_rate": audio.sample_rate,
            "do_normalize": audio.do_normalize,
            "config": audio.model.config.to_dict(),
        },
        "extra": ckpt.extra,
    }
    _atomic_json(out / MANIFEST, manifest)
    return out / MANIFEST


# ----------------------------------------------------------------------------- ONNX Runtime


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_backbone(encoder, session, info: dict[str, Any], source: str) -> None:
    """What an encoder running in ONNX Runtime holds instead of a torch model (CPU, width)."""
    encoder.model = None
    encoder.session = session
    encoder.source = source
    encoder.weights = "onnx"
    encoder.seed = 0
    encoder.device = torch.device("cpu")
    encoder.dim = int(info["dim"])


class OnnxVideoEncoder(VideoEncoder):
    """MobileViT in ONNX Runtime, with :class:`VideoEncoder`'s preprocessing and batching."""

    def __init__(self, session, info: dict[str, Any], source: str) -> None:  # noqa: D107
        onnx_backbone(self, session, info, source)
        self.image_size = int(info["image_size"])
        self.resize_shortest_edge = int(info["resize_shortest_edge"])
        self.flip_channel_order = bool(info["flip_channel_order"])
        self.calibration_frames = 0

    def forward(self, pixels: torch.Tensor) -> np.ndarray:
        x = pixels.detach().cpu().float().numpy()
        return self.session.run(None, {"pixels": x})[0].astype(np.float32, copy=False)


class OnnxAudioEncoder(AudioEncoder):
    """Wav2Vec2 in ONNX Runtime, with :class:`AudioEncoder`'s normalisation and batching."""

    def __init__(self, session, info: dict[str, Any], source: str) -> None:  # noqa: D107
        onnx_backbone(self, session, info, source)
        self.sample_rate = int(info["sample_rate"])
        self.do_normalize = bool(info["do_normalize"])
        self.hop, self.receptive_field = conv_geometry(Wav2Vec2Config(**info["config"]))

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {"samples": np.ascontiguousarray(inputs, np.float32)})[0]
        return out.astype(np.float32, copy=False)


class OnnxTemporalModel:
    """The temporal model's session as ``model(x, mask) -> logits`` (torch tensors), the calling
    convention of :func:`avarnet.predict.window_probs`."""

    def __init__(self, session) -> None:
        self.session = session

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feeds = {"x": x.detach().cpu().float().numpy(), "mask": mask.detach().cpu().numpy()}
        return torch.from_numpy(self.session.run(None, feeds)[0])


@dataclass
class OnnxBundle:
    """An export folder loaded for inference."""

    checkpoint: Checkpoint  # its ``model`` is the ONNX temporal model
    extractor: Extractor
    model: OnnxTemporalModel
    manifest: dict


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an export folder; ExportError (one line) when it is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{folder}: no {MANIFEST} (not a folder written by `avarnet export`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: not an avarnet ONNX export (format {manifest.get('format')!r})")
    return manifest


def load_onnx(folder: str | Path, precision: str = "fp32", threads: int = 0) -> OnnxBundle:
    """Load an export folder for ``stream --runtime onnx``; ``precision`` fp32 or int8."""
    _require_onnx()
    if precision not in ONNX_PRECISIONS:
        raise ExportError(f"the ONNX runtime runs {' or '.join(ONNX_PRECISIONS)}, not {precision}")
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest["files"]
    suffix = "_int8" if precision == "int8" else ""
    for key in ("video", "audio"):
        if f"{key}{suffix}" not in files:
            raise ExportError(
                f"{folder}: exported without int8 models (export it again with the int8 models)"
            )
    paths = {key: folder / files[f"{key}{suffix}"] for key in ("video", "audio")}
    paths["temporal"] = folder / files["temporal"]
    for path in paths.values():
        if not path.is_file():
            raise ExportError(f"{folder}: missing {path.name}")
    spec = FeatureSpec.from_dict(manifest["feature_spec"])
    video = OnnxVideoEncoder(
        _session(paths["video"], threads), manifest["video"], spec.video_backbone
    )
    audio = OnnxAudioEncoder(
        _session(paths["audio"], threads), manifest["audio"], spec.audio_backbone
    )
    model = OnnxTemporalModel(_session(paths["temporal"], threads))
    norm = manifest["norm"]
    ckpt = Checkpoint(
        model=model,  # type: ignore[arg-type]
        model_config=ModelConfig.from_dict(manifest["model_config"]),
        train_config=TrainConfig.from_dict(manifest["train_config"]),
        classes=list(manifest["classes"]),
        spec=FeatureSpec.from_dict(manifest["trained_feature_spec"]),
        norm=Normalizer(np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)),
        encoder_state=None,
        extra=dict(manifest.get("extra", {})),
    )
    return OnnxBundle(ckpt, Extractor(spec, video, audio), model, manifest)


__all__ = [
    "ExportError",
    "OnnxBundle",
    "export_checkpoint",
    "load_onnx",
    "read_manifest",
]
