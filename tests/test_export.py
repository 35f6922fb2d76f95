"""ONNX export: the folder `stream --runtime onnx` loads scores like the torch path."""

from __future__ import annotations

import json
import os
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
    assert main(["-q", "export", str(ckpt), "--out", str(out)]) == 0
    return ckpt, out


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
