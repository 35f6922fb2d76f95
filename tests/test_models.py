"""Tests for the temporal models: one interface, masking, learning, registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avarnet.config import ModelConfig
from avarnet.models import (
    LateFusion,
    count_parameters,
    create_model,
    list_models,
    register_model,
)

VIDEO_DIM, AUDIO_DIM = 12, 8
NUM_CLASSES = 5
FUSIONS = ("early", "late")
EXPECTED_MODELS = ["bigru", "bilstm", "gru", "lstm", "mtcn", "transformer"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def small_config(name: str, fusion: str = "early", **changes) -> ModelConfig:
    cfg = ModelConfig(
        name=name,
        input_dim=VIDEO_DIM + AUDIO_DIM,
        num_classes=NUM_CLASSES,
        hidden=16,
        stages=2,
        layers=3,
        heads=2,
        dropout=0.1,
        fusion=fusion,
        video_dim=VIDEO_DIM,
        audio_dim=AUDIO_DIM,
    )
    return cfg.replace(**changes)


def prefix_mask(lengths: list[int], length: int) -> torch.Tensor:
    """(B, L) bool mask, True on the first lengths[b] steps of row b."""
    return torch.arange(length) < torch.tensor(lengths).unsqueeze(1)


def expected_stages(cfg: ModelConfig) -> int:
    return cfg.stages if cfg.name == "mtcn" else 1


ALL_CASES = [(name, fusion) for name in list_models() for fusion in FUSIONS]


def test_list_models_is_sorted_and_complete():
    assert list_models() == EXPECTED_MODELS


@pytest.mark.parametrize(("name", "fusion"), ALL_CASES)
def test_forward_shape_and_backward_grads(name, fusion):
    torch.manual_seed(0)
    cfg = small_config(name, fusion)
    model = create_model(cfg).train()
    B, L = 3, 7
    x = torch.randn(B, L, cfg.input_dim)
    mask = prefix_mask([7, 4, 1], L)
    out = model(x, mask)
    assert out.shape == (expected_stages(cfg), B, L, NUM_CLASSES)
    assert torch.isfinite(out).all()
    out[:, mask].logsumexp(-1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize(("name", "fusion"), ALL_CASES)
def test_valid_steps_ignore_padded_values(name, fusion):
    torch.manual_seed(0)
    cfg = small_config(name, fusion)
    model = create_model(cfg).eval()
    B, L = 4, 9
    mask = prefix_mask([9, 1, 5, 1], L)
    x = torch.randn(B, L, cfg.input_dim)
    noisy = x.clone()
    noisy[~mask] = 1e3 * torch.randn(int((~mask).sum()), cfg.input_dim)
    with torch.no_grad():
        clean_out, noisy_out = model(x, mask), model(noisy, mask)
    assert torch.isfinite(noisy_out).all()
    torch.testing.assert_close(noisy_out[:, mask], clean_out[:, mask], atol=1e-5, rtol=0)
    uniform = torch.full_like(noisy_out[:, ~mask], 1.0 / NUM_CLASSES)
    torch.testing.assert_close(noisy_out[:, ~mask].softmax(-1), uniform)


@pytest.mark.parametrize(("name", "fusion"), ALL_CASES)
def test_single_step_row_matches_unpadded_run(name, fusion):
    """A 1-step row padded to length L gives what the same step gives alone."""
    torch.manual_seed(0)
    cfg = small_config(name, fusion)
    model = create_model(cfg).eval()
    L = 8
    x = torch.randn(1, L, cfg.input_dim) * 100.0
    with torch.no_grad():
        padded = model(x, prefix_mask([1], L))
        alone = model(x[:, :1], prefix_mask([1], 1))
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[:, :, :1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_row_without_valid_steps_stays_finite(name):
    cfg = small_config(name)
    model = create_model(cfg).eval()
    x = torch.randn(2, 5, cfg.input_dim)
    with torch.no_grad():
        out = model(x, prefix_mask([5, 0], 5))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "fusion"), ALL_CASES)
def test_overfits_a_tiny_batch(name, fusion):
    torch.manual_seed(0)
    cfg = small_config(name, fusion, dropout=0.0)
    model = create_model(cfg)
    B, L = 8, 6
    x = torch.randn(B, L, cfg.input_dim)
    mask = prefix_mask([6, 6, 5, 4, 6, 3, 2, 6], L)
    labels = torch.arange(B) % NUM_CLASSES  # one label per sequence
    targets = labels.unsqueeze(1).expand(B, L)[mask]  # (N,)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    accuracy = 0.0
    for step in range(200):
        model.train()
        logits = model(x, mask)[:, mask]  # (S, N, C)
        loss = torch.stack([F.cross_entropy(stage, targets) for stage in logits]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            with torch.no_grad():
                final = model.eval()(x, mask)[-1, mask]  # (N, C)
            accuracy = (final.argmax(-1) == targets).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0


def test_parameter_counts_are_positive_and_distinct():
    counts = {name: count_parameters(create_model(small_config(name))) for name in list_models()}
    assert all(c > 0 for c in counts.values())
    assert len(set(counts.values())) == len(counts), counts


def test_count_parameters_skips_frozen_parameters():
    model = create_model(small_config("gru"))
    total = count_parameters(model)
    for p in model.head.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == total - sum(p.numel() for p in model.head.parameters())


def test_sequence_baselines_cap_depth_at_two_layers():
    assert create_model(small_config("gru", layers=10)).rnn.num_layers == 2
    assert create_model(small_config("lstm", layers=1)).rnn.num_layers == 1
    assert len(create_model(small_config("transformer", layers=10)).encoder.layers) == 2


def test_mtcn_has_configured_stages_and_dilations():
    model = create_model(small_config("mtcn", stages=3, layers=4))
    assert len(model.stages) == 3
    dilations = [layer.conv_dilated.dilation[0] for layer in model.stages[0].layers]
    assert dilations == [1, 2, 4, 8]


def test_learned_late_fusion_has_modality_weights():
    mean = create_model(small_config("gru", "late"))
    learned = create_model(small_config("gru", "late", late_combine="learned"))
    assert isinstance(learned, LateFusion)
    assert learned.combine_logits.shape == (2,) and learned.combine_logits.requires_grad
    assert count_parameters(learned) == count_parameters(mean) + 2
    assert not hasattr(mean, "combine_logits")


def test_late_fusion_output_is_log_of_mean_probabilities():
    torch.manual_seed(0)
    model = create_model(small_config("lstm", "late")).eval()
    x = torch.randn(2, 4, VIDEO_DIM + AUDIO_DIM)
    mask = prefix_mask([4, 2], 4)
    with torch.no_grad():
        out = model(x, mask)
        video = model.video_model(x[..., :VIDEO_DIM], mask).softmax(-1)
        audio = model.audio_model(x[..., VIDEO_DIM:], mask).softmax(-1)
    torch.testing.assert_close(out.exp(), (video + audio) / 2)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(out.shape[:-1]))


def test_learned_late_fusion_follows_its_weights():
    torch.manual_seed(0)
    model = create_model(small_config("gru", "late", late_combine="learned")).eval()
    x = torch.randn(2, 4, VIDEO_DIM + AUDIO_DIM)
    mask = prefix_mask([4, 4], 4)
    with torch.no_grad():
        model.combine_logits.copy_(torch.tensor([math.log(3.0), 0.0]))  # weights 0.75, 0.25
        out = model(x, mask)
        video = model.video_model(x[..., :VIDEO_DIM], mask).softmax(-1)
        audio = model.audio_model(x[..., VIDEO_DIM:], mask).softmax(-1)
    torch.testing.assert_close(out.exp(), 0.75 * video + 0.25 * audio)


def test_late_fusion_slices_modalities():
    """Changing audio features leaves the video branch's output unchanged, and vice versa."""
    torch.manual_seed(0)
    model = create_model(small_config("mtcn", "late")).eval()
    x = torch.randn(2, 5, VIDEO_DIM + AUDIO_DIM)
    mask = prefix_mask([5, 3], 5)
    other = x.clone()
    other[..., VIDEO_DIM:] = torch.randn(2, 5, AUDIO_DIM)
    with torch.no_grad():
        assert torch.equal(
            model.video_model(x[..., :VIDEO_DIM], mask),
            model.video_model(other[..., :VIDEO_DIM], mask),
        )
        assert not torch.allclose(model(x, mask), model(other, mask))


