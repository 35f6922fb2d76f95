import json

import numpy as np
import pytest
import torch
from conftest import FAST_TRAIN as FAST
from conftest import SMALL_MODEL as SMALL

from avarnet.checkpoint import load_checkpoint
from avarnet.config import TrainConfig
from avarnet.evaluate import evaluate
from avarnet.train import TrainError, adam, stage_loss, train


@pytest.fixture(scope="module")
def store(factory_store):
    return factory_store


def test_train_writes_history_and_self_describing_checkpoint(trained):
    hist = json.loads((trained.checkpoint.parent / "history.json").read_text())
    assert len(hist) == len(trained.history) >= 1
    assert {"epoch", "train_loss", "val_loss", "lr"} <= set(hist[0])
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    ck = load_checkpoint(trained.checkpoint)
    assert ck.classes == ["abuse", "crash", "normal"] and ck.model_config.hidden == 16
    assert ck.norm.mean.shape == (20,) and ck.spec.video_dim == 12
    assert not ck.model.training


def test_training_is_reproducible(store, tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 3})
    a = train(store, tmp_path / "a", cfg, model_overrides=SMALL, progress=False)
    b = train(store, tmp_path / "b", cfg, model_overrides=SMALL, progress=False)
    assert [h["train_loss"] for h in a.history] == pytest.approx(
        [h["train_loss"] for h in b.history]
    )
    other = train(store, tmp_path / "c", cfg.replace(seed=1), SMALL, progress=False)
    assert other.history[-1]["train_loss"] != pytest.approx(a.history[-1]["train_loss"])


def test_single_modality_and_late_fusion_train(store, tmp_path):
    r = train(
        store,
        tmp_path / "a",
        TrainConfig(**{**FAST, "epochs": 2}, modality="audio"),
        SMALL,
        progress=False,
    )
    assert load_checkpoint(r.checkpoint).model_config.input_dim == 8
    r = train(
        store,
        tmp_path / "l",
        TrainConfig(**{**FAST, "epochs": 2}, fusion="late", model="gru"),
        SMALL,
        progress=False,
    )
    assert load_checkpoint(r.checkpoint).model_config.fusion == "late"
    with pytest.raises(TrainError, match="late fusion"):
        train(
            store,
            tmp_path / "x",
            TrainConfig(**FAST, modality="video", fusion="late"),
            SMALL,
            progress=False,
        )


def test_adam_steps_all_parameters_at_once_and_as_the_reference_loop_does():
    """The fused kernel (one call for every tensor) takes the steps torch's per-tensor loop takes."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv1d(8, 16, 3), torch.nn.ReLU(), torch.nn.Conv1d(16, 4, 1))
    b = torch.nn.Sequential(torch.nn.Conv1d(8, 16, 3), torch.nn.ReLU(), torch.nn.Conv1d(16, 4, 1))
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    fused = adam(a.parameters(), 1e-2, 1e-4, torch.device("cpu"))
    loop = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-4, foreach=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    x = torch.randn(5, 8, 20)
    for _ in range(10):
        for model, opt in ((a, fused), (b, loop)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q, p0 in zip(a.parameters(), b.parameters(), start, strict=True):
        assert (p - p0).abs().max() > 1e-3  # ten steps of 1e-2 moved every tensor
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_stage_loss_ignores_padding():
    logits = torch.randn(2, 3, 4, 5)
    y = torch.randint(0, 5, (3, 4))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[:, 2:] = False
    y_pad = y.clone()
    y_pad[~mask] = -100
    noisy = logits.clone()
    noisy[:, ~mask] = 100.0
    cfg = TrainConfig()
    assert float(stage_loss(logits, y_pad, mask, cfg)) == pytest.approx(
        float(stage_loss(noisy, y_pad, mask, cfg))
    )


def test_streaming_training_equals_in_memory(store, tmp_path):
    """Windows read batch by batch from the store give the in-memory path's training exactly."""
    cfg = TrainConfig(**{**FAST, "epochs": 6})
    streamed = train(store, tmp_path / "stream", cfg, model_overrides=SMALL, progress=False)
    mem = train(store, tmp_path / "mem", cfg, model_overrides=SMALL, progress=False, in_memory=True)
    assert [h["train_loss"] for h in mem.history] == pytest.approx(
        [h["train_loss"] for h in streamed.history]
    )
    assert [h["val_step_acc"] for h in mem.history] == [h["val_step_acc"] for h in streamed.history]
    a, b = evaluate(streamed.checkpoint, store), evaluate(mem.checkpoint, store)
    assert a["accuracy"] == b["accuracy"] and a["accuracy"] > 1 / 3  # same, and better than chance


