"""ONNX export: the folder `stream --runtime onnx` loads scores like the torch path."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_FIXTURES, cli, read_jsonl, tiny_checkpoint, write_event_clip
from conftest import make_tiny_extractor as tiny_extractor

from avarnet.checkpoint import save_checkpoint
from avarnet.cli import main

pytest.importorskip("onnxruntime")

FIXTURES = Path(os.environ.get("AVARNET_SHARED_FIXTURES", SHARED_FIXTURES))
REAL_CLIP = FIXTURES / "real" / "nasa_13013.mp4"  # 13 s, H.264 + AAC (16 kHz)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def exported(tiny_backbones, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    ckpt = root / "tiny.ckpt"
    save_checkpoint(ckpt, tiny_checkpoint(tiny_extractor(tiny_backbones)))
    out = root / "onnx"
    old = os.umask(UMASK)
    try:
        assert main(["-q", "export", str(ckpt), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    return ckpt, out


UMASK = 0o002  # not the usual 0o022: the files must follow the umask, not a fixed mode


def _segments(path: Path) -> list[dict]:
    return [r for r in read_jsonl(path) if r["type"] == "segment"]


def test_export_writes_models_and_manifest(exported):
    ckpt, out = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "avarnet-onnx-1" and manifest["classes"] == [
        "crash",
        "normal",
        "pain",
    ]
    for name in manifest["files"].values():
        assert (out / name).stat().st_size > 0
    for path in out.iterdir():  # the manifest too: not the 0600 of a private temporary file
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK, path.name
    assert manifest["feature_spec"]["audio_mode"] == "causal"  # the live spec
    assert manifest["trained_feature_spec"]["audio_mode"] == "chunked"
    assert len(manifest["norm"]["mean"]) == manifest["model_config"]["input_dim"]


@pytest.mark.skipif(not REAL_CLIP.exists(), reason="shared real fixtures not present")
def test_onnx_scores_equal_torch_on_a_real_clip_through_the_cli(exported, tmp_path):
    ckpt, out = exported
    runs = {}
    for runtime, model in (("torch", ckpt), ("onnx", out)):
        jsonl = tmp_path / f"{runtime}.jsonl"
        args = ["stream", str(REAL_CLIP), "--checkpoint", str(model), "--jsonl", str(jsonl)]
        assert main(cli(*args, "--runtime", runtime)) == 0
        runs[runtime] = _segments(jsonl)
    torch_s, onnx_s = runs["torch"], runs["onnx"]
    assert len(torch_s) == len(onnx_s) == 14
    a = np.array([s["anomaly_score"] for s in torch_s])
    b = np.array([s["anomaly_score"] for s in onnx_s])
    assert np.abs(a - b).max() <= 1e-3
    assert a.std() > 1e-4  # the scores move, so agreement is not trivial
    assert [s["start"] for s in torch_s] == [s["start"] for s in onnx_s]


def test_onnx_int8_stays_close(exported, event_clip_path):
    from avarnet.export import load_onnx
    from avarnet.media import SegmentSource

    _, out = exported
    fp32, int8 = load_onnx(out, "fp32", 1), load_onnx(out, "int8", 1)
    segments = list(SegmentSource(event_clip_path, fp32.extractor.spec))
    from avarnet.features import SegmentEncoder, cosine

    a = SegmentEncoder(fp32.extractor).encode(segments)
    b = SegmentEncoder(int8.extractor).encode(segments)
    assert cosine(a["audio"], b["audio"]).min() > 0.95
    assert cosine(a["video"], b["video"]).min() > 0.95


def test_not_an_export_folder_is_one_line(tmp_path, capsys, event_clip_path):
    code = main(
        cli("stream", str(event_clip_path), "--checkpoint", str(tmp_path), "--runtime", "onnx")
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "manifest.json" in err[0]


@pytest.fixture(scope="module")
def event_clip_path(tmp_path_factory) -> Path:
    return write_event_clip(tmp_path_factory.mktemp("clips") / "event.mp4", 4.0)


def _set(*keys_and_value):
    """A tampering that sets manifest[k1][k2]... to a value."""
    *keys, value = keys_and_value

    def change(manifest: dict, folder: Path) -> None:
        d = manifest
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value(manifest) if callable(value) else value

    return change


def _drop(key):
    return lambda manifest, folder: manifest.pop(key)


def _replace_file(name, data: bytes | None):
    def change(manifest: dict, folder: Path) -> None:
        (folder / name).unlink()  # a hard link to the fixture's file: never write through it
        if data is not None:
            (folder / name).write_bytes(data)

    return change


def _outside(key):
    """The model named by a path leading out of the folder (to a real model there)."""

    def change(manifest: dict, folder: Path) -> None:
        name = manifest["files"][key]
        shutil.copy(folder / name, folder.parent / name)
        manifest["files"][key] = f"../{name}"

    return change


def _dim(manifest: dict) -> int:
    return manifest["model_config"]["input_dim"]


TAMPERINGS = {
    "text-not-json": "{not json",
    "json-not-an-object": "[1, 2]",
    "nested-200000-deep": "[" * 200_000 + "]" * 200_000,
    "files-missing": _drop("files"),
    "file-name-escapes": _outside("temporal"),
    "file-name-not-text": _set("files", "video", 5),
    "model-file-missing": _replace_file("temporal.onnx", None),
    "model-file-garbage": _replace_file("temporal.onnx", b"not an onnx model"),
    "models-swapped": _set("files", "video", "audio.onnx"),
    "classes-not-a-list": _set("classes", "crash"),
    "classes-too-few": _set("classes", ["crash"]),
    "class-name-a-path": _set("classes", ["../crash", "normal", "pain"]),
    "model-config-unknown-field": _set("model_config", "bogus", 1),
    "input-dim-not-features": _set("model_config", "input_dim", 7),
    "seq-len-true": _set("train_config", "seq_len", True),
    "seq-len-huge": _set("train_config", "seq_len", 10**9),
    "norm-std-zero": _set("norm", "std", lambda m: [0.0] * _dim(m)),
    "norm-mean-text": _set("norm", "mean", lambda m: ["a"] * _dim(m)),
    "norm-mean-short": _set("norm", "mean", [0.0]),
    "norm-mean-overflows": _set("norm", "mean", lambda m: [10**400] * _dim(m)),
    "image-size-60000": _set("video", "image_size", 60_000),
    "image-size-differs": _set("video", "image_size", 32),
    "video-dim-text": _set("video", "dim", "wide"),
    "sample-rate-zero": _set("audio", "sample_rate", 0),
    "audio-config-bogus": _set("audio", "config", "conv_kernel", [3, 3]),
    "feature-spec-unknown-field": _set("feature_spec", "bogus", 1),
    "feature-spec-huge-segment": _set("feature_spec", "frames_per_segment", 10**6),
    "extra-not-an-object": _set("extra", [1]),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampered_export_folder_is_one_line_exit_2(
    name, exported, tmp_path, capsys, event_clip_path
):
    _, out = exported
    folder = tmp_path / "onnx"
    shutil.copytree(out, folder, copy_function=os.link)
    change = TAMPERINGS[name]
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.unlink()
    if isinstance(change, str):
        manifest_path.write_text(change)
    else:
        change(manifest, folder)
        manifest_path.write_text(json.dumps(manifest))
    code = main(
        cli("stream", str(event_clip_path), "--checkpoint", str(folder), "--runtime", "onnx")
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("avarnet stream: error: "), err
    assert "Traceback" not in err[0] and "internal error" not in err[0]
