"""AVAR-Net's temporal model: attention block + multi-stage dilated TCN (paper §3.5).

The stages follow MS-TCN (Farha & Gall, CVPR 2019): MultiStageTCN -> SingleStage ->
DilatedResidualLayer. Features are multiplied by the mask after every layer, so padded
steps stay zero and never leak into valid ones through the convolutions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avarnet.config import ModelConfig
from avarnet.models.registry import register_model
from avarnet.models.transformer import key_padding_mask


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")


class AttentionBlock(nn.Module):
    """Conv1d over time + ReLU, then multi-head self-attention with residual and LayerNorm."""

    def __init__(
        self, input_dim: int, hidden: int, heads: int, kernel_size: int, dropout: float
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size)
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.conv = nn.Conv1d(input_dim, hidden, kernel_size, padding=kernel_size // 2)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, D, L) zero at padded steps, mask (B, L) -> (B, hidden, L)."""
        B, D, L = x.shape
        m = mask.unsqueeze(1).to(x.dtype)  # (B, 1, L)
        h = (torch.relu(self.conv(x)) * m).transpose(1, 2)  # (B, L, hidden)
        a, _ = self.attn(h, h, h, key_padding_mask=key_padding_mask(mask), need_weights=False)
        return self.norm(h + a).transpose(1, 2) * m  # (B, hidden, L)


class DilatedResidualLayer(nn.Module):
    """Dilated conv + ReLU, 1x1 conv, dropout, residual (MS-TCN)."""

    def __init__(self, dilation: int, channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2  # keeps the length
        self.conv_dilated = nn.Conv1d(
            channels, channels, kernel_size, padding=padding, dilation=dilation
        )
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, m: Tensor) -> Tensor:
        """x (B, channels, L), m (B, 1, L) float mask -> (B, channels, L)."""
        out = torch.relu(self.conv_dilated(x))  # (B, channels, L)
        out = self.dropout(self.conv_1x1(out))  # (B, channels, L)
        return (x + out) * m


class SingleStage(nn.Module):
    """1x1 conv in, ``layers`` dilated residual layers (dilation 2**i), 1x1 conv to classes."""

    def __init__(
        self,
        input_dim: int,
        channels: int,
        num_classes: int,
        layers: int,
        kernel_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(input_dim, channels, 1)
        self.layers = nn.ModuleList(
            DilatedResidualLayer(2**i, channels, kernel_size, dropout) for i in range(layers)
        )
        self.conv_out = nn.Conv1d(channels, num_classes, 1)

    def forward(self, x: Tensor, m: Tensor) -> Tensor:
        """x (B, input_dim, L), m (B, 1, L) float mask -> logits (B, C, L), zero at padding."""
        return self.conv_out(self.hidden(x, m)) * m  # (B, C, L)

    def hidden(self, x: Tensor, m: Tensor) -> Tensor:
        """The stage's features before its output conv: (B, channels, L), zero at padding."""
        out = self.conv_in(x) * m  # (B, channels, L)
        for layer in self.layers:
            out = layer(out, m)  # (B, channels, L)
        return out


class MultiStageTCN(nn.Module):
    """Attention block, then ``stages`` TCN stages; stage s > 1 refines softmax of stage s - 1."""

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden: int = 64,
        stages: int = 4,
        layers: int = 10,
        heads: int = 4,
        kernel_size: int = 3,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if stages < 1 or layers < 1:
            raise ValueError(f"stages and layers must be >= 1, got {stages} and {layers}")
        _check_kernel(kernel_size)
        self.attention = AttentionBlock(input_dim, hidden, heads, kernel_size, dropout)
        self.stages = nn.ModuleList(
            SingleStage(
                hidden if s == 0 else num_classes, hidden, num_classes, layers, kernel_size, dropout
            )
            for s in range(stages)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, L, D), mask (B, L) -> stage logits (S, B, L, C); zero logits at padded steps."""
        return self._run(x, mask, features=False)

    def features(self, x: Tensor, mask: Tensor) -> Tensor:
        """Penultimate features (B, L, hidden): the last stage's output before its 1x1 class conv."""
        return self._run(x, mask, features=True)

    def _run(self, x: Tensor, mask: Tensor, features: bool) -> Tensor:
        B, L, D = x.shape
        m = mask.unsqueeze(1).to(x.dtype)  # (B, 1, L)
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0).transpose(1, 2)  # (B, D, L)
        inp = self.attention(x, mask)  # (B, hidden, L)
        outputs = []
        for s, stage in enumerate(self.stages):
            if s:
                inp = torch.softmax(outputs[-1], dim=1) * m  # (B, C, L)
            if features and s == len(self.stages) - 1:
                return stage.hidden(inp, m).transpose(1, 2)  # (B, L, hidden)
            outputs.append(stage(inp, m))  # (B, C, L)
        return torch.stack(outputs).transpose(2, 3)  # (S, B, L, C)


@register_model("mtcn")
def mtcn(cfg: ModelConfig) -> MultiStageTCN:
    """AVAR-Net's multi-stage TCN with the attention block."""
    return MultiStageTCN(
        input_dim=cfg.input_dim,
        num_classes=cfg.num_classes,
        hidden=cfg.hidden,
        stages=cfg.stages,
        layers=cfg.layers,
        heads=cfg.heads,
        kernel_size=cfg.kernel_size,
        dropout=cfg.dropout,
    )
