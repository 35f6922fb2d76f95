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

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Wav2Vec2Config

from . import io
from .checkpoint import Checkpoint, check_metadata, check_normalizer, load_checkpoint
from .config import ONNX_PRECISIONS, SPEC_LIMITS, FeatureSpec, spec_problem
from .encoders import (
    AudioEncoder,
    VideoEncoder,
    audio_geometry_config,
    conv_geometry,
    copy_onnx_encoder,
    encoder_from_copy,
)
from .errors import AvarnetError
from .features import Extractor, live_spec

log = logging.getLogger("avarnet")

FORMAT = "avarnet-onnx-1"
MANIFEST = "manifest.json"
OPSET = 17
FILES = {"video": "video.onnx", "audio": "audio.onnx", "temporal": "temporal.onnx"}
INT8_FILES = {"video": "video.int8.onnx", "audio": "audio.int8.onnx"}
QUANTISED_OPS = ["MatMul"]  # ConvInteger is slower than fp32 Conv in ONNX Runtime's CPU kernels
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_AUDIO_HOP = 1 << 16  # samples per Wav2Vec2 output frame (base: 320)


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
    encoder = ckpt.spec.audio_encoder
    if encoder.get("kind") == "spectrogram":  # its feature extractor runs outside the model
        raise ExportError(
            f"the audio backbone {ckpt.spec.audio_backbone!r} is a spectrogram model "
            f"({encoder.get('model_type')}) whose feature extractor runs outside the model; "
            "it has no ONNX export (use a waveform model, or an ONNX logmel encoder)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    extractor = extractor or Extractor.from_spec(ckpt.spec, "cpu", ckpt.encoder_state)
    video, audio = extractor.video, extractor.audio
    spec = live_spec(ckpt.spec, audio_context_seconds)
    size = video.image_size
    # ONNX encoders (onnx:PATH) are copied as they are, with their manifests
    encoders = {"video": video, "audio": audio}
    copied = {key: copy_onnx_encoder(enc, out / FILES[key]) for key, enc in encoders.items()}
    if copied["video"] is None:
        _export(
            _Pooled(video.model),
            (torch.rand(2, 3, size, size),),
            out / FILES["video"],
            ["pixels", "features"],
            {"pixels": {0: "batch"}, "features": {0: "batch"}},
        )
    if copied["audio"] is None:
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
            **({"encoder": copied["video"]} if copied["video"] else {}),
        },
        "audio": {
            "dim": audio.dim,
            "sample_rate": audio.sample_rate,
            "do_normalize": audio.do_normalize,
            "config": audio_geometry_config(audio),
            **({"encoder": copied["audio"]} if copied["audio"] else {}),
        },
        "extra": ckpt.extra,
    }
    io.write_json(out / MANIFEST, manifest)  # the umask's permissions, like the models
    return out / MANIFEST


# ----------------------------------------------------------------------------- ONNX Runtime


