"""Late fusion: one temporal model per modality, class probabilities combined."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from avarnet.config import LATE_COMBINES

NUM_MODALITIES = 2  # video, audio


class LateFusion(nn.Module):
    """Run ``video_model`` and ``audio_model`` on their slices of x; combine probabilities.

    x[..., :video_dim] goes to the video model and x[..., video_dim:video_dim + audio_dim]
    to the audio model. combine="mean" averages the two branches' class probabilities;
    "learned" weights them by softmax(``combine_logits``), one learned logit per modality
    (zero-initialised, so training starts from the mean). The output is the log of the
    combined probabilities, so softmax of it gives them back and cross-entropy applies.
    """

    def __init__(
        self,
        video_model: nn.Module,
        audio_model: nn.Module,
        video_dim: int,
        audio_dim: int,
        combine: str = "mean",
    ) -> None:
        super().__init__()
        if combine not in LATE_COMBINES:
            raise ValueError(f"unknown combine {combine!r}; expected one of {LATE_COMBINES}")
        self.video_model = video_model
        self.audio_model = audio_model
        self.video_dim = video_dim
        self.audio_dim = audio_dim
        self.combine = combine
        if combine == "learned":
            self.combine_logits = nn.Parameter(torch.zeros(NUM_MODALITIES))

    def _log_weights(self) -> Tensor:
        """Log of the per-modality weights, (NUM_MODALITIES,)."""
        if self.combine == "learned":
            return torch.log_softmax(self.combine_logits, dim=0)
        return torch.full((NUM_MODALITIES,), -math.log(NUM_MODALITIES))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, L, video_dim + audio_dim), mask (B, L) -> log-probabilities (S, B, L, C)."""
        B, L, D = x.shape
        if D != self.video_dim + self.audio_dim:
            raise ValueError(f"expected {self.video_dim + self.audio_dim} features, got {D}")
        video = self.video_model(x[..., : self.video_dim], mask)  # (S, B, L, C)
        audio = self.audio_model(x[..., self.video_dim :], mask)  # (S, B, L, C)
        if video.shape != audio.shape:
            raise ValueError(f"branch outputs differ: video {video.shape}, audio {audio.shape}")
        log_probs = torch.stack(
            [video.log_softmax(dim=-1), audio.log_softmax(dim=-1)]
        )  # (2, S, B, L, C)
        log_w = self._log_weights().to(log_probs).view(NUM_MODALITIES, 1, 1, 1, 1)
        return torch.logsumexp(log_probs + log_w, dim=0)  # (S, B, L, C)

    def features(self, x: Tensor, mask: Tensor) -> Tensor:
        """Penultimate features (B, L, Hv + Ha): both branches' features side by side."""
        video = self.video_model.features(x[..., : self.video_dim], mask)  # (B, L, Hv)
        audio = self.audio_model.features(x[..., self.video_dim :], mask)  # (B, L, Ha)
        return torch.cat([video, audio], dim=-1)
