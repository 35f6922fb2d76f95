"""The manifest of an ONNX encoder: a JSON file beside the ``.onnx`` file (same name, ``.json``).

Example (an image model, one vector per frame)::

    {
      "format": "avarnet-encoder-1",
      "kind": "frame",
      "input": {"name": "pixels", "image_size": 224, "resize_shortest_edge": 256,
                "channel_order": "rgb", "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225]},
      "output": {"name": "features", "dim": 1280},
      "licence": "Apache-2.0",
      "source": "https://example.org/where-the-weights-come-from"
    }

``kind`` is what the encoder eats: ``frame`` and ``clip`` (video), ``waveform`` and ``logmel``
(audio); ``input`` holds that kind's parameters (:data:`INPUT_FIELDS`; omitted ones take their
defaults), ``output`` the tensor to read and its width. Every fault is reported as one line naming
the field (``input.image_size``, ``output.dim``, ``licence``, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hf import PIXEL_SCALE, EncoderLoadError

MANIFEST_FORMAT = "avarnet-encoder-1"
MANIFEST_KINDS = {"frame": "video", "clip": "video", "waveform": "audio", "logmel": "audio"}
TOP_FIELDS = ("format", "kind", "input", "output", "licence", "source", "description")
REQUIRED = object()  # marks a field without a default


@dataclass(frozen=True)
class Field:
    """One manifest field: its type ("int", "float", "bool", "str", "floats3"), default, bounds
    or choices."""

    type: str
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    choices: tuple = ()


FRAME_FIELDS = {
    "name": Field("str", ""),
    "image_size": Field("int", REQUIRED, 1, 4096),
    "resize_shortest_edge": Field("int", 0, 0, 4096),  # 0: image_size
    "channel_order": Field("str", "rgb", choices=("rgb", "bgr")),
    "rescale": Field("float", PIXEL_SCALE, 1e-12, 1e6),
    "mean": Field("floats3", None),
    "std": Field("floats3", None, 1e-12, 1e6),
}
INPUT_FIELDS: dict[str, dict[str, Field]] = {
    "frame": FRAME_FIELDS | {"layout": Field("str", "NCHW", choices=("NCHW", "NHWC"))},
    "clip": FRAME_FIELDS
    | {
        "frames": Field("int", REQUIRED, 1, 64),
        "stride": Field("int", 1, 1, 64),
        "fps": Field("float", REQUIRED, 0.1, 1000.0),
        "layout": Field("str", "NCTHW", choices=("NCTHW", "NTCHW")),
    },
    "waveform": {
        "name": Field("str", ""),
        "sample_rate": Field("int", 16_000, 1_000, 192_000),
        "normalise": Field("bool", False),
        "hop": Field("int", REQUIRED, 1, 10_000_000),
        "receptive_field": Field("int", REQUIRED, 1, 10_000_000),
    },
    "logmel": {
        "name": Field("str", ""),
        "sample_rate": Field("int", 16_000, 1_000, 192_000),
        "window_seconds": Field("float", 0.025, 1e-4, 1.0),
        "hop_seconds": Field("float", 0.010, 1e-4, 1.0),
        "mel_bands": Field("int", 64, 1, 512),
        "fmin": Field("float", 125.0, 0.0, 96_000.0),
        "fmax": Field("float", 7500.0, 1.0, 96_000.0),
        "log_offset": Field("float", 0.01, 1e-12, 10.0),
        "patch_frames": Field("int", 96, 1, 10_000),
        "patch_hop_frames": Field("int", 96, 1, 10_000),
        "layout": Field("str", "", choices=("", "NTF", "N1TF", "NTF1")),  # "": from the graph
    },
}
OUTPUT_FIELDS = {"name": Field("str", ""), "dim": Field("int", REQUIRED, 1, 65_536)}


class ManifestError(EncoderLoadError):
    """An encoder manifest is missing or wrong; the message is one line naming the field."""


def _check(where: Path, name: str, value: Any, spec: Field) -> Any:
    def bad(expected: str) -> ManifestError:
        return ManifestError(f"{where}: {name} must be {expected}, got {value!r}")

    if spec.type == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if spec.type == "str":
        if not isinstance(value, str):
            raise bad("a string")
        if spec.choices and value not in spec.choices:
            raise bad("one of " + ", ".join(repr(c) for c in spec.choices if c))
        return value
    if spec.type == "floats3":
        if (
            not isinstance(value, list)
            or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)
            or not all(math.isfinite(v) for v in value)
            or (spec.low is not None and any(v < spec.low for v in value))
        ):
            positive = " positive" if spec.low is not None else ""
            raise bad(f"a list of three finite{positive} numbers (one per channel)")
        return [float(v) for v in value]
    number = int if spec.type == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, number):
        raise bad("an integer" if spec.type == "int" else "a number")
    if not math.isfinite(value) or not spec.low <= value <= spec.high:
        kind = "an integer" if spec.type == "int" else "a number"
        raise bad(f"{kind} in [{spec.low:g}, {spec.high:g}]")
    return value if spec.type == "int" else float(value)


def _section(
    where: Path, prefix: str, raw: Any, fields: dict[str, Field], kind: str = ""
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: {prefix} must be an object, got {raw!r}")
    for key in raw:
        if key not in fields:
            of = f"kind {kind!r}" if kind else prefix
            raise ManifestError(
                f"{where}: {prefix}.{key} is not a field of {of} (fields: {', '.join(fields)})"
            )
    out = {}
    for key, spec in fields.items():
        if key in raw:
            out[key] = _check(where, f"{prefix}.{key}", raw[key], spec)
        elif spec.default is REQUIRED:
            raise ManifestError(f"{where}: {prefix}.{key} is missing")
        else:
            out[key] = spec.default
    return out


@dataclass(frozen=True)
class EncoderManifest:
    """A checked manifest: kind, the input's parameters (defaults filled in), output tensor."""

    path: Path
    kind: str
    input: dict[str, Any]
    output: str
    dim: int
    licence: str
    source: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def side(self) -> str:
        """``video`` or ``audio``."""
        return MANIFEST_KINDS[self.kind]

    def entry(self) -> dict[str, Any]:
        """What the feature spec records about this encoder (besides its name and digest)."""
        return {
            "backend": "onnx",
            "kind": self.kind,
            "input": dict(self.input),
            "output": self.output,
            "licence": self.licence,
            "source": self.source,
        }


