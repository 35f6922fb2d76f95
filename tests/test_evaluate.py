"""Evaluation on a split of a feature store: metrics, dropped senses, refused combinations."""

import json

import numpy as np
import pytest
from feature_factory import make_store

from avarnet.checkpoint import load_checkpoint
from avarnet.evaluate import EvaluateError, blank_sense, evaluate, open_inputs, predict_clips
from avarnet.store import FeatureStore


def test_evaluate_metrics_contract(factory_store, trained, tmp_path):
    store = factory_store
    m = evaluate(trained.checkpoint, store, split="test", out=tmp_path, report=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("classes", "accuracy", "precision", "recall", "f1", "ap", "binary_ap",
                "per_class", "confusion_matrix", "n"):  # fmt: skip
        assert key in on_disk
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000 and m["dropped_sense"] is None
    assert not (tmp_path / "report.html").exists()  # the report page has tests of its own
    assert m["n"] == len(store.split("test")) == sum(map(sum, m["confusion_matrix"]))
    # the factory's classes are well separated when both senses are used
    assert m["accuracy"] >= 0.8
    hits = sum(p["label"] == p["predicted"] for p in m["predictions"])
    assert m["accuracy"] == pytest.approx(hits / m["n"])


def test_evaluate_with_a_sense_dropped_scores_without_it(factory_store, trained):
    """Each blanked sense changes the clip probabilities; the metrics say which one is gone."""
    ckpt = load_checkpoint(trained.checkpoint)
    _, _, full = predict_clips(ckpt, factory_store, "test")
    for sense in ("audio", "video"):
        _, _, probs = predict_clips(ckpt, factory_store, "test", drop=sense)
        assert np.abs(probs - full).max() > 1e-3, sense  # unchanged: exactly 0
    m = evaluate(ckpt, factory_store, drop="video")
    assert m["dropped_sense"] == "video" and m["n"] == len(full)


def test_blank_sense_zeroes_one_sense_and_needs_a_fused_model(trained):
    ckpt = load_checkpoint(trained.checkpoint)
    vd = ckpt.model_config.video_dim
    x = np.ones((5, ckpt.model_config.input_dim), np.float32)
    audio_gone, video_gone = blank_sense(x, "audio", ckpt), blank_sense(x, "video", ckpt)
    assert (audio_gone[:, :vd] == 1).all() and (audio_gone[:, vd:] == 0).all()
    assert (video_gone[:, :vd] == 0).all() and (video_gone[:, vd:] == 1).all()
    assert (x == 1).all()  # the input is left alone
    ckpt.train_config = ckpt.train_config.replace(modality="video")
    with pytest.raises(EvaluateError, match="fused"):
        blank_sense(x, "audio", ckpt)


def test_open_inputs_takes_paths_or_open_objects(factory_store, trained):
    ckpt, store = open_inputs(trained.checkpoint, factory_store.root, device="cpu")
    assert isinstance(store, FeatureStore) and store.root == factory_store.root
    again, same = open_inputs(ckpt, store)
    assert again is ckpt and same is store


def test_predict_clips_agrees_with_evaluate(factory_store, trained):
    m = evaluate(trained.checkpoint, factory_store, split="val")
    entries, y, probs = predict_clips(load_checkpoint(trained.checkpoint), factory_store, "val")
    assert [e.id for e in entries] == [p["id"] for p in m["predictions"]]
    assert probs.shape == (len(entries), 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert float((probs.argmax(1) == y).mean()) == pytest.approx(m["accuracy"])


def test_a_store_with_other_classes_or_an_empty_split_is_refused(trained, tmp_path):
    other = make_store(
        tmp_path / "other", classes=("abuse", "crash", "normal", "pain"), per_class=3
    )
    with pytest.raises(EvaluateError, match="classes"):
        evaluate(trained.checkpoint, other)
    same = make_store(tmp_path / "same", per_class=1)  # one clip per class, all in test
    with pytest.raises(EvaluateError, match="empty"):
        evaluate(trained.checkpoint, same, split="val")


@pytest.fixture(scope="module")
def causal_store(tiny_backbones, tiny_dataset, tmp_path_factory):
    """``tiny_dataset`` extracted with the features a stream computes (look-back 0)."""
    from conftest import extract_argv

    from avarnet.cli import main

    feats = tmp_path_factory.mktemp("causal") / "feats"
    argv = extract_argv(tiny_backbones, tiny_dataset, feats, "--workers", "0")
    assert main([*argv, "--audio-features", "causal", "--audio-context", "0"]) == 0
    return FeatureStore.open(feats)


def test_live_accuracy_is_what_predict_causal_gives(causal_store, tmp_path, one_thread):
    """metrics.json's live section scores each test clip as `predict --causal` does: the same
    per-segment probabilities, hence the same verdicts and accuracy."""
    from conftest import untrained_checkpoint

    from avarnet.checkpoint import save_checkpoint
    from avarnet.cli import main
    from avarnet.evaluate import score_clips

    ckpt_path = tmp_path / "c.ckpt"
    save_checkpoint(ckpt_path, untrained_checkpoint(causal_store.spec, seq_len=3, std=0.05))
    ckpt = load_checkpoint(ckpt_path)
    assert main(["-q", "evaluate", str(ckpt_path), str(causal_store.root), "--out",
                 str(tmp_path / "eval"), "--no-report", "--device", "cpu"]) == 0  # fmt: skip
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    live: list = []
    clips = score_clips(ckpt, causal_store, "test", live=live)
    root = causal_store.info["data_root"]
    hits, differs = [], False
    for clip, steps, row in zip(clips, live, m["live"]["predictions"], strict=True):
        out = tmp_path / "pred" / clip.entry.id
        video = f"{root}/{clip.entry.source}"
        assert main(["-q", "predict", video, "--checkpoint", str(ckpt_path), "--out", str(out),
                     "--causal", "--device", "cpu"]) == 0  # fmt: skip
        pred = json.loads((out / "prediction.json").read_text())
        got = np.array([[s["probabilities"][c] for c in ckpt.classes] for s in pred["segments"]])
        np.testing.assert_allclose(got, steps, atol=1e-4)
        differs |= bool(np.abs(steps - clip.steps).max() > 1e-3)  # live is not the offline score
        assert row["id"] == clip.entry.id and row["predicted"] == pred["label"]
        hits.append(pred["label"] == clip.entry.label)
    assert differs
    assert m["live"]["accuracy"] == pytest.approx(np.mean(hits))
    assert sum(map(sum, m["live"]["confusion_matrix"])) == len(hits) == m["n"]
