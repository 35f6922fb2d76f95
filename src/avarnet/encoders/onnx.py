"""ONNX encoders: ``onnx:PATH`` (a ``.onnx`` file with its manifest beside it) run by ONNX Runtime.

Each kind reuses the base class's preprocessing and batching, so an ONNX encoder fits every place
a transformers one does (extract, predict, stream, serve, export):

* :class:`OnnxFrameEncoder` (``frame``): preprocessed pixels (B, 3, S, S) or (B, S, S, 3) -> (B, dim);
* :class:`OnnxClipEncoder` (``clip``): a segment's ``frames`` frames as one clip, (B, 3, F, S, S)
  or (B, F, 3, S, S) -> (B, dim); each frame of the clip gets the clip's vector, so the mean over a
  segment's frames is the clip's vector;
* :class:`OnnxWaveformEncoder` (``waveform``): samples (B, N) -> (B, frames, dim), frames placed
  by the manifest's hop and receptive field;
* :class:`OnnxLogMelEncoder` (``logmel``): samples -> log-mel patches (:mod:`.logmel`) -> one
  vector per patch, placed in time like a waveform encoder's frames.

The encoder's identity (the feature spec's digest) is the SHA-256 of the ONNX file; its manifest's
settings are recorded beside it (``entry``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .hf import SOURCE_LOADERS, AudioEncoder, EncoderLoadError, VideoEncoder
from .logmel import LogMelFrontEnd
from .manifest import (
    MANIFEST_FORMAT,
    EncoderManifest,
    ManifestError,
    parse_manifest,
    read_manifest,
)

logger = logging.getLogger("avarnet")

ONNX_PREFIX = "onnx:"
DIGEST_BLOCK = 1 << 20
CLIPS_PER_PASS = 4  # clips of a clip encoder run together


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(DIGEST_BLOCK):
            h.update(block)
    return h.hexdigest()


def onnx_session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session; EncoderLoadError (one line) when it cannot be made."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EncoderLoadError(
            "ONNX Runtime is not installed: pip install 'avarnet[onnx]'"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads > 0 else torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # a file ONNX Runtime cannot read: corrupt, or not ONNX
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderLoadError(f"{path}: not a loadable ONNX model ({line[:160]})") from None


class OnnxModel:
    """An ONNX file in ONNX Runtime: the session, its input and output tensor names, the manifest."""

    def __init__(self, path: Path, manifest: EncoderManifest, threads: int = 0) -> None:
        self.path = path
        self.manifest = manifest
        self.session = onnx_session(path, threads)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name: o for o in self.session.get_outputs()}
        where = manifest.path
        self.input = manifest.input["name"] or inputs[0]
        if self.input not in inputs:
            raise ManifestError(
                f"{where}: input.name {self.input!r} is not an input of the model "
                f"(inputs: {', '.join(inputs)})"
            )
        self.output = manifest.output or next(iter(outputs))
        if self.output not in outputs:
            raise ManifestError(
                f"{where}: output.name {self.output!r} is not an output of the model "
                f"(outputs: {', '.join(outputs)})"
            )
        last = outputs[self.output].shape[-1] if outputs[self.output].shape else None
        if isinstance(last, int) and last != manifest.dim:
            raise ManifestError(
                f"{where}: output.dim is {manifest.dim} but the model's {self.output!r} is {last}-d"
            )
        shape = next(i for i in self.session.get_inputs() if i.name == self.input).shape
        self.input_rank = len(shape)
        self.input_shape = shape
        self.sha256 = file_digest(path)

    def run(self, x: np.ndarray) -> np.ndarray:
        feed = {self.input: np.ascontiguousarray(x, np.float32)}
        try:
            out = self.session.run([self.output], feed)[0]
        except Exception as e:  # ONNX Runtime refuses the input the manifest's settings make
            line = str(e).strip().replace("\n", " ")[:200]
            raise ManifestError(
                f"{self.manifest.path}: the model refuses input of shape {tuple(x.shape)} made "
                f"from the input.* settings ({line})"
            ) from None
        return np.asarray(out, dtype=np.float32)

    def check_width(self, out: np.ndarray) -> None:
        if out.shape[-1] != self.manifest.dim:
            raise ManifestError(
                f"{self.manifest.path}: output.dim is {self.manifest.dim} but the model gave "
                f"{out.shape[-1]}-d vectors"
            )


def _onnx_file(source: str, setting: str) -> Path:
    path = Path(source[len(ONNX_PREFIX) :]).expanduser()
    if not path.is_file():
        raise EncoderLoadError(f"{setting} {source!r}: no such ONNX file")
    return path


def _open(source: str, setting: str, weights: str, side: str) -> tuple[Path, EncoderManifest]:
    if weights != "pretrained":
        raise EncoderLoadError(
            f"{setting} {source!r}: an ONNX encoder carries its own weights; weights must be "
            f"'pretrained', got {weights!r}",
            remedies=("weights=pretrained",),
        )
    path = _onnx_file(source, setting)
    manifest = read_manifest(path)
    if manifest.side != side:
        kinds = "frame or clip" if side == "video" else "waveform or logmel"
        raise ManifestError(
            f"{manifest.path}: kind {manifest.kind!r} is an {manifest.side} input; the {setting} "
            f"takes {kinds}"
        )
    return path, manifest


def _onnx_backbone(encoder: Any, model: OnnxModel, source: str) -> None:
    """What every ONNX encoder holds instead of a torch model (it runs on the CPU)."""
    encoder.model = None
    encoder.onnx = model
    encoder.source = source
    encoder.weights = "pretrained"
    encoder.seed = 0
    encoder.device = torch.device("cpu")
    encoder.dim = model.manifest.dim
    encoder.entry = model.manifest.entry()


class OnnxFrameEncoder(VideoEncoder):
    """A ``frame`` ONNX encoder with :class:`VideoEncoder`'s resize, crop and normalisation."""

    def __init__(self, model: OnnxModel, source: str) -> None:  # noqa: D107
        _onnx_backbone(self, model, source)
        p = model.manifest.input
        self.image_size = int(p["image_size"])
        self.resize_shortest_edge = int(p["resize_shortest_edge"])
        self.flip_channel_order = p["channel_order"] == "bgr"
        self.layout = p["layout"]
        self.set_normalisation(p["mean"], p["std"], p["rescale"])
        self.calibration_frames = 0

    def digest(self) -> str:
        return self.onnx.sha256

    def _batchnorms(self) -> list:
        return []

    def _pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.forward(pixels))

    def forward(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed pixels (B, 3, S, S) -> (B, dim) float32."""
        x = pixels.detach().cpu().float().numpy()
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        out = self.onnx.run(x).reshape(len(x), -1)
        self.onnx.check_width(out)
        return out


class OnnxClipEncoder(OnnxFrameEncoder):
    """A ``clip`` ONNX encoder: each segment's ``clip_frames`` frames form one clip."""

    kind = "clip"

    def __init__(self, model: OnnxModel, source: str) -> None:  # noqa: D107
        super().__init__(model, source)
        p = model.manifest.input
        self.clip_frames = int(p["frames"])
        self.clip_stride = int(p["stride"])
        self.clip_fps = float(p["fps"])
        self.clip_seconds = self.clip_frames * self.clip_stride / self.clip_fps

    def forward(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed frames of whole clips (n * F, 3, S, S) -> (n * F, dim): each frame gets
        its clip's vector."""
        x = pixels.detach().cpu().float().numpy()
        F = self.clip_frames
        if len(x) % F:
            raise ValueError(f"a clip encoder takes whole clips of {F} frames, got {len(x)} frames")
        n, S = len(x) // F, x.shape[-1]
        clips = x.reshape(n, F, 3, S, S)
        if self.layout == "NCTHW":
            clips = clips.transpose(0, 2, 1, 3, 4)
        out = self.onnx.run(clips).reshape(n, -1)
        self.onnx.check_width(out)
        return np.repeat(out, F, axis=0)

    def encode(self, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 RGB frames of whole clips (n * F, H, W, 3) -> (n * F, dim) float32."""
        F = self.clip_frames
        if frames.ndim == 3:
            frames = frames[None]
        if len(frames) % F:
            raise ValueError(
                f"a clip encoder takes whole clips of {F} frames, got {len(frames)} frames"
            )
        step = F * max(1, min(CLIPS_PER_PASS, batch_size // F or 1))
        outputs = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(frames), step):
            outputs.append(self.forward(self.preprocess(frames[start : start + step])))
        return np.concatenate(outputs)


class OnnxWaveformEncoder(AudioEncoder):
    """A ``waveform`` ONNX encoder: samples (B, N) -> (B, frames, dim), as :class:`AudioEncoder`."""

    def __init__(self, model: OnnxModel, source: str) -> None:  # noqa: D107
        _onnx_backbone(self, model, source)
        p = model.manifest.input
        self.sample_rate = int(p["sample_rate"])
        self.do_normalize = bool(p["normalise"])
        self.hop = int(p["hop"])
        self.receptive_field = int(p["receptive_field"])

    def digest(self) -> str:
        return self.onnx.sha256

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        out = self.onnx.run(inputs)
        if out.ndim == 2:  # one vector per window
            out = out[:, None]
        self.onnx.check_width(out)
        expected = self.num_frames(inputs.shape[1])
        if out.ndim != 3 or out.shape[1] != expected:
            raise ManifestError(
                f"{self.onnx.manifest.path}: input.hop / input.receptive_field "
                f"({self.hop} / {self.receptive_field}) give {expected} frames for "
                f"{inputs.shape[1]} samples, the model gave {out.shape[1] if out.ndim == 3 else 0}"
            )
        return out


class OnnxLogMelEncoder(AudioEncoder):
    """A ``logmel`` ONNX encoder: log-mel patches (VGGish/YAMNet front end) -> one vector each."""

    kind = "logmel"

    def __init__(self, model: OnnxModel, source: str) -> None:  # noqa: D107
        _onnx_backbone(self, model, source)
        p = dict(model.manifest.input)
        self.layout = p.pop("layout") or self._graph_layout(model)
        p.pop("name")
        self.front = LogMelFrontEnd(**p)
        self.sample_rate = self.front.sample_rate
        self.do_normalize = False
        self.hop = self.front.patch_hop_samples
        self.receptive_field = self.front.patch_receptive_field

    @staticmethod
    def _graph_layout(model: OnnxModel) -> str:
        """NTF (rank 3), N1TF (rank 4, channel first) or NTF1, read from the model's input."""
        if model.input_rank == 3:
            return "NTF"
        if model.input_rank == 4:
            return "NTF1" if model.input_shape[-1] == 1 else "N1TF"
        raise ManifestError(
            f"{model.manifest.path}: input.layout: the model's input {model.input!r} has rank "
            f"{model.input_rank}; a patch input is (N, T, F), (N, 1, T, F) or (N, T, F, 1)"
        )

    def digest(self) -> str:
        return self.onnx.sha256

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """Padded windows (B, N) -> (B, patches, dim)."""
        patches = [self.front.patches(row) for row in inputs]  # (P, T, F) each, P equal
        counts = {len(p) for p in patches}
        if len(counts) != 1:
            raise ValueError("windows of one batch must have the same length")
        P = counts.pop()
        x = np.concatenate(patches)  # (B * P, T, F)
        if self.layout == "N1TF":
            x = x[:, None]
        elif self.layout == "NTF1":
            x = x[..., None]
        out = self.onnx.run(x).reshape(len(inputs) * P, -1)
        self.onnx.check_width(out)
        return out.reshape(len(inputs), P, -1)


def load_onnx_video(
    source: str, weights: str = "pretrained", seed: int = 0, device: str = "auto"
) -> OnnxFrameEncoder:
    """A ``frame`` or ``clip`` encoder from ``onnx:PATH`` (runs on the CPU whatever ``device``)."""
    path, manifest = _open(source, "video_backbone", weights, "video")
    model = OnnxModel(path, manifest)
    cls = OnnxClipEncoder if manifest.kind == "clip" else OnnxFrameEncoder
    return cls(model, source)


def load_onnx_audio(
    source: str, weights: str = "pretrained", seed: int = 0, device: str = "auto"
) -> AudioEncoder:
    """A ``waveform`` or ``logmel`` encoder from ``onnx:PATH`` (runs on the CPU)."""
    path, manifest = _open(source, "audio_backbone", weights, "audio")
    model = OnnxModel(path, manifest)
    cls = OnnxLogMelEncoder if manifest.kind == "logmel" else OnnxWaveformEncoder
    return cls(model, source)


def copy_onnx_encoder(encoder: Any, path: Path) -> dict[str, Any] | None:
    """Copy an ONNX-backed encoder's file to ``path``; returns its manifest (to keep with the copy),
    or None for an encoder of another backend (nothing copied)."""
    model = getattr(encoder, "onnx", None)
    if not isinstance(model, OnnxModel):
        return None
    shutil.copyfile(model.path, path)
    m = model.manifest
    return {
        "format": MANIFEST_FORMAT,
        "kind": m.kind,
        "input": {k: v for k, v in m.input.items() if v is not None},
        "output": {"name": model.output, "dim": m.dim},
        "licence": m.licence,
        "source": m.source,
    }


def audio_geometry_config(audio: AudioEncoder) -> dict[str, Any]:
    """The audio section's ``config`` of an export: the model's transformers config, or for an
    ONNX encoder a one-layer Wav2Vec2-style geometry with its hop and receptive field."""
    if audio.model is not None:
        return audio.model.config.to_dict()
    return {"conv_dim": [1], "conv_kernel": [audio.receptive_field], "conv_stride": [audio.hop]}


def encoder_from_copy(path: Path, manifest: dict[str, Any], source: str) -> Any:
    """The encoder of a file written by :func:`copy_onnx_encoder`, with the manifest it returned."""
    checked = parse_manifest(manifest, path.with_suffix(".json"))
    model = OnnxModel(path, checked)
    cls = {
        "frame": OnnxFrameEncoder,
        "clip": OnnxClipEncoder,
        "waveform": OnnxWaveformEncoder,
        "logmel": OnnxLogMelEncoder,
    }[checked.kind]
    return cls(model, source)


SOURCE_LOADERS[ONNX_PREFIX] = (load_onnx_video, load_onnx_audio)

__all__ = [
    "ONNX_PREFIX",
    "OnnxClipEncoder",
    "OnnxFrameEncoder",
    "OnnxLogMelEncoder",
    "OnnxModel",
    "OnnxWaveformEncoder",
    "audio_geometry_config",
    "copy_onnx_encoder",
    "encoder_from_copy",
    "file_digest",
    "load_onnx_audio",
    "load_onnx_video",
    "onnx_session",
]