def manifest_path(onnx_path: Path) -> Path:
    """The manifest beside an ONNX file: ``model.onnx`` -> ``model.json``."""
    return onnx_path.with_suffix(".json")


def read_manifest(onnx_path: str | Path) -> EncoderManifest:
    """Read and check the manifest of ``onnx_path``; ManifestError (one line) on any fault."""
    where = manifest_path(Path(onnx_path))
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(
            f"{where}: no manifest beside the ONNX file (a JSON file naming kind, input, output, "
            f"licence and source)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{where}: unreadable manifest ({type(e).__name__}: {e})") from None
    return parse_manifest(raw, where)


def parse_manifest(raw: Any, where: Path) -> EncoderManifest:
    """Check a manifest's content (see :func:`read_manifest`)."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: the manifest must be a JSON object")
    for key in raw:
        if key not in TOP_FIELDS:
            raise ManifestError(
                f"{where}: {key} is not a manifest field (fields: {', '.join(TOP_FIELDS)})"
            )
    if "format" in raw and raw["format"] != MANIFEST_FORMAT:
        raise ManifestError(f"{where}: format must be {MANIFEST_FORMAT!r}, got {raw['format']!r}")
    kind = raw.get("kind")
    if kind not in MANIFEST_KINDS:
        what = (
            "is missing"
            if kind is None
            else f"must be one of {', '.join(MANIFEST_KINDS)}, got {kind!r}"
        )
        raise ManifestError(f"{where}: kind {what}")
    for key in ("licence", "source"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            what = "is missing" if value is None else f"must be a non-empty string, got {value!r}"
            raise ManifestError(f"{where}: {key} {what}")
    if "output" not in raw:
        raise ManifestError(f"{where}: output is missing")
    inputs = _section(where, "input", raw.get("input", {}), INPUT_FIELDS[kind], kind)
    if kind in ("frame", "clip"):
        if (inputs["mean"] is None) != (inputs["std"] is None):
            missing = "input.std" if inputs["std"] is None else "input.mean"
            raise ManifestError(f"{where}: {missing} is missing (mean and std go together)")
        if inputs["resize_shortest_edge"] == 0:
            inputs["resize_shortest_edge"] = inputs["image_size"]
        elif inputs["resize_shortest_edge"] < inputs["image_size"]:
            raise ManifestError(
                f"{where}: input.resize_shortest_edge must be >= input.image_size "
                f"({inputs['image_size']}), got {inputs['resize_shortest_edge']}"
            )
    if kind == "logmel" and not inputs["fmin"] < inputs["fmax"] <= inputs["sample_rate"] / 2:
        raise ManifestError(
            f"{where}: input.fmax must be above input.fmin and at most half input.sample_rate, "
            f"got {inputs['fmax']!r}"
        )
    output = _section(where, "output", raw["output"], OUTPUT_FIELDS)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ManifestError(f"{where}: description must be a string, got {description!r}")
    return EncoderManifest(
        path=where,
        kind=kind,
        input=inputs,
        output=output["name"],
        dim=output["dim"],
        licence=raw["licence"].strip(),
        source=raw["source"].strip(),
        description=description,
    )


__all__ = [
    "INPUT_FIELDS",
    "MANIFEST_FORMAT",
    "MANIFEST_KINDS",
    "EncoderManifest",
    "ManifestError",
    "manifest_path",
    "parse_manifest",
    "read_manifest",
]
