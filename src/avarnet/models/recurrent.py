"""Recurrent baselines (GRU, LSTM, and their bidirectional forms): per-step logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from avarnet.config import ModelConfig
from avarnet.models.registry import register_model
from avarnet.models.transformer import MAX_SEQUENCE_LAYERS, sequence_layers

CELLS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}


def lengths_from_mask(mask: Tensor) -> Tensor:
    """Valid lengths (B,) int64 on CPU from a prefix mask (B, L); empty rows count as 1.

    Raises ValueError if a row's valid steps are not a prefix.
    """
    B, L = mask.shape
    lengths = mask.sum(dim=1)  # (B,)
    prefix = torch.arange(L, device=mask.device) < lengths.unsqueeze(1)  # (B, L)
    if not torch.equal(prefix, mask):
        raise ValueError("mask must mark a prefix of valid steps in every row")
    return lengths.clamp(min=1).cpu()


class RecurrentModel(nn.Module):
    """Linear + ReLU + dropout, a (bi)GRU/LSTM over the valid steps, per-step linear head."""

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        cell: str = "gru",
        hidden: int = 64,
        num_layers: int = MAX_SEQUENCE_LAYERS,
        bidirectional: bool = False,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELLS)}")
        self.input_proj = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.ReLU(), nn.Dropout(dropout)
        )
        self.rnn = CELLS[cell](
            hidden,
            hidden,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        directions = 2 if bidirectional else 1
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(directions * hidden, num_classes)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, L, D), mask (B, L) -> logits (1, B, L, C); zero logits at padded steps."""
        out = self.features(x, mask)  # (B, L, dirs*hidden)
        logits = self.head(self.dropout(out)).masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, L, C)
        return logits.unsqueeze(0)  # (1, B, L, C)

    def features(self, x: Tensor, mask: Tensor) -> Tensor:
        """Penultimate features (B, L, dirs * hidden): the recurrent output the head reads."""
        B, L, D = x.shape
        valid = mask.unsqueeze(-1)  # (B, L, 1)
        h = self.input_proj(x.masked_fill(~valid, 0.0))  # (B, L, hidden)
        packed = pack_padded_sequence(
            h, lengths_from_mask(mask), batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, dirs*hidden)
        return out


def _build(cfg: ModelConfig, cell: str, bidirectional: bool) -> RecurrentModel:
    return RecurrentModel(
        input_dim=cfg.input_dim,
        num_classes=cfg.num_classes,
        cell=cell,
        hidden=cfg.hidden,
        num_layers=sequence_layers(cfg.layers),
        bidirectional=bidirectional,
        dropout=cfg.dropout,
    )


@register_model("gru")
def gru(cfg: ModelConfig) -> RecurrentModel:
    """GRU baseline; depth = min(cfg.layers, MAX_SEQUENCE_LAYERS)."""
    return _build(cfg, "gru", bidirectional=False)


@register_model("bigru")
def bigru(cfg: ModelConfig) -> RecurrentModel:
    """Bidirectional GRU baseline; depth = min(cfg.layers, MAX_SEQUENCE_LAYERS)."""
    return _build(cfg, "gru", bidirectional=True)


@register_model("lstm")
def lstm(cfg: ModelConfig) -> RecurrentModel:
    """LSTM baseline; depth = min(cfg.layers, MAX_SEQUENCE_LAYERS)."""
    return _build(cfg, "lstm", bidirectional=False)


@register_model("bilstm")
def bilstm(cfg: ModelConfig) -> RecurrentModel:
    """Bidirectional LSTM baseline; depth = min(cfg.layers, MAX_SEQUENCE_LAYERS)."""
    return _build(cfg, "lstm", bidirectional=True)
