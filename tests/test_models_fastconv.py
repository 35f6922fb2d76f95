"""MTCN's training path on CPU (time on the second axis, convolutions by matmul, attention
written out) against the nn.Conv1d / nn.MultiheadAttention path that inference and export run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avarnet.models.mtcn import (
    MultiStageTCN,
    ShiftedTaps,
    conv_steps,
    reference_convs,
    runs_matmul_convs,
    self_attention_steps,
    shift_steps,
    uniform_dropout,
)

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def same_padded_conv(c_in: int, c_out: int, k: int, d: int) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, k, padding=d * (k - 1) // 2, dilation=d)


def conv_and_grads(conv: nn.Conv1d, x: torch.Tensor, g: torch.Tensor, steps: bool):
    """Output (B, L, C_out) and the gradients of x, weight and bias for upstream gradient g."""
    conv.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = conv_steps(conv, x) if steps else conv(x.transpose(1, 2)).transpose(1, 2)
    y.backward(g)
    return y.detach(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone()


@pytest.mark.parametrize(
    "c_in,c_out,k,d",
    [(6, 6, 3, 1), (6, 6, 3, 2), (6, 6, 3, 4), (6, 6, 3, 16), (4, 7, 3, 3), (6, 6, 5, 2),
     (6, 6, 1, 1), (20, 6, 3, 1), (20, 6, 3, 8), (20, 6, 5, 3)],
)  # fmt: skip
@pytest.mark.parametrize("L", [1, 3, 5, 9, 40])
def test_conv_steps_equals_conv1d(c_in, c_out, k, d, L):
    # lengths below, at and above the dilation; wide inputs (20 > 6) take the per-tap matmul
    torch.manual_seed(L * 100 + d)
    conv = same_padded_conv(c_in, c_out, k, d)
    x, g = torch.randn(3, L, c_in), torch.randn(3, L, c_out)
    for new, ref in zip(
        conv_and_grads(conv, x, g, True), conv_and_grads(conv, x, g, False), strict=True
    ):
        assert new.shape == ref.shape
        torch.testing.assert_close(new, ref, atol=TOL, rtol=TOL)


def test_conv_steps_taps_past_the_length_get_zero_gradient():
    conv = same_padded_conv(5, 5, 3, 8)
    conv_steps(conv, torch.randn(2, 8, 5)).sum().backward()  # every off-centre tap reads padding
    assert conv.weight.grad[..., [0, 2]].abs().sum() == 0
    assert conv.weight.grad[..., 1].abs().sum() > 0


def test_shift_steps_and_shifted_taps():
    x = torch.arange(1.0, 6.0).view(1, 5, 1)  # steps 1..5
    assert shift_steps(x, 2).flatten().tolist() == [3, 4, 5, 0, 0]
    assert shift_steps(x, -2).flatten().tolist() == [0, 0, 1, 2, 3]
    taps = ShiftedTaps.apply(x, (-1, 0, 1)).view(5, 3)
    assert taps.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 0]]
    xd = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ShiftedTaps.apply(t, (-4, 0, 3)), (xd,))


def test_uniform_dropout_is_inverted_dropout():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = uniform_dropout(x, 0.3)
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.005
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.7))
    assert uniform_dropout(x, 0.0) is x


def attention_pair(dropout: float = 0.0) -> nn.MultiheadAttention:
    torch.manual_seed(1)
    return nn.MultiheadAttention(8, 2, dropout=dropout, batch_first=True)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("padded", [True, False])
def test_self_attention_steps_equals_multihead_attention(training, padded):
    attn = attention_pair().train(training)  # dropout 0: deterministic in training too
    h = torch.randn(3, 6, 8, requires_grad=True)
    ignore = torch.zeros(3, 6, dtype=torch.bool)
    if padded:
        ignore[1, 4:] = True
        ignore[2, 1:] = True
    ref, _ = attn(h, h, h, key_padding_mask=ignore, need_weights=False)
    new = self_attention_steps(attn, h, ignore if padded else None)
    torch.testing.assert_close(new, ref, atol=TOL, rtol=TOL)
    g_ref = torch.autograd.grad(ref.square().sum(), [h, *attn.parameters()])
    g_new = torch.autograd.grad(new.square().sum(), [h, *attn.parameters()])
    for a, b in zip(g_new, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def test_self_attention_steps_drops_attention_weights_in_training_only():
    attn = attention_pair(dropout=0.5)
    h = torch.randn(2, 5, 8)
    ignore = torch.zeros(2, 5, dtype=torch.bool)
    ref, _ = attn.eval()(h, h, h, key_padding_mask=ignore, need_weights=False)
    torch.testing.assert_close(self_attention_steps(attn, h, ignore), ref, atol=TOL, rtol=TOL)
    torch.manual_seed(0)
    assert not torch.allclose(self_attention_steps(attn.train(), h, ignore), ref, atol=1e-3)


def tiny_mtcn(dropout: float = 0.0, layers: int = 5) -> MultiStageTCN:
    torch.manual_seed(0)  # dilations 1..16: beyond the shorter lengths below
    return MultiStageTCN(12, 3, hidden=8, stages=3, layers=layers, heads=2, dropout=dropout)


def run(model: MultiStageTCN, x, mask, features: bool = False):
    model.zero_grad()
    out = model.features(x, mask) if features else model(x, mask)
    out.square().sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("L", [1, 4, 11, 37])
@pytest.mark.parametrize("features", [False, True])
@pytest.mark.parametrize("padded", [True, False])
def test_mtcn_training_path_equals_conv1d_path(L, features, padded):
    model = tiny_mtcn().train()
    x = torch.randn(3, L, 12)
    mask = torch.ones(3, L, dtype=torch.bool)
    if padded and L > 1:
        mask[1, L // 2 :] = False
        x[1, L // 2 :] = 5.0  # padded steps hold garbage: it must not reach valid ones
    assert runs_matmul_convs(model, x)
    out, grads = run(model, x, mask, features)
    with reference_convs():
        assert not runs_matmul_convs(model, x)
        ref, ref_grads = run(model, x, mask, features)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = max(1.0, float(ref_grads[name].abs().max()))
        torch.testing.assert_close(g, ref_grads[name], atol=TOL * scale, rtol=TOL, msg=name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace
def test_mtcn_inference_and_tracing_run_conv1d():
    model = tiny_mtcn()
    x = torch.randn(1, 6, 12)
    assert runs_matmul_convs(model.train(), x)
    with torch.no_grad():
        assert not runs_matmul_convs(model, x)
    assert not runs_matmul_convs(model.eval(), x)
    traced = []
    torch.jit.trace(lambda t: traced.append(runs_matmul_convs(model.train(), t)) or t, (x,))
    assert traced and not any(traced)


def test_mtcn_parameters_unchanged_so_old_checkpoints_load():
    model = tiny_mtcn(layers=2)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "attention.conv.weight": (8, 12, 3), "attention.conv.bias": (8,),
        "attention.attn.in_proj_weight": (24, 8), "attention.attn.in_proj_bias": (24,),
        "attention.attn.out_proj.weight": (8, 8), "attention.attn.out_proj.bias": (8,),
        "attention.norm.weight": (8,), "attention.norm.bias": (8,),
    }  # fmt: skip
    for s in range(3):
        expected |= {f"stages.{s}.conv_in.weight": (8, 8 if s == 0 else 3, 1)}
        expected |= {f"stages.{s}.conv_in.bias": (8,), f"stages.{s}.conv_out.weight": (3, 8, 1)}
        expected |= {f"stages.{s}.conv_out.bias": (3,)}
        for i in range(2):
            p = f"stages.{s}.layers.{i}."
            expected |= {p + "conv_dilated.weight": (8, 8, 3), p + "conv_dilated.bias": (8,)}
            expected |= {p + "conv_1x1.weight": (8, 8, 1), p + "conv_1x1.bias": (8,)}
    assert shapes == expected


def test_weights_trained_on_the_matmul_path_predict_the_same_through_conv1d():
    model = tiny_mtcn(dropout=0.3).train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, mask = torch.randn(4, 20, 12), torch.ones(4, 20, dtype=torch.bool)
    for _ in range(3):
        opt.zero_grad()
        model(x, mask).square().mean().backward()
        opt.step()
    loaded = tiny_mtcn(dropout=0.3)
    loaded.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = loaded.eval()(x, mask)  # inference: nn.Conv1d
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    model.attention.attn.dropout = 0.0
    new = model.train()(x, mask).detach()  # the training path, without dropout
    torch.testing.assert_close(new, ref, atol=TOL, rtol=TOL)
