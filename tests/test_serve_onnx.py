"""serve's runtime and precision: an export folder in ONNX Runtime scores a file as `stream
--runtime onnx` does, and the configuration refuses what the runtime or the CPU cannot run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import serve_support as ss
from conftest import cli, read_jsonl

from avarnet.apps.serve.config import ConfigError, load_config
from avarnet.cli import main

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny_backbones, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny checkpoint and its export folder."""
    from avarnet.export import export_checkpoint

    root = tmp_path_factory.mktemp("onnx")
    ckpt = ss.tiny_checkpoint(tiny_backbones, root / "tiny.ckpt", std=0.05)
    export_checkpoint(ckpt, root / "export")
    return ckpt, root / "export"


def config(tmp_path: Path, ckpt: Path, cameras: dict, **extra):
    path = ss.write_config(
        tmp_path / "c.yaml", ckpt, cameras, tmp_path / "store", ss.free_port(), **extra
    )
    return load_config(path)


def stream_scores(clip: Path, model: Path, out: Path, *options: str) -> list[float]:
    jsonl = out / "stream.jsonl"
    args = ["stream", str(clip), "--checkpoint", str(model), "--jsonl", str(jsonl), *options]
    assert main(cli(*args)) == 0
    records = read_jsonl(jsonl)
    summary = records[-1]
    assert summary["type"] == "summary"
    return [r["anomaly_score"] for r in records if r["type"] == "segment"], summary


def engine_waits_for_every_camera(server) -> None:
    """The engine starts once every camera has a segment queued, so its first batch holds
    segments of both (otherwise a fast engine may take each camera's segments one at a time)."""
    from avarnet.media import Segment

    (engine,) = server.engines.values()
    run = engine.run

    def run_when_all_queued() -> None:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and not all(
            any(isinstance(x, Segment) for x in s.queue) for s in engine.cameras.values()
        ):
            time.sleep(0.01)
        run()

    engine.run = run_when_all_queued


@pytest.mark.parametrize(
    ("runtime", "precision"), [("onnx", "fp32"), ("onnx", "int8"), ("torch", "int8")]
)
def test_serve_scores_equal_stream_at_the_same_runtime_and_precision(
    runtime, precision, models, tmp_path
):
    """One file through serve with `runtime: onnx` (an export folder) and through `stream
    --runtime onnx`: the same per-segment anomaly scores; likewise torch int8. The server and
    the stream summary say what ran."""
    model = models[1] if runtime == "onnx" else models[0]
    clip = ss.make_clip(tmp_path / "clip.mp4", 6.0)
    options = ("--runtime", runtime, "--precision", precision)
    want, summary = stream_scores(clip, model, tmp_path, *options)
    assert (summary["runtime"], summary["precision"]) == (runtime, precision)
    cameras = {"a": {"source": str(clip)}, "b": {"source": str(clip)}}  # batched across cameras
    cfg = config(tmp_path, model, cameras, runtime=runtime, precision=precision)
    server, cap = ss.serve_here(cfg, patch=engine_waits_for_every_camera)
    for name in cameras:
        got = cap.scores(name)
        assert len(got) == len(want) >= 5
        np.testing.assert_allclose(got, want, atol=1e-3)
    assert np.ptp(want) > 1e-3  # the scores move, so agreement is not trivial
    (engine,) = server.stats()["engines"]
    assert (engine["runtime"], engine["precision"]) == (runtime, precision)
    assert engine["mean_batch"] > 1  # both cameras' segments went through one encoder call


def test_cameras_choose_their_own_runtime_and_precision(models, tmp_path):
    ckpt, export = models
    clip = ss.make_clip(tmp_path / "clip.mp4", 1.0)
    cameras = {
        "a": {"source": str(clip)},
        "b": {"source": str(clip), "checkpoint": str(export), "runtime": "onnx"},
        "c": {"source": str(clip), "precision": "int8"},
    }
    cfg = config(tmp_path, ckpt, cameras)
    got = {c.name: (c.checkpoint, c.runtime, c.precision) for c in cfg.cameras}
    assert got == {
        "a": (ckpt, "torch", "fp32"),
        "b": (export, "onnx", "fp32"),
        "c": (ckpt, "torch", "int8"),
    }
    assert [(k.runtime, k.precision) for k in cfg.models()] == [
        ("torch", "fp32"),
        ("onnx", "fp32"),
        ("torch", "int8"),
    ]