def test_streaming_windows_equal_in_memory_windows(store):
    from avarnet.data import StreamingWindowDataset, WindowDataset, load_clips
    from avarnet.train import fit_normalizer

    norm = fit_normalizer(store, "fused")
    entries = store.split("train")
    ref = WindowDataset(load_clips(store, entries, "fused", store.classes, norm), 10, 5)
    lazy = StreamingWindowDataset(store, entries, "fused", store.classes, norm, 10, 5)
    assert len(ref) == len(lazy) > len(entries)
    for i in range(len(ref)):
        r, s = ref[i], lazy[i]
        assert r["clip"] == s["clip"]
        for k in ("x", "mask", "y"):
            assert torch.equal(r[k], s[k])


def test_streaming_normaliser_equals_the_concatenated_fit(rng):
    from avarnet.data import Normalizer

    parts = [
        rng.normal(5.0, 2.0, (int(rng.integers(1, 30)), 6)).astype(np.float32) for _ in range(40)
    ]
    full, stream = Normalizer.fit(parts), Normalizer.fit_stream(iter(parts))
    np.testing.assert_allclose(stream.mean, full.mean, rtol=1e-6)
    np.testing.assert_allclose(stream.std, full.std, rtol=1e-6)


def test_live_windows_are_the_ones_a_stream_scores_with(store, tmp_path):
    """--windows live draws one window per segment, ending at it (short ones at the start of a
    clip included), supervised at its last step; the streaming and in-memory datasets agree and
    the choice is recorded in the checkpoint."""
    from avarnet.data import IGNORE_INDEX, StreamingWindowDataset, WindowDataset, load_clips
    from avarnet.train import fit_normalizer

    norm = fit_normalizer(store, "fused")
    entries = store.split("train")
    L = 4
    offline = StreamingWindowDataset(store, entries, "fused", store.classes, norm, L, 2)
    live = StreamingWindowDataset(store, entries, "fused", store.classes, norm, L, 2, "live")
    ref = WindowDataset(load_clips(store, entries, "fused", store.classes, norm), L, 2, "live")
    assert len(live) == len(ref) == sum(e.T for e in entries) != len(offline)
    first = entries[0]
    for t in range(first.T):  # the first clip's windows, in order
        item = live[t]
        n = min(L, t + 1)
        assert int(item["mask"].sum()) == n
        assert (item["y"][: n - 1] == IGNORE_INDEX).all() and item["y"][n - 1] != IGNORE_INDEX
        assert (item["y"][n:] == IGNORE_INDEX).all()
        rows = store.load_rows(first, max(0, t - L + 1), t + 1)
        x = norm(np.concatenate([rows["video"], rows["audio"]], axis=1))
        np.testing.assert_allclose(item["x"][:n].numpy(), x, atol=1e-6)
    for i in range(len(ref)):
        for k in ("x", "mask", "y"):
            assert torch.equal(ref[i][k], live[i][k])
    cfg = TrainConfig(**{**FAST, "epochs": 2, "seq_len": L, "windows": "live"})
    r = train(store, tmp_path / "live", cfg, model_overrides=SMALL, progress=False)
    assert load_checkpoint(r.checkpoint).train_config.windows == "live"
    assert evaluate(r.checkpoint, store)["train_windows"] == "live"
