"""Per-segment predictions for a video file: prediction.json, the timeline and causal scoring."""

from __future__ import annotations

import math

import media_factory as mf
import numpy as np
import pytest
import torch
from conftest import make_tiny_extractor, strict_load

from avarnet.checkpoint import load_checkpoint
from avarnet.errors import NonFiniteError
from avarnet.features import causal_features
from avarnet.predict import model_input, predict_video, step_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return mf.clip(tmp_path_factory.mktemp("clip") / "v.mp4", seconds=4.5)


@pytest.fixture(scope="module")
def extractor(tiny_backbones):
    return make_tiny_extractor(tiny_backbones)


def test_prediction_is_the_models_scores_of_the_files_features(
    video, tiny_ckpt_path, extractor, tmp_path
):
    pred = predict_video(video, tiny_ckpt_path, tmp_path / "p", device="cpu", extractor=extractor)
    assert strict_load((tmp_path / "p" / "prediction.json").read_text()) == pred
    assert (tmp_path / "p" / "timeline.png").stat().st_size > 1000
    assert "<img" in (tmp_path / "p" / "timeline.html").read_text()
    ckpt = load_checkpoint(tiny_ckpt_path)
    tensors, info = extractor(video)
    steps = step_probabilities(ckpt.model, model_input(ckpt, tensors), ckpt.train_config.seq_len)
    segs = pred["segments"]
    assert len(segs) == len(steps) == math.ceil(info.duration / ckpt.spec.segment_seconds)
    assert segs[-1]["end"] == pytest.approx(info.duration, abs=1e-6)
    for s, p in zip(segs, steps, strict=True):
        assert list(s["probabilities"].values()) == pytest.approx(p.tolist(), abs=1e-6)
        assert s["anomaly_score"] == pytest.approx(1 - s["probabilities"]["normal"], abs=1e-6)
    assert list(pred["probabilities"].values()) == pytest.approx(steps.mean(0).tolist(), abs=1e-6)
    assert pred["causal"] is False and pred["weights"] == "pretrained"


def test_causal_prediction_scores_the_live_features_with_past_windows(
    video, tiny_ckpt_path, extractor
):
    pred = predict_video(video, tiny_ckpt_path, device="cpu", causal=True, extractor=extractor)
    ckpt = load_checkpoint(tiny_ckpt_path)
    tensors, _ = causal_features(video, extractor)
    steps = step_probabilities(ckpt.model, model_input(ckpt, tensors), 4, causal=True)
    got = np.array([list(s["probabilities"].values()) for s in pred["segments"]])
    np.testing.assert_allclose(got, steps, atol=1e-6)
    plain = predict_video(video, tiny_ckpt_path, device="cpu", extractor=extractor)
    assert pred["causal"] is True and len(plain["segments"]) == len(pred["segments"])
    assert not np.allclose(got, [list(s["probabilities"].values()) for s in plain["segments"]])


def test_non_finite_scores_write_no_prediction(video, tiny_ckpt_path, extractor, tmp_path):
    ckpt = load_checkpoint(tiny_ckpt_path)
    with torch.no_grad():
        next(ckpt.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="not finite"):
        predict_video(video, ckpt, tmp_path / "p", extractor=extractor)
    assert not (tmp_path / "p" / "prediction.json").exists()