def test_unknown_model_name_raises_with_available_names():
    with pytest.raises(ValueError, match="mtcn"):
        create_model(small_config("tcn-xl"))


@pytest.mark.parametrize(
    "changes",
    [
        {"fusion": "middle"},
        {"fusion": "late", "late_combine": "max"},
        {"fusion": "late", "input_dim": VIDEO_DIM},
        {"heads": 3},
        {"kernel_size": 4},
    ],
)
def test_bad_config_raises_value_error(changes):
    name = "transformer" if "heads" in changes else "mtcn"
    with pytest.raises(ValueError):
        create_model(small_config(name, **changes))


def test_register_model_rejects_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mtcn")(lambda cfg: None)


def test_recurrent_rejects_non_prefix_mask():
    model = create_model(small_config("gru")).eval()
    mask = torch.tensor([[True, False, True]])
    with pytest.raises(ValueError, match="prefix"):
        model(torch.randn(1, 3, VIDEO_DIM + AUDIO_DIM), mask)


def off_centre_grads(layers: int, seq_len: int) -> list[float]:
    """|grad| of each dilated layer's off-centre taps (first stage) on a full window of seq_len."""
    from avarnet.models.mtcn import MultiStageTCN

    torch.manual_seed(0)
    model = MultiStageTCN(
        input_dim=6, num_classes=3, hidden=8, stages=2, layers=layers, heads=2, dropout=0.0
    )
    x, mask = torch.randn(2, seq_len, 6), torch.ones(2, seq_len, dtype=torch.bool)
    model(x, mask).square().sum().backward()
    return [
        float(layer.conv_dilated.weight.grad[..., [0, 2]].abs().sum())
        for layer in model.stages[0].layers
    ]


def test_mtcn_depth_follows_the_window():
    from avarnet.train import mtcn_layers_for

    assert [mtcn_layers_for(L) for L in (1, 2, 5, 10, 16, 17, 200)] == [1, 1, 3, 4, 4, 5, 8]
    # every layer of the chosen depth is used: its off-centre taps get gradient on a full window
    assert all(g > 0 for g in off_centre_grads(mtcn_layers_for(10), 10))
    # the paper-size stack at L = 10: layers of dilation >= 16 read only padding
    grads = off_centre_grads(10, 10)
    assert all(g > 0 for g in grads[:4]) and all(g == 0 for g in grads[4:])


def test_training_builds_mtcn_as_deep_as_its_window(tmp_path):
    from feature_factory import make_store

    from avarnet.config import TrainConfig
    from avarnet.train import model_config_for

    store = make_store(tmp_path / "s", per_class=2)
    assert model_config_for(store, TrainConfig(seq_len=10)).layers == 4
    assert model_config_for(store, TrainConfig(seq_len=40)).layers == 6
    assert model_config_for(store, TrainConfig(seq_len=10), {"layers": 10}).layers == 10
    assert (
        model_config_for(store, TrainConfig(model="gru", seq_len=10)).layers == ModelConfig().layers
    )
