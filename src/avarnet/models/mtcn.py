"""AVAR-Net's temporal model: attention block + multi-stage dilated TCN (paper §3.5).

The stages follow MS-TCN (Farha & Gall, CVPR 2019): MultiStageTCN -> SingleStage ->
DilatedResidualLayer. Features are multiplied by the mask after every layer, so padded
steps stay zero and never leak into valid ones through the convolutions.

Training on CPU runs the model with time on the second axis, (B, L, C): every convolution as
one matmul (:func:`conv_steps`), the self-attention written out (:func:`self_attention_steps`),
dropout from uniform masks (:func:`uniform_dropout`). Everything else (inference, export, other
devices) runs it (B, C, L) through ``nn.Conv1d`` and ``nn.MultiheadAttention``. Both compute the
same function (and the same dropout distribution) with the same parameters, so checkpoints do not
depend on which one trained them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avarnet.config import ModelConfig
from avarnet.models.registry import register_model
from avarnet.models.transformer import key_padding_mask

# False inside reference_convs(): training runs nn.Conv1d too (for benchmarks)
_MATMUL_CONVS: ContextVar[bool] = ContextVar("mtcn_matmul_convs", default=True)


@contextmanager
def reference_convs() -> Iterator[None]:
    """Within it, MTCN training in this thread runs its convolutions as ``nn.Conv1d`` on
    (B, C, L), as inference does, instead of :func:`conv_steps`: the same function, for timing
    one against the other."""
    token = _MATMUL_CONVS.set(False)
    try:
        yield
    finally:
        _MATMUL_CONVS.reset(token)


def runs_matmul_convs(model: nn.Module, x: Tensor) -> bool:
    """Whether ``model`` computes this call with :func:`conv_steps`: in training, on CPU, with
    gradients, outside export tracing and :func:`reference_convs`."""
    return (
        model.training
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and _MATMUL_CONVS.get()
    )


def shift_steps(x: Tensor, offset: int) -> Tensor:
    """x (B, L, C) -> y (B, L, C) with y[:, t] = x[:, t + offset], zero where t + offset is
    outside [0, L)."""
    if offset == 0:
        return x
    if offset > 0:
        return F.pad(x[:, offset:], (0, 0, 0, offset))
    return F.pad(x[:, :offset], (0, 0, -offset, 0))


class ShiftedTaps(torch.autograd.Function):
    """x (B, L, C), offsets -> (B, L, len(offsets) C): block i holds shift_steps(x, offsets[i]).
    One allocation forward; backward sums the blocks' gradients shifted back, in place."""

    @staticmethod
    def forward(ctx, x: Tensor, offsets: tuple[int, ...]) -> Tensor:
        B, L, C = x.shape
        out = x.new_empty(B, L, len(offsets), C)
        for i, o in enumerate(offsets):
            if o >= 0:
                out[:, : L - o, i] = x[:, o:]
                out[:, L - o :, i] = 0
            else:
                out[:, -o:, i] = x[:, :o]
                out[:, :-o, i] = 0
        ctx.offsets = offsets
        return out.view(B, L, -1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        B, L, _ = grad.shape
        g = grad.view(B, L, len(ctx.offsets), -1)  # (B, L, taps, C)
        gx = torch.zeros_like(g[:, :, 0])  # (B, L, C)
        for i, o in enumerate(ctx.offsets):
            if o == 0:
                gx += g[:, :, i]
            elif o > 0:
                gx[:, o:] += g[:, : L - o, i]
            else:
                gx[:, :o] += g[:, -o:, i]
        return gx, None


def conv_steps(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """``conv`` (odd kernel k, dilation d, padding d (k - 1) / 2, stride 1) on x laid out
    (B, L, C_in) -> (B, L, C_out), by matmul; autograd's backward is matmuls too.

    Only the taps that reach a step of the sequence (|j - k // 2| d < L) take part, so a layer
    dilated past the length costs a 1x1 conv. With at most as many input as output channels the
    shifted copies x(t + (j - k // 2) d) go side by side on channels into one matmul; with more
    input channels (the attention block's conv over the features) one matmul gives every tap's
    output (B, L, taps, C_out) and the shifted outputs are summed, so the wide input is never
    copied.
    """
    w = conv.weight  # (C_out, C_in, k)
    L, k, d = x.shape[1], w.shape[-1], conv.dilation[0]
    c = k // 2
    r = min(c, (L - 1) // d)  # taps c - r .. c + r reach the sequence
    if r == 0:
        return F.linear(x, w[:, :, c], conv.bias)  # (B, L, C_out)
    offsets = [(j - c) * d for j in range(c - r, c + r + 1)]
    taps = w[:, :, c - r : c + r + 1]  # (C_out, C_in, 2r + 1)
    C_out, C_in = w.shape[:2]
    if C_in <= C_out:
        cols = ShiftedTaps.apply(x, tuple(offsets))  # (B, L, (2r + 1) C_in)
        return F.linear(cols, taps.transpose(1, 2).reshape(C_out, -1), conv.bias)
    z = F.linear(x, taps.permute(2, 0, 1).reshape(-1, C_in))  # (B, L, (2r + 1) C_out)
    z = z.unflatten(-1, (len(offsets), C_out))  # (B, L, 2r + 1, C_out)
    y = z[:, :, r] if conv.bias is None else z[:, :, r] + conv.bias  # (B, L, C_out)
    for i, o in enumerate(offsets):
        if o:
            y = y + shift_steps(z[:, :, i], o)
    return y


def masked(x: Tensor, m: Tensor | None) -> Tensor:
    """x (B, L, C) times the float mask m (B, L, 1); None: every step is valid, x itself."""
    return x if m is None else x * m


def uniform_dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout (zero with probability p, the rest scaled by 1 / (1 - p)) from a uniform
    mask: the distribution of ``F.dropout``, drawn in a fraction of ``bernoulli_``'s time on CPU."""
    if p <= 0:
        return x
    keep = torch.rand(x.shape, device=x.device, dtype=torch.float32).ge_(p).mul_(1.0 / (1.0 - p))
    return x * keep.to(x.dtype)


def self_attention_steps(attn: nn.MultiheadAttention, h: Tensor, ignore: Tensor | None) -> Tensor:
    """``attn(h, h, h, key_padding_mask=ignore)``'s output for a batch-first module with a joint
    input projection and bias, written out; in training its dropout on the attention weights
    draws a uniform mask like :func:`uniform_dropout` (and scales the product with the values,
    not the weights). h (B, L, E), ignore (B, L) True = padded key (None: no key is) ->
    (B, L, E)."""
    B, L, E = h.shape
    H = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B, L, 3E)
    q, k, v = qkv.view(B, L, 3, H, E // H).permute(2, 0, 3, 1, 4).flatten(1, 2)  # (BH, L, E/H)
    if ignore is None:
        scores = torch.bmm(q, k.transpose(1, 2)).mul_((E // H) ** -0.5)  # (BH, L, L)
    else:
        padded = torch.zeros(B, 1, L, dtype=h.dtype, device=h.device).masked_fill_(
            ignore.unsqueeze(1), float("-inf")
        )  # (B, 1, L)
        bias = padded.repeat_interleave(H, dim=0)  # (BH, 1, L)
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=(E // H) ** -0.5)
    weights = torch.softmax(scores, dim=-1)  # (BH, L, L)
    scale = 1.0
    if attn.training and attn.dropout > 0:
        keep = torch.rand(weights.shape, device=h.device, dtype=torch.float32).ge_(attn.dropout)
        weights, scale = weights * keep.to(h.dtype), 1.0 / (1.0 - attn.dropout)
    out = torch.bmm(weights, v) * scale  # (BH, L, E/H)
    return attn.out_proj(out.view(B, H, L, E // H).transpose(1, 2).reshape(B, L, E))


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

    def forward_steps(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """:meth:`forward` laid out (B, L, D) -> (B, L, hidden), convolution by matmul and
        attention by :func:`self_attention_steps`; mask None: every step is valid."""
        m = None if mask is None else mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        h = masked(torch.relu(conv_steps(self.conv, x)), m)  # (B, L, hidden)
        ignore = None if mask is None else key_padding_mask(mask)  # (B, L)
        a = self_attention_steps(self.attn, h, ignore)  # (B, L, hidden)
        return masked(self.norm(h + a), m)  # (B, L, hidden)


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

    def forward_steps(self, x: Tensor, m: Tensor | None) -> Tensor:
        """:meth:`forward` laid out (B, L, channels), m (B, L, 1) or None (every step valid),
        convolutions by matmul."""
        out = torch.relu(conv_steps(self.conv_dilated, x))  # (B, L, channels)
        out = conv_steps(self.conv_1x1, out)  # (B, L, channels)
        if self.dropout.training:  # the module's p, by a uniform mask
            out = uniform_dropout(out, self.dropout.p)
        return masked(x + out, m)


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

    def forward_steps(self, x: Tensor, m: Tensor | None) -> Tensor:
        """:meth:`forward` laid out (B, L, input_dim), m (B, L, 1) or None (every step valid)
        -> logits (B, L, C)."""
        return masked(conv_steps(self.conv_out, self.hidden_steps(x, m)), m)  # (B, L, C)

    def hidden_steps(self, x: Tensor, m: Tensor | None) -> Tensor:
        """:meth:`hidden` laid out (B, L, input_dim), m (B, L, 1) or None -> (B, L, channels)."""
        out = masked(conv_steps(self.conv_in, x), m)  # (B, L, channels)
        for layer in self.layers:
            out = layer.forward_steps(out, m)  # (B, L, channels)
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
        if runs_matmul_convs(self, x):
            return self._run_steps(x, mask, features)
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

    def _run_steps(self, x: Tensor, mask: Tensor, features: bool) -> Tensor:
        """:meth:`_run` with time on the second axis throughout (no transposes); a batch
        without padding skips the masking (a product with ones)."""
        if bool(mask.all()):
            m, inp = None, self.attention.forward_steps(x, None)  # (B, L, hidden)
        else:
            m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
            inp = self.attention.forward_steps(x.masked_fill(~mask.unsqueeze(-1), 0.0), mask)
        outputs = []  # per stage (B, L, C)
        for s, stage in enumerate(self.stages):
            if s:
                inp = masked(torch.softmax(outputs[-1], dim=-1), m)  # (B, L, C)
            if features and s == len(self.stages) - 1:
                return stage.hidden_steps(inp, m)  # (B, L, hidden)
            outputs.append(stage.forward_steps(inp, m))  # (B, L, C)
        return torch.stack(outputs)  # (S, B, L, C)


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
