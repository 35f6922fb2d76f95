"""Self-describing checkpoints: what is saved comes back, and damaged files are one line."""

from __future__ import annotations

import json
import sys

import media_factory as mf
import numpy as np
import pytest
import torch
from conftest import error_lines, rewrite_checkpoint, run_capped, untrained_checkpoint
from safetensors import safe_open

from avarnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from avarnet.cli import main
from avarnet.config import FeatureSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


def test_save_and_load_give_back_the_same_checkpoint(tmp_path, rng):
    spec = FeatureSpec(video_dim=12, audio_dim=8, weights="random", segment_seconds=0.5)
    ckpt = untrained_checkpoint(spec, ("abuse", "normal"), seq_len=6, std=0.3)
    ckpt.extra = {"best_epoch": 3}
    save_checkpoint(tmp_path / "c.ckpt", ckpt)
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]  # no temporary file left
    back = load_checkpoint(tmp_path / "c.ckpt")
    assert back.classes == ["abuse", "normal"] and back.extra["best_epoch"] == 3
    assert back.model_config == ckpt.model_config and back.train_config == ckpt.train_config
    assert back.spec == spec and back.modality == "fused" and not back.model.training
    np.testing.assert_array_equal(back.norm.mean, ckpt.norm.mean)
    np.testing.assert_array_equal(back.norm.std, ckpt.norm.std)
    x = torch.from_numpy(rng.normal(0, 1, (2, 6, 20)).astype(np.float32))
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(back.model(x, mask), ckpt.model(x, mask))


def test_not_a_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_zero_norm_std_checkpoint_is_refused(tiny_ckpt_path, tmp_path, capsys):
    dim = load_checkpoint(tiny_ckpt_path).model_config.input_dim
    bad = rewrite_checkpoint(
        tiny_ckpt_path, tmp_path / "zero_std.ckpt", tensors={"norm.std": torch.zeros(dim)}
    )
    with pytest.raises(CheckpointError, match="norm.std"):
        load_checkpoint(bad)
    video = mf.clip(tmp_path / "v.mp4", seconds=1.0)
    argv = ["-q", "predict", str(video), "--checkpoint", str(bad), "--out", str(tmp_path / "p")]
    assert main(argv) == 2
    lines = error_lines(capsys.readouterr().err, "predict")
    assert len(lines) == 1 and "zero_std.ckpt" in lines[0]


def test_checkpoint_metadata_is_checked_before_the_model_is_built(tiny_ckpt_path, tmp_path):
    meta = json.loads(safe_open(str(tiny_ckpt_path), framework="pt").metadata()["model_config"])
    huge = rewrite_checkpoint(
        tiny_ckpt_path,
        tmp_path / "huge.ckpt",
        meta={"model_config": json.dumps({**meta, "hidden": 8192})},
    )
    code = "import sys; from avarnet.checkpoint import load_checkpoint as l; l(sys.argv[1])"
    r = run_capped([sys.executable, "-c", code, str(huge)])
    assert r.returncode == 1 and "CheckpointError" in r.stderr
    assert "does not match the stored weights" in r.stderr and "MemoryError" not in r.stderr


@pytest.mark.parametrize(
    "change, words",
    [
        ({"drop": ("norm.mean",)}, "norm.mean"),
        ({"meta": {"classes": json.dumps(["crash"])}}, "1 class names for a model with 3 outputs"),
        ({"meta": {"model_config": "{not json"}}, "'model_config' is not valid JSON"),
        ({"drop": ("train_config",)}, "'train_config' is missing"),
        ({"meta": {"feature_spec": json.dumps({"bogus": 1})}}, "'feature_spec' is invalid"),
        # parsing recursion: bounded before the parser sees the text
        ({"meta": {"extra": "[" * 200_000 + "]" * 200_000}}, "nested 200000 levels deep"),
        ({"meta": {"classes": '{"a": ' * 5000 + "1" + "}" * 5000}}, "nested 5000 levels deep"),
        # a class name is a dataset folder name (export-reviewed writes OUT/<class>/)
        (
            {"meta": {"classes": json.dumps(["../crash", "normal", "pain"])}},
            "class name '../crash' is not a plain folder name",
        ),
    ],
)
def test_damaged_checkpoints_are_one_line_naming_the_file(
    change, words, tiny_ckpt_path, tmp_path, capsys
):
    bad = rewrite_checkpoint(tiny_ckpt_path, tmp_path / "damaged.ckpt", **change)
    with pytest.raises(CheckpointError, match="damaged.ckpt") as caught:
        load_checkpoint(bad)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    video = mf.clip(tmp_path / "v.mp4", seconds=1.0)
    argv = ["-q", "predict", str(video), "--checkpoint", str(bad), "--out", str(tmp_path / "p")]
    assert main(argv) == 2
    lines = error_lines(capsys.readouterr().err, "predict")
    assert len(lines) == 1 and "damaged.ckpt" in lines[0] and words in lines[0]


@pytest.mark.parametrize(
    "field, value",
    [("segment_seconds", 0.0), ("resize_shortest_edge", 10**9), ("frames_per_segment", 10**6)],
)
def test_checkpoint_feature_spec_out_of_bounds_is_refused(field, value, tiny_ckpt_path, tmp_path):
    spec = json.loads(safe_open(str(tiny_ckpt_path), framework="pt").metadata()["feature_spec"])
    bad = rewrite_checkpoint(
        tiny_ckpt_path,
        tmp_path / "spec.ckpt",
        meta={"feature_spec": json.dumps({**spec, field: value})},
    )
    with pytest.raises(CheckpointError, match=f"spec.ckpt: feature spec {field}"):
        load_checkpoint(bad)


def test_checkpoint_with_wrong_tensor_shape_is_one_line(tiny_ckpt_path, tmp_path):
    with safe_open(str(tiny_ckpt_path), framework="pt") as f:
        name = next(k for k in f.keys() if k.startswith("model.") and f.get_tensor(k).dim() == 2)
        shape = f.get_tensor(name).shape
    bad = rewrite_checkpoint(
        tiny_ckpt_path, tmp_path / "shape.ckpt", tensors={name: torch.zeros(shape[0] + 1, shape[1])}
    )
    with pytest.raises(CheckpointError, match=f"{name[len('model.') :]} is"):
        load_checkpoint(bad)
