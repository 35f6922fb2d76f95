"""`extract --runtime` and `--precision`: a store made by the fast path (an export's ONNX encoders,
or torch with Wav2Vec2 quantised) holds what a stream on that path computes, records the
arithmetic, resumes only in it, and `evaluate` measures the fast path on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, untrained_checkpoint

from avarnet.checkpoint import save_checkpoint
from avarnet.cli import main
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import build_spec
from avarnet.features import causal_features
from avarnet.store import FeatureStore

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny_backbones, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny checkpoint over tiny_dataset's classes, on causal features, and its export folder
    (fp32 and int8)."""
    from avarnet.export import export_checkpoint

    root = tmp_path_factory.mktemp("xr")
    vdir, adir = tiny_backbones
    v, a = VideoEncoder.load(str(vdir), device="cpu"), AudioEncoder.load(str(adir), device="cpu")
    ckpt = root / "tiny.ckpt"
    spec = build_spec(v, a, "pretrained", 0, 1.0, 1, "causal", 1.0)  # trained on live features
    save_checkpoint(ckpt, untrained_checkpoint(spec, std=0.05))
    export_checkpoint(ckpt, root / "export")
    return ckpt, root / "export"


def extract(data: Path, out: Path, *options: str) -> int:
    return main(cli("extract", str(data), "--out", str(out), "--workers", "0", *options))


def clip_of(store: FeatureStore, entry) -> Path:
    return Path(store.info["data_root"]) / entry.source


def test_an_exports_int8_encoders_make_the_features_a_stream_of_it_computes(
    models, tiny_dataset, tmp_path
):
    from avarnet.export import load_onnx

    _, export = models
    out = tmp_path / "int8"
    assert extract(tiny_dataset, out, "--runtime", "onnx", "--export", str(export),
                   "--precision", "int8") == 0  # fmt: skip
    store = FeatureStore.open(out)
    spec = store.spec
    assert (spec.runtime, spec.precision) == ("onnx", "int8")
    assert (spec.audio_mode, spec.audio_context_seconds) == ("causal", 1.0)  # the export's
    int8, fp32 = load_onnx(export, "int8"), load_onnx(export, "fp32")
    moved = 0.0
    for entry in store.entries[:3]:
        got = store.load(entry)
        want, _ = causal_features(clip_of(store, entry), int8.extractor)  # predict --causal's
        for key in ("video", "audio"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5)
        other, _ = causal_features(clip_of(store, entry), fp32.extractor)
        moved = max(moved, float(np.abs(got["audio"] - other["audio"]).max()))
    assert moved > 1e-4  # int8 ran: its features are not fp32's


def test_evaluate_measures_the_fast_path_with_the_fp32_checkpoint(models, tiny_dataset, tmp_path):
    ckpt, export = models
    feats = tmp_path / "int8"
    assert extract(tiny_dataset, feats, "--runtime", "onnx", "--export", str(export),
                   "--precision", "int8") == 0  # fmt: skip
    out = tmp_path / "eval"
    args = ["evaluate", str(ckpt), str(feats), "--out", str(out), "--no-report"]
    assert main(cli(*args)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["feature_spec"]["runtime"], metrics["feature_spec"]["precision"]) == (
        "onnx",
        "int8",
    )


def test_a_store_resumes_only_in_its_own_arithmetic(models, tiny_dataset, tmp_path, capsys):
    _, export = models
    out = tmp_path / "s"
    onnx = ("--runtime", "onnx", "--export", str(export))
    assert extract(tiny_dataset, out, *onnx, "--precision", "int8") == 0
    capsys.readouterr()
    assert extract(tiny_dataset, out, *onnx, "--precision", "fp32") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "holds features computed by onnx int8, not onnx fp32" in err
    assert extract(tiny_dataset, out, *onnx, "--precision", "int8") == 0  # the same: resumes
    assert "already done 9" in capsys.readouterr().out


def test_torch_int8_quantises_wav2vec2_as_a_stream_does(models, tiny_dataset, tmp_path):
    from avarnet.checkpoint import load_checkpoint
    from avarnet.stream.predictor import stream_extractor

    ckpt, _ = models
    out = tmp_path / "t8"
    vdir = load_checkpoint(ckpt).spec.video_backbone
    adir = load_checkpoint(ckpt).spec.audio_backbone
    args = ("--video-backbone", vdir, "--audio-backbone", adir, "--audio-features", "causal")
    assert extract(tiny_dataset, out, *args, "--precision", "int8") == 0
    store = FeatureStore.open(out)
    assert (store.spec.runtime, store.spec.precision) == ("torch", "int8")
    live = load_checkpoint(ckpt)
    live.spec = store.spec
    quantised = stream_extractor(live, "cpu", "int8")
    plain = stream_extractor(live, "cpu", "fp32")
    entry = store.entries[0]
    got = store.load(entry)
    want, _ = causal_features(clip_of(store, entry), quantised)
    np.testing.assert_allclose(got["audio"], want["audio"], rtol=1e-4, atol=1e-5)
    other, _ = causal_features(clip_of(store, entry), plain)
    assert float(np.abs(got["audio"] - other["audio"]).max()) > 1e-4


@pytest.mark.parametrize(
    "options, message",
    [
        (("--runtime", "onnx"), "--runtime onnx extracts with an export's encoders: give --export"),
        (("--export", "{export}"), "--export goes with --runtime onnx"),
        (("--runtime", "onnx", "--export", "{export}", "--precision", "bf16"),
         "--runtime onnx runs fp32 or int8"),
        (("--runtime", "onnx", "--export", "{export}", "--segment-seconds", "0.5", "--gate",
          "motion=0.01,sound=-50"),
         "--segment-seconds, --gate: with --runtime onnx the export defines the features"),
        (("--runtime", "onnx", "--export", "{export}", "--engine", "ray"),
         "--engine ray runs torch encoders; use the local engine"),
    ],
)  # fmt: skip
def test_refusals_are_one_line(models, tiny_dataset, tmp_path, capsys, options, message):
    _, export = models
    options = tuple(o.format(export=export) for o in options)
    assert extract(tiny_dataset, tmp_path / "x", *options) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(message)
    assert not (tmp_path / "x").exists()


def test_train_refuses_a_store_of_an_exports_random_weight_encoders(
    tiny_backbones, tiny_dataset, tmp_path, capsys
):
    """An export of random-weight backbones holds their calibration; a store made with it has no
    encoder state, so no checkpoint trained on it could compute its features."""
    from avarnet.export import export_checkpoint

    vdir, adir = tiny_backbones
    torch_store = tmp_path / "torch"
    args = ("--weights", "random", "--video-backbone", str(vdir), "--audio-backbone", str(adir),
            "--audio-features", "causal")  # fmt: skip
    assert extract(tiny_dataset, torch_store, *args) == 0
    assert main(cli("train", str(torch_store), "--out", str(tmp_path / "run"), "--epochs", "1",
                    "--seq-len", "4")) == 0  # fmt: skip
    export_checkpoint(tmp_path / "run" / "best.ckpt", tmp_path / "export")
    onnx_store = tmp_path / "onnx"
    assert extract(tiny_dataset, onnx_store, "--runtime", "onnx", "--export",
                   str(tmp_path / "export")) == 0  # fmt: skip
    capsys.readouterr()
    assert main(cli("train", str(onnx_store), "--out", str(tmp_path / "run2"))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "without the encoders' calibration" in err