def _session(path: Path, threads: int, spin: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    if not spin:  # idle threads sleep: a third less CPU a segment where other threads need it
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    """The manifest of an export folder (a JSON object of the right format); ExportError (one
    line) when it is not one. Its fields are checked by :func:`check_manifest`."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{folder}: no {MANIFEST} (not a folder written by `avarnet export`)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES // (1024 * 1024)} MB")
        manifest = io.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise ExportError(f"{path}: the manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: not an avarnet ONNX export (format {manifest.get('format')!r})")
    return manifest


@dataclass(frozen=True)
class CheckedManifest:
    """An export manifest whose every field has the right type, lies in range and agrees with
    the others (what :func:`check_manifest` returns)."""

    files: dict[str, str]
    spec: FeatureSpec  # the live feature spec the encoders compute
    checkpoint: Checkpoint  # configs, classes, normaliser, trained spec; ``model`` is None
    video: dict[str, Any]  # dim, image_size, resize_shortest_edge, flip_channel_order
    audio: dict[str, Any]  # dim, sample_rate, do_normalize, config


def _plain_file_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and name.isprintable()
    )


def _section(d: dict, key: str, where: Path, prefix: str = "") -> dict:
    value = d.get(key)
    if not isinstance(value, dict):
        what = "is missing" if value is None else "is not a JSON object"
        raise ExportError(f"{where}: {prefix}{key} {what}")
    return value


def _integer(d: dict, key: str, section: str, where: Path, low: int, high: int) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ExportError(
            f"{where}: {section}.{key} = {value!r} is not an integer in [{low}, {high}]"
        )
    return value


def _flag(d: dict, key: str, section: str, where: Path) -> bool:
    value = d.get(key)
    if not isinstance(value, bool):
        raise ExportError(f"{where}: {section}.{key} = {value!r} is not true or false")
    return value


def _numbers(value: Any, what: str, where: Path) -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        raise ExportError(f"{where}: {what} is not a list of numbers")
    try:
        return np.asarray([float(x) for x in value], np.float64)
    except OverflowError:
        raise ExportError(f"{where}: {what} holds a number too large to be finite") from None


def _spec(value: Any, key: str, where: Path) -> FeatureSpec:
    if not isinstance(value, dict):
        raise ExportError(f"{where}: {key} is not a JSON object")
    try:
        spec = FeatureSpec.from_dict(value)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{where}: {key} is invalid ({e})") from None
    problem = spec_problem(spec)
    if problem:
        raise ExportError(f"{where}: {key}: {problem}")
    return spec


def _audio_geometry(config: dict, where: Path) -> tuple[int, int]:
    try:
        hop, field = conv_geometry(Wav2Vec2Config(**config))
    except Exception as e:  # noqa: BLE001 - transformers' and its validators' own error types
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise ExportError(
            f"{where}: audio.config is not a Wav2Vec2 configuration ({first})"
        ) from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (hop, field)) or not (
        1 <= hop <= MAX_AUDIO_HOP and hop <= field <= 64 * MAX_AUDIO_HOP
    ):
        raise ExportError(
            f"{where}: audio.config gives a frame hop of {hop!r} samples and a receptive field "
            f"of {field!r} (expected 1..{MAX_AUDIO_HOP} and at least the hop)"
        )
    return hop, field


def check_manifest(manifest: dict, where: str | Path) -> CheckedManifest:
    """Check an export manifest as :func:`avarnet.checkpoint.load_checkpoint` checks a
    checkpoint: types, ranges, finite normalisation with a positive spread, a sane image size,
    and agreement between the feature specs, the encoders' widths, the model and the classes.

    Raises ExportError (one line naming ``where``) for the first problem found.
    """
    where = Path(where)
    files = _section(manifest, "files", where)
    for key, name in files.items():
        if not _plain_file_name(name):
            raise ExportError(f"{where}: files.{key} = {name!r} is not a file name in the folder")
    for key in FILES:
        if key not in files:
            raise ExportError(f"{where}: files.{key} is missing")
    spec = _spec(manifest.get("feature_spec"), "feature_spec", where)
    parts = {
        "model_config": manifest.get("model_config"),
        "train_config": manifest.get("train_config"),
        "feature_spec": manifest.get("trained_feature_spec"),
        "classes": manifest.get("classes"),
    }
    model_config, train_config, trained, classes = check_metadata(parts, where, ExportError)
    for name in ("video_dim", "audio_dim", "sample_rate", "image_size"):
        if getattr(spec, name) != getattr(trained, name):
            raise ExportError(
                f"{where}: feature_spec {name} {getattr(spec, name)} differs from the trained "
                f"one ({getattr(trained, name)})"
            )
    norm = _section(manifest, "norm", where)
    normalizer = check_normalizer(
        _numbers(norm.get("mean"), "norm.mean", where),
        _numbers(norm.get("std"), "norm.std", where),
        model_config.input_dim,
        where,
        ExportError,
    )
    v = _section(manifest, "video", where)
    video = {
        "dim": _integer(v, "dim", "video", where, *SPEC_LIMITS["video_dim"]),
        "image_size": _integer(v, "image_size", "video", where, *SPEC_LIMITS["image_size"]),
        "resize_shortest_edge": _integer(
            v, "resize_shortest_edge", "video", where, *SPEC_LIMITS["resize_shortest_edge"]
        ),
        "flip_channel_order": _flag(v, "flip_channel_order", "video", where),
    }
    a = _section(manifest, "audio", where)
    audio = {
        "dim": _integer(a, "dim", "audio", where, *SPEC_LIMITS["audio_dim"]),
        "sample_rate": _integer(a, "sample_rate", "audio", where, *SPEC_LIMITS["sample_rate"]),
        "do_normalize": _flag(a, "do_normalize", "audio", where),
        "config": _section(a, "config", where, "audio."),
    }
    _audio_geometry(audio["config"], where)
    for section, info, names in (
        ("video", video, ("dim", "image_size", "resize_shortest_edge")),
        ("audio", audio, ("dim", "sample_rate")),
    ):
        for name in names:
            field = name if name != "dim" else f"{section}_dim"
            if info[name] != getattr(spec, field):
                raise ExportError(
                    f"{where}: {section}.{name} {info[name]} differs from the feature spec's "
                    f"{field} ({getattr(spec, field)})"
                )
    extra = manifest.get("extra", {})
    if not isinstance(extra, dict):
        raise ExportError(f"{where}: extra is not a JSON object")
    ckpt = Checkpoint(
        model=None,  # type: ignore[arg-type]
        model_config=model_config,
        train_config=train_config,
        classes=list(classes),
        spec=trained,
        norm=normalizer,
        encoder_state=None,
        extra=dict(extra),
    )
    return CheckedManifest(dict(files), spec, ckpt, video, audio)


def _open_session(path: Path, threads: int, spin: bool = True):
    try:
        return _session(path, threads, spin)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own error types (protobuf, graph)
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise ExportError(f"{path}: not a loadable ONNX model ({first})") from None


def _check_signature(session, path: Path, inputs: dict, output: tuple) -> None:
    """The model's inputs (name -> (element type, shape)) and single output shape are the
    expected ones; None in an expected shape, or a symbolic size in the model's, matches any."""

    def fits(shape, want) -> bool:
        return len(shape) == len(want) and all(
            w is None or not isinstance(s, int) or s == w for s, w in zip(shape, want, strict=True)
        )

    def text(shape) -> str:
        return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"

    got = {i.name: i for i in session.get_inputs()}
    if set(got) != set(inputs):
        raise ExportError(f"{path}: inputs {sorted(got)}, expected {sorted(inputs)}")
    for name, (kind, want) in inputs.items():
        if got[name].type != kind or not fits(got[name].shape, want):
            raise ExportError(
                f"{path}: input {name} is {got[name].type} {got[name].shape}, expected {kind} "
                f"{text(want)}"
            )
    outputs = session.get_outputs()
    if len(outputs) != 1 or not fits(outputs[0].shape, output):
        shapes = [o.shape for o in outputs]
        raise ExportError(f"{path}: outputs {shapes}, expected one of shape {text(output)}")


def load_onnx(
    folder: str | Path, precision: str = "fp32", threads: int = 0, spin: bool = True
) -> OnnxBundle:
    """Load an export folder for ``stream --runtime onnx``; ``precision`` fp32 or int8.
    ``spin`` False: ONNX Runtime's idle threads sleep instead of spinning (a server, whose
    cameras' decoders need the cores between calls).

    The manifest is checked first (:func:`check_manifest`), then the models it names: each file
    is present, loads, and takes and gives the shapes the manifest describes. Every problem is
    an ExportError (one line).
    """
    _require_onnx()
    if precision not in ONNX_PRECISIONS:
        raise ExportError(f"the ONNX runtime runs {' or '.join(ONNX_PRECISIONS)}, not {precision}")
    folder = Path(folder)
    manifest = read_manifest(folder)
    checked = check_manifest(manifest, folder / MANIFEST)
    files = checked.files
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
    sessions = {key: _open_session(path, threads, spin) for key, path in paths.items()}
    ckpt, spec = checked.checkpoint, checked.spec
    size, length = checked.video["image_size"], ckpt.train_config.seq_len
    float_ = "tensor(float)"
    copied = {key: manifest[key].get("encoder") for key in ("video", "audio")}  # ONNX encoders
    if copied["video"] is None:
        _check_signature(
            sessions["video"],
            paths["video"],
            {"pixels": (float_, (None, 3, size, size))},
            (None, checked.video["dim"]),
        )
    if copied["audio"] is None:
        _check_signature(
            sessions["audio"],
            paths["audio"],
            {"samples": (float_, (None, None))},
            (None, None, checked.audio["dim"]),
        )
    _check_signature(
        sessions["temporal"],
        paths["temporal"],
        {
            "x": (float_, (None, length, ckpt.model_config.input_dim)),
            "mask": ("tensor(bool)", (None, length)),
        },
        (1, None, length, ckpt.model_config.num_classes),
    )
    video = (
        OnnxVideoEncoder(sessions["video"], checked.video, spec.video_backbone)
        if copied["video"] is None
        else encoder_from_copy(paths["video"], copied["video"], spec.video_backbone)
    )
    audio = (
        OnnxAudioEncoder(sessions["audio"], checked.audio, spec.audio_backbone)
        if copied["audio"] is None
        else encoder_from_copy(paths["audio"], copied["audio"], spec.audio_backbone)
    )
    model = OnnxTemporalModel(sessions["temporal"])
    ckpt.model = model  # type: ignore[assignment]
    return OnnxBundle(ckpt, Extractor(spec, video, audio), model, manifest)


__all__ = [
    "CheckedManifest",
    "ExportError",
    "OnnxBundle",
    "check_manifest",
    "export_checkpoint",
    "load_onnx",
    "read_manifest",
]
