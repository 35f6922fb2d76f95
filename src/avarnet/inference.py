"""Inference on feature timelines: model input, window and per-step probabilities, clip verdicts,
anomaly scores and the per-segment prediction record.

Used by predict, evaluate, stream, weak training and the reports alike, so every consumer turns
features into scores the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import Checkpoint
from .config import NORMAL_CLASS
from .data import missing_mask, select_inputs
from .errors import NonFiniteError

WINDOW_BATCH = 256  # windows per forward pass


class NonFiniteOutputError(NonFiniteError):
    """The model produced NaN or infinite probabilities (e.g. weights that overflow): no score
    can be given, and none is made up."""


@torch.no_grad()
def window_probs(
    model: torch.nn.Module, x: np.ndarray, starts: list[int], lengths: list[int], L: int
) -> np.ndarray:
    """Last-stage softmax for windows x[s : s+n] (prefix-masked to L): (W, L, C)."""
    device = (
        next(model.parameters()).device
        if isinstance(model, torch.nn.Module)
        else torch.device("cpu")
    )
    D = x.shape[1]
    out = []
    for i in range(0, len(starts), WINDOW_BATCH):
        chunk = list(zip(starts[i : i + WINDOW_BATCH], lengths[i : i + WINDOW_BATCH], strict=True))
        xb = np.zeros((len(chunk), L, D), dtype=np.float32)
        mb = np.zeros((len(chunk), L), dtype=bool)
        for j, (s, n) in enumerate(chunk):
            xb[j, :n], mb[j, :n] = x[s : s + n], True
        logits = model(
            torch.from_numpy(xb).to(device), torch.from_numpy(mb).to(device)
        )  # (S, W, L, C)
        out.append(torch.softmax(logits[-1].float(), dim=-1).cpu().numpy())
    probs = np.concatenate(out, axis=0)
    if not np.isfinite(probs[mask_of(lengths, L)]).all():
        raise NonFiniteOutputError(
            "the model's output is not finite (NaN or infinity): the checkpoint's weights "
            "overflow or are damaged; no scores were made"
        )
    return probs


def mask_of(lengths: list[int], L: int) -> np.ndarray:
    """(W, L) bool: the first ``lengths[w]`` steps of each window."""
    return np.arange(L)[None, :] < np.asarray(lengths)[:, None]


def step_probabilities(
    model: torch.nn.Module, x: np.ndarray, seq_len: int, causal: bool = False
) -> np.ndarray:
    """Class probabilities per segment (T, C) for one clip's normalised input x (T, D).

    Non-causal: every window of ``seq_len`` consecutive segments (stride 1) is scored, and a segment's
    probabilities are the mean over the windows that contain it. Causal: segment t is scored by the
    window that ends at t (segments max(0, t-L+1) .. t), as a live stream would see it.
    """
    T, L = len(x), seq_len
    if causal:
        starts = [max(0, t - L + 1) for t in range(T)]
        lengths = [t - s + 1 for t, s in enumerate(starts)]
        probs = window_probs(model, x, starts, lengths, L)  # (T, L, C)
        return probs[np.arange(T), np.array(lengths) - 1]
    starts = list(range(max(1, T - L + 1)))
    lengths = [min(L, T - s) for s in starts]
    probs = window_probs(model, x, starts, lengths, L)  # (W, L, C)
    acc = np.zeros((T, probs.shape[-1]))
    cnt = np.zeros(T)
    for w, (s, n) in enumerate(zip(starts, lengths, strict=True)):
        acc[s : s + n] += probs[w, :n]
        cnt[s : s + n] += 1
    return (acc / cnt[:, None]).astype(np.float32)


def clip_probabilities(step_probs: np.ndarray) -> np.ndarray:
    """Clip-level class probabilities (C,): the mean of its per-segment probabilities."""
    return step_probs.mean(axis=0)


def anomaly_scores(step_probs: np.ndarray, classes: list[str]) -> np.ndarray:
    """1 - p(normal) per segment (T,); the max non-normal probability when there is no normal class."""
    if NORMAL_CLASS in classes:
        return 1.0 - step_probs[:, classes.index(NORMAL_CLASS)]
    return step_probs.max(axis=1)


def model_input(ckpt: Checkpoint, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """Normalised model input (T, D) of one video's features, as in training."""
    return ckpt.norm(select_inputs(tensors, ckpt.modality), missing_mask(tensors, ckpt.modality))


def build_prediction(
    video: str, step_probs: np.ndarray, classes: list[str], segment_seconds: float, duration: float
) -> dict:
    """prediction.json content (DESIGN.md contract)."""
    clip = clip_probabilities(step_probs)
    scores = anomaly_scores(step_probs, classes)
    segments = []
    for t, p in enumerate(step_probs):
        segments.append(
            {
                "start": round(t * segment_seconds, 6),
                "end": round(min((t + 1) * segment_seconds, duration), 6),
                "label": classes[int(p.argmax())],
                "anomaly_score": float(scores[t]),
                "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
            }
        )
    return {
        "video": video,
        "label": classes[int(clip.argmax())],
        "probabilities": {c: float(v) for c, v in zip(classes, clip, strict=True)},
        "segments": segments,
    }
