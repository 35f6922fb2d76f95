"""The whole job through the library's demo entry point, and the CLI's error contract."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from avarnet.cli import main
from avarnet.demo import DemoOptions, run_demo
from avarnet.store import FeatureStore


def tiny_demo(tiny_backbones, **changes) -> DemoOptions:
    vdir, adir = tiny_backbones
    return DemoOptions(clips_per_class=3, device="cpu", video_backbone=str(vdir),
                       audio_backbone=str(adir), **changes)  # fmt: skip


@pytest.mark.slow
def test_demo_runs_every_stage_into_one_folder(tiny_backbones, tmp_path):
    opts = tiny_demo(tiny_backbones, duration=(2.0, 3.0), epochs=3)
    s = run_demo(tmp_path / "demo", opts, progress=False)
    assert s["weights"] == "pretrained" and s["videos"] == 30 and s["extraction_failures"] == 0
    metrics = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())
    cm = metrics["confusion_matrix"]
    assert s["test_clips"] == metrics["n"] == sum(map(sum, cm)) == 10
    assert s["test_accuracy"] == metrics["accuracy"] == sum(cm[i][i] for i in range(len(cm))) / 10
    for key in ("report", "confusion_matrix", "timeline"):
        assert (tmp_path / "demo").joinpath(s[key].split("demo/", 1)[1]).exists()
    assert (
        json.loads((tmp_path / "demo" / "summary.json").read_text())["true_label"]
        == s["true_label"]
    )


def test_demo_falls_back_to_random_weights_with_a_warning(
    tiny_backbones, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from avarnet import demo

    # the requested pretrained video backbone cannot be loaded; the random fallback uses the tiny configs
    opts = tiny_demo(tiny_backbones, duration=(2.0, 2.5), epochs=1)
    monkeypatch.setattr(
        demo, "choose_weights", lambda o: ("random", "no-such/model could not be loaded")
    )
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        s = run_demo(tmp_path / "demo", opts, progress=False)
    assert s["weights_note"] == "RANDOM WEIGHTS (offline fallback): no-such/model could not be loaded"
    assert any("falling back to --weights random" in r.getMessage() for r in caplog.records)
    metrics = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())
    store = FeatureStore.open(metrics["features"])  # the features really come from random weights
    assert metrics["weights"] == store.spec.weights == "random" and store.spec.random_init
    assert store.load_encoder_state() is not None  # BatchNorm calibrated on the demo's frames


def test_choose_weights_reports_why(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from avarnet.demo import choose_weights

    weights, reason = choose_weights(DemoOptions(video_backbone="no-such-org/no-model"))
    assert weights == "random" and "--weights random" in reason


def test_module_entry_point_and_usage_errors(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "avarnet", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "extract" in r.stdout
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "avarnet extract" in err[0]
    assert (
        main(
            [
                "extract",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "f"),
                "--weights",
                "random",
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_text("x")
    assert main(["predict", str(bad), "--checkpoint", str(bad)]) == 2


def test_models_command_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("mtcn", "gru", "bigru", "lstm", "bilstm", "transformer"))
