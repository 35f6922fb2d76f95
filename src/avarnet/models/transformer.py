"""Transformer-encoder baseline: per-step logits from self-attention over the window."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from avarnet.config import ModelConfig
from avarnet.models.registry import register_model

# ModelConfig.layers counts dilated layers per MTCN stage (default 10). The sequence
# baselines (RNNs, transformer) use min(layers, MAX_SEQUENCE_LAYERS): 2 layers by default,
# fewer only when layers is set lower.
MAX_SEQUENCE_LAYERS = 2
FEEDFORWARD_MULT = 4  # dim_feedforward = 4 * d_model
POSITIONAL_BASE = 10_000.0  # wavelength base of the sinusoidal encoding


def sequence_layers(layers: int) -> int:
    """Depth of a recurrent or transformer baseline for ``ModelConfig.layers``."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    return min(layers, MAX_SEQUENCE_LAYERS)


def key_padding_mask(mask: Tensor) -> Tensor:
    """Attention key padding mask (B, L), True = ignore, from a validity mask (B, L).

    Rows without any valid step attend to every step instead of none (which gives NaN);
    their outputs sit at padded steps only and are discarded by the caller.
    """
    padding = ~mask  # (B, L)
    return padding & mask.any(dim=1, keepdim=True)  # (B, L)


def sinusoidal_encoding(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Sinusoidal positional encoding (length, dim) of 'Attention is all you need'."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32)
        * (-math.log(POSITIONAL_BASE) / dim)
    )  # (ceil(dim / 2),)
    enc = torch.zeros(length, dim, device=device)  # (L, dim)
    enc[:, 0::2] = torch.sin(position * freq)
    enc[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return enc.to(dtype)


class TransformerModel(nn.Module):
    """Linear projection + sinusoidal positions + pre-norm transformer encoder + linear head."""

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden: int = 64,
        heads: int = 4,
        num_layers: int = MAX_SEQUENCE_LAYERS,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.input_proj = nn.Linear(input_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=hidden,
            nhead=heads,
            dim_feedforward=FEEDFORWARD_MULT * hidden,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=num_layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, L, D), mask (B, L) -> logits (1, B, L, C); zero logits at padded steps."""
        logits = self.head(self.features(x, mask)).masked_fill(~mask.unsqueeze(-1), 0.0)
        return logits.unsqueeze(0)  # (1, B, L, C)

    def features(self, x: Tensor, mask: Tensor) -> Tensor:
        """Penultimate features (B, L, hidden): the encoder output the head reads."""
        B, L, D = x.shape
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, L, D)
        h = self.input_proj(x)  # (B, L, hidden)
        h = self.dropout(h + sinusoidal_encoding(L, h.shape[-1], h.device, h.dtype))
        return self.encoder(h, src_key_padding_mask=key_padding_mask(mask))  # (B, L, hidden)


@register_model("transformer")
def transformer(cfg: ModelConfig) -> TransformerModel:
    """Transformer baseline; depth = min(cfg.layers, MAX_SEQUENCE_LAYERS)."""
    return TransformerModel(
        input_dim=cfg.input_dim,
        num_classes=cfg.num_classes,
        hidden=cfg.hidden,
        heads=cfg.heads,
        num_layers=sequence_layers(cfg.layers),
        dropout=cfg.dropout,
    )
