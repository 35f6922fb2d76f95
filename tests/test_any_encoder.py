"""Any encoder end to end: transformers models of other families (ViT, HuBERT) and tiny ONNX
encoders of every input kind, through extract -> train -> predict -> stream -> export, with the
encoders recorded in the feature spec and `stream` equal to `predict --causal`."""

from __future__ import annotations

import json
from pathlib import Path

import encoder_factory as ef
import numpy as np
import pytest
from conftest import cli, read_jsonl, write_event_clip

from avarnet.cli import main
from avarnet.store import FeatureStore

PAIRS = {
    "transformers-vit-hubert": ("vit", "hubert"),
    "onnx-frame-waveform": ("frame", "waveform"),
    "onnx-clip-logmel": ("clip", "logmel"),
}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, str]:
    """name -> backbone source of every tiny encoder."""
    root = tmp_path_factory.mktemp("encoders")
    sources = {k: f"onnx:{ef.save_onnx_encoder(k, root)}" for k in ef.DIMS}
    sources["vit"] = str(ef.save_tiny_vit(root / "vit"))
    sources["hubert"] = str(ef.save_tiny_hubert(root / "hubert"))
    return sources


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> Path:
    return write_event_clip(tmp_path_factory.mktemp("clip") / "event.mp4", 4.0)


def round_trip(video: str, audio: str, data: Path, clip: Path, tmp: Path) -> dict:
    feats, run = tmp / "feats", tmp / "run"
    backbones = ["--video-backbone", video, "--audio-backbone", audio]
    argv = ["-q", "extract", str(data), "--out", str(feats), *backbones, "--workers", "0"]
    assert main([*argv, "--device", "cpu"]) == 0
    store = FeatureStore.open(feats)
    argv = ["train", str(feats), "--out", str(run), "--epochs", "1", "--seq-len", "4"]
    assert main(cli(*argv)) == 0
    ckpt = run / "best.ckpt"
    out = tmp / "stream.jsonl"
    argv = ["stream", str(clip), "--checkpoint", str(ckpt), "--jsonl", str(out)]
    assert main(cli(*argv, "--threshold", "0.0")) == 0
    pred = tmp / "pred"
    assert (
        main(cli("predict", str(clip), "--checkpoint", str(ckpt), "--out", str(pred), "--causal"))
        == 0
    )
    return {
        "spec": store.spec,
        "ckpt": ckpt,
        "segments": [r for r in read_jsonl(out) if r["type"] == "segment"],
        "prediction": json.loads((pred / "prediction.json").read_text()),
    }


@pytest.mark.parametrize("pair", list(PAIRS))
def test_round_trip(pair, encoders, tiny_dataset, clip_path, tmp_path):
    vkey, akey = PAIRS[pair]
    result = round_trip(encoders[vkey], encoders[akey], tiny_dataset, clip_path, tmp_path)
    spec = result["spec"]
    # the spec records each encoder: backend, input kind, settings, and its digest
    assert spec.video_encoder["kind"] == ("frame" if vkey in ("vit", "frame") else vkey)
    assert spec.audio_encoder["kind"] == ("waveform" if akey in ("hubert", "waveform") else akey)
    assert len(spec.video_backbone_sha256) == len(spec.audio_backbone_sha256) == 64
    if vkey in ef.DIMS:
        assert spec.video_backbone.startswith("onnx:/") and spec.video_dim == ef.DIMS[vkey]
        assert spec.video_encoder["licence"] == ef.LICENCE
    if vkey == "clip":  # one clip of 4 frames at 8 fps per segment
        assert spec.frames_per_segment == ef.CLIP_FRAMES and spec.segment_seconds == 0.5
    # `stream` equals `predict --causal`, segment by segment
    segments, predicted = result["segments"], result["prediction"]["segments"]
    assert len(segments) == len(predicted) > 0
    for s, p in zip(segments, predicted, strict=True):
        assert (s["start"], s["end"]) == (p["start"], p["end"])
        assert s["anomaly_score"] == pytest.approx(p["anomaly_score"], abs=1e-4)
    # export: ONNX Runtime computes the same features from the exported (or copied) encoders
    check_export(result["ckpt"], clip_path, tmp_path)


def check_export(ckpt: Path, clip: Path, tmp: Path) -> None:
    from avarnet.checkpoint import load_checkpoint
    from avarnet.export import load_onnx
    from avarnet.features import Extractor, causal_features

    out = tmp / "export"
    assert main(["-q", "export", str(ckpt), "--out", str(out), "--no-int8"]) == 0
    bundle = load_onnx(out)
    loaded = load_checkpoint(ckpt)
    torch_feats, _ = causal_features(clip, Extractor.from_spec(loaded.spec, "cpu"))
    onnx_feats, _ = causal_features(clip, bundle.extractor)
    for key in ("video", "audio"):
        np.testing.assert_allclose(onnx_feats[key], torch_feats[key], rtol=1e-3, atol=1e-4)
