"""Extraction end to end with tiny backbones: hostile inputs, resume after SIGKILL, random weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import launcher
import media_factory as mf
import numpy as np
import pytest
from conftest import backbone_args, extract_argv, predict_argv, small_dataset

from avarnet.cli import main
from avarnet.extract import segment_times
from avarnet.store import FeatureStore


def test_segment_times():
    t = segment_times(2.5, 1.0)
    np.testing.assert_allclose(t[:, 0], [0.5, 1.5, 2.499])
    assert segment_times(0.5, 1.0).shape == (1, 1)
    t3 = segment_times(2.0, 1.0, frames_per_segment=2)
    np.testing.assert_allclose(t3, [[0.25, 0.75], [1.25, 1.75]])
    assert np.all(np.diff(t3.ravel()) > 0)


def test_pretrained_folders_load_and_give_features_of_the_right_shape(tiny_store):
    store = FeatureStore.open(tiny_store)
    assert len(store.entries) == 9 and store.spec.weights == "pretrained"
    assert store.spec.video_dim == 48 and store.spec.audio_dim == 32 and store.spec.image_size == 64
    for e in store.entries:
        t = store.load(e)
        assert t["video"].shape == (e.T, 48) and t["audio"].shape == (e.T, 32)
        assert t["audio_mask"].all() and np.isfinite(t["video"]).all()
        assert e.T == int(np.ceil(e.duration - 1e-9))


@pytest.fixture(scope="module")
def hostile_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    good, bad = root / "normal", root / "crash"
    good.mkdir()
    bad.mkdir()
    for make in (
        mf.video_no_audio,
        mf.short_clip,
        mf.one_fps_clip,
        mf.hd_stereo_clip,
        mf.unicode_name_clip,
    ):
        make(good)
    for make in (
        mf.empty_file,
        mf.text_as_mp4,
        mf.random_bytes_mp4,
        mf.truncated_mp4,
        mf.audio_only,
    ):
        make(bad)
    return root


def test_hostile_inputs_never_crash_extraction(hostile_dataset, tiny_backbones, tmp_path, capsys):
    feats = tmp_path / "feats"
    code = main(
        ["-q", "extract", str(hostile_dataset), "--out", str(feats), *backbone_args(tiny_backbones)]
    )
    out = capsys.readouterr()
    assert code == 1  # some inputs failed
    store = FeatureStore.open(feats)
    assert sorted(e.source.split("/")[0] for e in store.entries) == ["normal"] * 5
    assert len(store.failures) == 5 and all(f["path"].startswith("crash/") for f in store.failures)
    failed_lines = [ln for ln in out.out.splitlines() if ln.strip().startswith("failed:")]
    assert len(failed_lines) == 5 and "Traceback" not in out.err + out.out
    for f in store.failures:  # each failure is printed once, on stdout or stderr
        said = [ln for ln in (out.out + out.err).splitlines() if f["path"] in ln]
        assert len(said) == 1, said
    by_name = {Path(e.source).name: e for e in store.entries}
    silent = [e for e in store.entries if not e.has_audio]
    assert len(silent) == 1 and not store.load(silent[0])["audio_mask"].any()
    assert any("ünïcödé" in name for name in by_name)
    short = min(store.entries, key=lambda e: e.duration)
    assert short.duration == pytest.approx(0.5, abs=0.1) and short.T == 1
    hd = max(store.entries, key=lambda e: e.fps * 0 + (1 if "hd" in e.source else 0))
    assert store.load(hd)["audio_mask"].all()
    # a second run retries only the failures and skips the rest
    assert (
        main(
            [
                "-q",
                "extract",
                str(hostile_dataset),
                "--out",
                str(feats),
                *backbone_args(tiny_backbones),
            ]
        )
        == 1
    )
    assert "already done 5" in capsys.readouterr().out


def _finished(feats: Path) -> int:
    return len(
        [p for p in (feats / "features").rglob("*.safetensors") if not p.name.startswith(".")]
    )


@pytest.mark.slow
def test_sigkill_mid_extraction_then_resume(tiny_backbones, tmp_path):
    data = tmp_path / "data"
    small_dataset(
        data, ("abuse", "crash", "normal"), clips_per_class=4, seed=3, duration=(3.0, 4.0)
    )
    feats = tmp_path / "feats"
    cmd = [
        sys.executable,
        "-m",
        "avarnet",
        "-q",
        "extract",
        str(data),
        "--out",
        str(feats),
        *backbone_args(tiny_backbones),
    ]
    proc = launcher.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (feats / "features").exists() and _finished(feats) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _finished(feats)
    assert 3 <= done_before < 12
    res = launcher.run(cmd, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"already done {done_before}," in res.stdout
    store = FeatureStore.open(feats)
    assert len(store.entries) == 12
    assert not list((feats / "features").rglob(".tmp-*"))
    for e in store.entries:
        assert store.load(e)["video"].shape[0] == e.T


def test_random_weights_extract_train_predict(tiny_backbones, tiny_dataset, tmp_path, capsys):
    feats, run, pred = tmp_path / "feats", tmp_path / "run", tmp_path / "pred"
    assert main(extract_argv(tiny_backbones, tiny_dataset, feats, "--weights", "random")) == 0
    store = FeatureStore.open(feats)
    assert (
        store.spec.weights == "random" and store.spec.random_init.get("calibration_frames", 0) > 0
    )
    assert store.load_encoder_state()
    v = np.concatenate([store.load(e)["video"] for e in store.entries])
    assert np.abs(v).max() > 1e-3 and v.std(0).mean() > 1e-4  # random weights still see
    assert (
        main(["-q", "train", str(feats), "--out", str(run), "--epochs", "2", "--device", "cpu"])
        == 0
    )
    video = Path(store.info["data_root"]) / store.split("test")[0].source
    assert main(predict_argv(str(video), str(run / "best.ckpt"), str(pred), "--device", "cpu")) == 0
    import json

    p = json.loads((pred / "prediction.json").read_text())
    assert set(p) >= {"video", "label", "probabilities", "segments"}
    assert len(p["segments"]) == store.split("test")[0].T
    seg = p["segments"][0]
    assert set(seg) >= {"start", "end", "label", "anomaly_score", "probabilities"}
    assert seg["anomaly_score"] == pytest.approx(1 - seg["probabilities"]["normal"], abs=1e-6)
    assert (pred / "timeline.png").stat().st_size > 1000
    # the stored features and a fresh extraction through the checkpoint agree (same encoder rebuilt)
    from avarnet.checkpoint import load_checkpoint
    from avarnet.extract import Extractor

    ck = load_checkpoint(run / "best.ckpt")
    again, _ = Extractor.from_spec(ck.spec, "cpu", ck.encoder_state)(video)
    np.testing.assert_allclose(
        again["video"], store.load(store.split("test")[0])["video"], atol=1e-4
    )


def test_missing_pretrained_weights_one_clear_line(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(
        [
            "-q",
            "extract",
            str(tiny_dataset),
            "--out",
            str(tmp_path / "f"),
            "--video-backbone",
            "no-such-org/no-model",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "--weights random" in err[0] and "Traceback" not in err[0]


def test_every_engine_takes_one_options_object_and_refuses_unknown_settings(tmp_path):
    """ExtractOptions: keyword settings replace its fields by name; unknown names and bad values are
    one-line input errors before anything is read or written, in the local and the Ray engine."""
    from avarnet.apps.extract_ray import extract_dataset_ray
    from avarnet.errors import InvalidArgumentError
    from avarnet.extract import ExtractOptions, extract_dataset

    base = ExtractOptions(weights="random", workers=0, seed=3)
    o = ExtractOptions.of(base, precision="bf16", segment_seconds=0.5)
    assert (o.weights, o.workers, o.seed, o.precision, o.segment_seconds) == (
        "random", 0, 3, "bf16", 0.5,
    )  # fmt: skip
    assert ExtractOptions.of() == ExtractOptions()
    for bad, words in (
        ({"workers": -1}, "workers must be >= 0"),
        ({"precision": "fp64"}, "precision must be one of fp32, bf16, fp16"),
        ({"audio_mode": "live"}, "audio_mode must be one of chunked, causal"),
    ):
        with pytest.raises(InvalidArgumentError, match=words):
            ExtractOptions.of(**bad)
    out = tmp_path / "o"
    with pytest.raises(InvalidArgumentError, match="unexpected keyword argument 'engine'"):
        extract_dataset(tmp_path, out, base, engine="ray")
    with pytest.raises(InvalidArgumentError, match="workers"):
        extract_dataset_ray(tmp_path, out, settings=base)  # the Ray engine decodes in Ray tasks
    assert not out.exists()


def test_decoded_pieces_are_typed_messages_in_order(tmp_path):
    """A decoding worker's pieces: VideoInfo, Frames covering the T * k frames in order, AudioChunks
    with rising offsets, then End counting what was sent."""
    from avarnet.decode import AudioChunk, DecodePlan, End, Frames, VideoInfo, decode_pieces

    path = mf.clip(tmp_path / "c.mp4", seconds=3.0)
    plan = DecodePlan(1.0, 12, 32, 1.0, 16_000)  # 36 frames: two Frames pieces
    pieces = list(decode_pieces(str(path), plan))
    info, *frames, end = [p for p in pieces if not isinstance(p, AudioChunk)]
    chunks = [p for p in pieces if isinstance(p, AudioChunk)]
    assert isinstance(info, VideoInfo) and info.T == 3 and isinstance(end, End)
    assert all(isinstance(f, Frames) for f in frames) and len(frames) == 2
    assert [f.start for f in frames] == [0, len(frames[0].frames)]
    assert end.frames == sum(len(f.frames) for f in frames) == 36
    assert end.chunks == len(chunks) >= 3 and [c.index for c in chunks] == list(range(len(chunks)))
    assert [round(c.offset, 3) for c in chunks[:3]] == [0.0, 1.0, 2.0]  # 1-s chunks
    assert pieces.index(chunks[0]) > pieces.index(frames[-1])