def config_errors(tmp_path: Path, ckpt: Path, cameras: dict, **extra) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config(tmp_path, ckpt, cameras, **extra)
    assert all("\n" not in line for line in e.value.lines)
    return e.value.lines


def test_config_refuses_what_the_runtime_cannot_run(models, tmp_path):
    ckpt, export = models
    clip = str(ss.make_clip(tmp_path / "clip.mp4", 1.0))
    lines = config_errors(tmp_path, ckpt, {"a": {"source": clip}}, runtime="tensorrt")
    assert lines == ["runtime: must be one of torch, onnx, got 'tensorrt'"]
    lines = config_errors(tmp_path, ckpt, {"a": {"source": clip, "runtime": "onnx"}})
    assert lines[0].startswith(
        "checkpoint: runtime onnx needs a folder written by `avarnet export`"
    )
    lines = config_errors(tmp_path, export, {"a": {"source": clip}})
    assert "is a folder (an ONNX export needs runtime: onnx)" in lines[0]
    lines = config_errors(
        tmp_path, export, {"a": {"source": clip}}, runtime="onnx", precision="bf16"
    )
    assert lines == ["precision: onnx: precision must be one of fp32, int8, got 'bf16'"]
    lines = config_errors(tmp_path, ckpt, {"a": {"source": clip, "precision": "fp8"}})
    assert lines == ["cameras.a.precision: must be one of fp32, bf16, fp16, int8, got 'fp8'"]
    lines = config_errors(tmp_path, ckpt, {"a": {"source": clip}}, precision="fp16")
    assert lines[0].startswith("precision: torch: precision fp16 needs a GPU")


def test_config_refuses_bf16_where_the_cpu_lacks_it(models, tmp_path, monkeypatch):
    from avarnet import runtime

    ckpt, _ = models
    clip = str(ss.make_clip(tmp_path / "clip.mp4", 1.0))
    cameras = {"a": {"source": clip, "precision": "bf16"}, "b": {"source": clip}}
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    lines = config_errors(tmp_path, ckpt, cameras)
    assert lines == [
        "cameras.a.precision: torch: precision bf16 is not native on this CPU; on this CPU use "
        "fp32 or int8"
    ]
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert [c.precision for c in config(tmp_path, ckpt, cameras).cameras] == ["bf16", "fp32"]


def test_predict_causal_runs_an_export_as_stream_does_and_records_it(models, tmp_path):
    """`predict --causal --runtime onnx` gives stream's per-segment scores on the same export and
    precision, and prediction.json says what ran."""
    import json

    _, export = models
    clip = ss.make_clip(tmp_path / "clip.mp4", 5.0)
    options = ("--runtime", "onnx", "--precision", "int8")
    want, _ = stream_scores(clip, export, tmp_path, *options)
    out = tmp_path / "pred"
    args = ["predict", str(clip), "--checkpoint", str(export), "--causal", "--out", str(out)]
    assert main(cli(*args, *options)) == 0
    pred = json.loads((out / "prediction.json").read_text())
    assert (pred["runtime"], pred["precision"], pred["causal"]) == ("onnx", "int8", True)
    got = [s["anomaly_score"] for s in pred["segments"]]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_predict_refuses_a_precision_the_runtime_lacks(models, tmp_path, capsys):
    ckpt, export = models
    clip = str(ss.make_clip(tmp_path / "clip.mp4", 1.0))
    args = ["predict", clip, "--checkpoint", str(export), "--runtime", "onnx"]
    assert main(cli(*args, "--precision", "bf16")) == 2
    assert capsys.readouterr().err.strip().endswith("--runtime onnx runs fp32 or int8")
    args = ["predict", clip, "--checkpoint", str(ckpt), "--precision", "fp16"]
    assert main(cli(*args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precision fp16 needs a GPU" in err
