"""Which epoch train() keeps: the best validation accuracy, the loss breaking ties."""

import pytest
from conftest import FAST_TRAIN as FAST
from conftest import SMALL_MODEL as SMALL

import avarnet.train as train_module
from avarnet.checkpoint import load_checkpoint
from avarnet.config import TrainConfig
from avarnet.train import train


def scripted_validation(monkeypatch, rows):
    """evaluate_loss returns the scripted (loss, step accuracy) of each epoch in turn."""
    it = iter(rows)
    monkeypatch.setattr(train_module, "evaluate_loss", lambda *a, **k: next(it))


def test_rising_loss_with_rising_accuracy_keeps_the_accurate_epoch(
    factory_store, tmp_path, monkeypatch
):
    # validation clips from unseen scenes: the loss grows from epoch 1 while accuracy grows
    scripted_validation(monkeypatch, [(0.69, 0.50), (0.90, 0.70), (1.40, 0.80), (1.20, 0.80)])
    cfg = TrainConfig(**{**FAST, "epochs": 4})
    r = train(factory_store, tmp_path / "r", cfg, model_overrides=SMALL, progress=False)
    assert r.best_epoch == 4  # accuracy ties epoch 3; the lower loss wins
    assert r.best_val_loss == pytest.approx(1.20)
    assert load_checkpoint(r.checkpoint).extra["best_epoch"] == 4


def test_non_finite_loss_is_never_kept_and_patience_counts_the_key(
    factory_store, tmp_path, monkeypatch
):
    nan = float("nan")
    rows = [(nan, 0.9), (0.8, 0.6), (0.7, 0.6), (0.6, 0.5), (0.5, 0.5), (0.4, 0.9)]
    scripted_validation(monkeypatch, rows)
    cfg = TrainConfig(**{**FAST, "epochs": 6, "early_stop_patience": 2})
    r = train(factory_store, tmp_path / "r", cfg, model_overrides=SMALL, progress=False)
    assert r.best_epoch == 3 and len(r.history) == 5  # epochs 4, 5 do not improve: stopped
    assert r.best_val_loss == pytest.approx(0.7)


def test_improves_is_lexicographic_with_tolerance():
    from avarnet.train import improves

    assert improves((-0.8, 2.0), (-0.7, 1.0))
    assert improves((-0.8, 1.0), (-0.8, 2.0))
    assert not improves((-0.8, 2.0), (-0.8, 2.0 - 1e-9))
    assert not improves((-0.7, 0.1), (-0.8, 2.0))
