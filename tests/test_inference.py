"""Inference on feature timelines: window and per-step probabilities, scores, the prediction record."""

import numpy as np
import pytest
import torch
from conftest import untrained_checkpoint

from avarnet.config import FeatureSpec
from avarnet.inference import (
    WINDOW_BATCH,
    anomaly_scores,
    build_prediction,
    clip_probabilities,
    model_input,
    step_probabilities,
    window_probs,
)

CLASSES = ["crash", "normal", "pain"]


class PerStep(torch.nn.Module):
    """Logits of a step are its first C inputs (padding included), for every stage: a model whose
    per-step answer is known, so the window bookkeeping around it can be checked exactly."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c = classes
        self.seen: list[tuple[int, ...]] = []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, mask):
        self.seen.append(tuple(x.shape))
        logits = x[..., : self.c].masked_fill(~mask[..., None], 50.0)  # padding would show
        return torch.stack([logits, logits])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T", [1, 3, 10])
def test_step_probabilities_are_each_steps_own_when_the_model_is_per_step(T, causal, rng):
    x = rng.normal(0, 1, (T, 5)).astype(np.float32)
    probs = step_probabilities(PerStep(), x, 4, causal=causal)
    np.testing.assert_allclose(probs, softmax(x[:, :3]), atol=1e-6)


def test_window_probs_masks_padding_and_batches(rng):
    model = PerStep()
    x = rng.normal(0, 1, (WINDOW_BATCH + 7, 3)).astype(np.float32)
    starts = list(range(WINDOW_BATCH + 5))
    lengths = [min(3, len(x) - s) for s in starts]
    probs = window_probs(model, x, starts, lengths, 3)
    assert probs.shape == (len(starts), 3, 3)
    assert [s[0] for s in model.seen] == [WINDOW_BATCH, 5]  # two forward passes
    np.testing.assert_allclose(probs[1, 2], softmax(x[3]), atol=1e-6)


def test_causal_scores_use_only_the_past(rng):
    ckpt = untrained_checkpoint(FeatureSpec(video_dim=12, audio_dim=8), seq_len=10)
    x = rng.normal(0, 1, (14, 20)).astype(np.float32)
    full = step_probabilities(ckpt.model, x, 10, causal=True)
    cut = step_probabilities(ckpt.model, x[:5], 10, causal=True)
    np.testing.assert_allclose(full[:5], cut, atol=1e-5)
    both = step_probabilities(ckpt.model, x, 10)
    np.testing.assert_allclose(both.sum(1), 1.0, atol=1e-5)
    assert np.abs(both[:5] - full[:5]).max() > 1e-4  # non-causal steps see the future too


def test_anomaly_scores_with_and_without_a_normal_class():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], np.float32)
    np.testing.assert_allclose(anomaly_scores(p, CLASSES), [0.8, 0.2], atol=1e-6)
    np.testing.assert_allclose(anomaly_scores(p, ["a", "b", "c"]), [0.7, 0.8], atol=1e-6)


def test_build_prediction_record():
    steps = np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.0, 0.9, 0.1]], np.float32)
    pred = build_prediction("v.mp4", steps, CLASSES, 1.0, 2.5)
    np.testing.assert_allclose(clip_probabilities(steps), steps.mean(0))
    assert pred["video"] == "v.mp4" and pred["label"] == "normal"  # the mean: .23, .43, .33
    assert pred["probabilities"] == pytest.approx(dict(zip(CLASSES, steps.mean(0), strict=True)))
    assert [(s["start"], s["end"]) for s in pred["segments"]] == [(0, 1), (1, 2), (2, 2.5)]
    assert [s["label"] for s in pred["segments"]] == ["crash", "pain", "normal"]
    assert [s["anomaly_score"] for s in pred["segments"]] == pytest.approx([0.7, 0.9, 0.1])
    assert pred["segments"][1]["probabilities"] == pytest.approx(
        dict(zip(CLASSES, steps[1], strict=True))
    )


def test_model_input_normalises_and_keeps_missing_audio_at_zero():
    spec = FeatureSpec(video_dim=2, audio_dim=3)
    ckpt = untrained_checkpoint(spec, std=2.0)
    tensors = {
        "video": np.full((4, 2), 3.0, np.float32),
        "audio": np.full((4, 3), 5.0, np.float32),
        "audio_mask": np.array([True, True, False, True]),
    }
    x = model_input(ckpt, tensors)
    expected = (np.concatenate([tensors["video"], tensors["audio"]], 1) - ckpt.norm.mean) / 2.0
    np.testing.assert_allclose(x[[0, 1, 3]], expected[[0, 1, 3]], rtol=1e-5)
    np.testing.assert_allclose(x[2, :2], expected[2, :2], rtol=1e-5)
    assert (x[2, 2:] == 0).all()  # no audio there: the blank, not a normalised silence
