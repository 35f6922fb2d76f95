"""The motion-and-sound gate: still, silent segments skip both encoders and hold the last encoded
features; the refresh bound, gaps and resets; one definition for extract, stream and predict
--causal; old specs are ungated; bad values are one line."""

from __future__ import annotations

import json
from pathlib import Path

import media_factory as mf
import numpy as np
import pytest
from conftest import cli, error_lines, extract_argv, read_jsonl, tiny_checkpoint
from conftest import make_tiny_extractor as tiny_extractor
from test_schemas import errors

from avarnet.checkpoint import save_checkpoint
from avarnet.cli import main
from avarnet.config import FeatureSpec
from avarnet.errors import InvalidArgumentError
from avarnet.features import SegmentEncoder
from avarnet.media import Segment
from avarnet.store import FeatureStore
from avarnet.synth import write_av

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread

GATE = {"motion": 0.02, "sound_dbfs": -50.0, "refresh": 10}
SR = 16_000
FPS = 10.0
STILL_S, BUSY_S = 4, 3  # the clip: a still, silent stretch, then a moving, loud one


@pytest.fixture(scope="module")
def extractor(tiny_backbones):
    return tiny_extractor(tiny_backbones)


def gated_extractor(extractor, **gate):
    spec = extractor.spec.replace(audio_mode="causal", gate={**GATE, **gate})
    return extractor.with_spec(spec)


class Counting:
    """Counts the frames and audio windows the encoders run on."""

    def __init__(self, extractor, monkeypatch):
        self.frames = self.windows = 0
        video, audio = extractor.video, extractor.audio
        encode, encode_batch = video.encode, audio.encode_batch

        def count_frames(frames, *args, **kwargs):
            self.frames += len(frames)
            return encode(frames, *args, **kwargs)

        def count_windows(windows, *args, **kwargs):
            self.windows += len(windows)
            return encode_batch(windows, *args, **kwargs)

        monkeypatch.setattr(video, "encode", count_frames)
        monkeypatch.setattr(audio, "encode_batch", count_windows)


def grey(level: int, size=(48, 64)) -> np.ndarray:
    return np.full((1, *size, 3), level, np.uint8)


def segment(index: int, level: int = 100, loud: bool = False) -> Segment:
    audio = mf.tone(1.0, SR) if loud else np.zeros(SR, np.float32)
    return Segment(index, float(index), index + 1.0, grey(level), audio)


def still_then_busy(path: Path) -> Path:
    """STILL_S s of a fixed grey frame in silence, then BUSY_S s of changing frames with a tone."""
    still = [np.full((48, 64, 3), 90, np.uint8)] * int(STILL_S * FPS)
    busy = list(mf.indexed_frames(int(BUSY_S * FPS)))
    audio = np.concatenate([np.zeros(STILL_S * SR, np.float32), mf.tone(BUSY_S, SR)])
    write_av(path, iter(still + busy), FPS, audio, SR)
    return path


# ------------------------------------------------------------------------- the gate itself


def test_measures_thumbnail_motion_and_level():
    from avarnet.gate import level_dbfs, motion, thumbnail

    assert thumbnail(grey(0)).shape == (36, 64)
    assert motion(thumbnail(grey(0)), thumbnail(grey(255))) == pytest.approx(1.0)
    assert motion(thumbnail(grey(100, (7, 5))), thumbnail(grey(100, (7, 5)))) == 0.0
    assert level_dbfs(np.zeros(0, np.float32)) == level_dbfs(np.zeros(9, np.float32)) == -np.inf
    assert level_dbfs(np.full(100, 0.1, np.float32)) == pytest.approx(-20.0)


def test_still_silent_segments_skip_both_encoders(extractor, monkeypatch):
    ex = gated_extractor(extractor)
    counting = Counting(ex, monkeypatch)
    enc = SegmentEncoder(ex)
    # 0 first: encoded; 1-2 still and silent: held; 3 loud; 4 moved; 5 still again: held
    segs = [segment(0), segment(1), segment(2), segment(3, loud=True), segment(4, 160)]
    segs.append(segment(5, 160))
    first, rest = enc.encode(segs[:2]), enc.encode(segs[2:])  # held across batches too
    out = {k: np.concatenate([first[k], rest[k]]) for k in first}
    assert out["gated"].tolist() == [False, True, True, False, False, True]
    assert counting.frames == enc.frames_encoded == 3 and counting.windows == 3
    assert (enc.segments_seen, enc.segments_gated) == (6, 3)
    for key in ("video", "audio", "audio_mask"):  # held: the last encoded segment's, exactly
        np.testing.assert_array_equal(out[key][1], out[key][0])
        np.testing.assert_array_equal(out[key][2], out[key][0])
        np.testing.assert_array_equal(out[key][5], out[key][4])
    assert np.abs(out["audio"][3] - out["audio"][0]).max() > 1e-3  # encoded: its own


def test_motion_is_measured_against_the_last_encoded_segment(extractor):
    enc = SegmentEncoder(gated_extractor(extractor, motion=0.05))
    # each step moves 0.02 of full scale (under the threshold), but drift adds up
    levels = [100 + round(0.02 * 255 * i) for i in range(6)]
    out = enc.encode([segment(i, lv) for i, lv in enumerate(levels)])
    assert out["gated"].tolist() == [False, True, True, False, True, True]


def test_refresh_bounds_the_segments_held_in_a_row(extractor):
    enc = SegmentEncoder(gated_extractor(extractor, refresh=3))
    out = enc.encode([segment(i) for i in range(10)])
    assert out["gated"].tolist() == [False, True, True, True] * 2 + [False, True]


def test_a_gap_or_a_reset_clears_the_gate(extractor):
    enc = SegmentEncoder(gated_extractor(extractor))
    out = enc.encode([segment(i) for i in (0, 1, 2, 5, 6)])
    assert out["gated"].tolist() == [False, True, True, False, True]
    enc.reset()
    assert enc.encode([segment(7)])["gated"].tolist() == [False]
    # per source: another key starts encoded, the first one goes on holding
    out = enc.encode([segment(8), segment(0)], keys=[None, "cam2"])
    assert out["gated"].tolist() == [True, False]


def test_audio_that_comes_or_goes_is_encoded(extractor):
    enc = SegmentEncoder(gated_extractor(extractor))
    mute = Segment(1, 1.0, 2.0, grey(100), np.zeros(0, np.float32))
    out = enc.encode([segment(0), mute, Segment(2, 2.0, 3.0, grey(100), np.zeros(0, np.float32))])
    assert out["gated"].tolist() == [False, False, True]
    assert out["audio_mask"].tolist() == [True, False, False]


# ------------------------------------------------------------------------- the spec


def test_old_specs_are_ungated_and_a_gate_needs_causal_audio(extractor):
    from avarnet.gate import Gate

    d = extractor.spec.replace(audio_mode="causal").to_dict()
    del d["gate"]
    old = FeatureSpec.from_dict(d)
    assert old.gate == {} and SegmentEncoder(extractor.with_spec(old)).gate is None
    assert "gated" not in SegmentEncoder(extractor.with_spec(old)).encode([segment(0)])
    spec = old.replace(gate={"motion": 0.02, "sound_dbfs": -50})
    assert spec.gate == {"motion": 0.02, "sound_dbfs": -50.0, "refresh": 10}
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert not spec.same_features(old)
    with pytest.raises(InvalidArgumentError, match="causal"):
        FeatureSpec(gate=GATE)
    for bad in ({"motion": 2, "sound_dbfs": -50}, {"motion": 0.1}, {"motion": 0.1, "x": 1}):
        with pytest.raises(InvalidArgumentError, match="^gate: "):
            FeatureSpec(audio_mode="causal", gate=bad)
    assert Gate.parse("motion=0.02,sound=-50,refresh=5").to_dict() == {**GATE, "refresh": 5}


def test_bad_gate_option_is_one_line_and_exit_2(tiny_backbones, tmp_path, capsys):
    data = tmp_path / "data"
    for bad, why in (
        ("motion=2,sound=-50", "motion must be"),
        ("motion=0.02", "sound threshold"),
        ("speed=1", "expected motion="),
        ("motion=0.02,sound=loud", "sound must be a number"),
    ):
        argv = extract_argv(tiny_backbones, data, tmp_path / "f", "--audio-features", "causal")
        assert main([*argv, "--gate", bad]) == 2
        lines = error_lines(capsys.readouterr().err, "extract")
        assert len(lines) == 1 and "--gate" in lines[0] and why in lines[0], lines
    assert (
        main([*extract_argv(tiny_backbones, data, tmp_path / "f"), "--gate", "motion=0.1,sound=-9"])
        == 2
    )
    lines = error_lines(capsys.readouterr().err, "extract")
    assert len(lines) == 1 and "--audio-features causal" in lines[0]
    assert not (tmp_path / "f").exists()


# ------------------------------------------------------------------------- live == offline


def test_extract_stream_and_predict_causal_apply_the_same_gate(
    tiny_backbones, extractor, tmp_path, monkeypatch, capsys
):
    data = tmp_path / "data"
    (data / "normal").mkdir(parents=True)
    still_then_busy(data / "normal" / "a.mp4")
    feats = tmp_path / "feats"
    gate = "motion=0.02,sound=-50"
    argv = extract_argv(tiny_backbones, data, feats, "--audio-features", "causal", "--gate", gate)
    assert main([*argv, "--workers", "0"]) == 0
    assert f"gated {STILL_S - 1} of {STILL_S + BUSY_S} segments" in capsys.readouterr().out
    store = FeatureStore.open(feats)
    assert store.spec.gate == GATE
    stored = store.load(store.entries[0])
    expected = [False] + [True] * (STILL_S - 1) + [False] * BUSY_S
    assert stored["gated"].tolist() == expected
    for key in ("video", "audio", "audio_mask"):  # held from segment 0
        assert (stored[key][1:STILL_S] == stored[key][0]).all(), key
    # a checkpoint trained on that store carries its gate: stream computes the same features
    ckpt = tiny_checkpoint(extractor)
    ckpt.spec = store.spec
    path = tmp_path / "gated.ckpt"
    save_checkpoint(path, ckpt)
    used: list[dict] = []
    original = SegmentEncoder.encode

    def recording(self, segments, keys=None):
        out = original(self, segments, keys)
        used.append(out)
        return out

    monkeypatch.setattr(SegmentEncoder, "encode", recording)
    jsonl = tmp_path / "s.jsonl"
    clip = data / "normal" / "a.mp4"
    assert main(cli("stream", str(clip), "--checkpoint", str(path), "--jsonl", str(jsonl))) == 0
    assert f"gated {STILL_S - 1} of {STILL_S + BUSY_S} segments" in capsys.readouterr().out
    live = {k: np.concatenate([u[k] for u in used]) for k in used[0]}
    for key in ("video", "audio"):
        assert np.abs(live[key] - stored[key]).max() <= 1e-4, key
    for key in ("audio_mask", "gated"):
        np.testing.assert_array_equal(live[key], stored[key])
    records = read_jsonl(jsonl)
    segments = [r for r in records if r["type"] == "segment"]
    assert [r["gated"] for r in segments] == expected
    assert records[-1]["gated"] == STILL_S - 1
    assert not [e for r in records for e in errors("stream-record.schema.json", r)]
    assert not errors("spec.schema.json", json.loads((feats / "spec.json").read_text()))
    # predict --causal: the same gate, the same scores
    pred_dir = tmp_path / "pred"
    argv = cli("predict", str(clip), "--checkpoint", str(path), "--out", str(pred_dir), "--causal")
    assert main(argv) == 0
    pred = json.loads((pred_dir / "prediction.json").read_text())
    assert pred["gated_segments"] == STILL_S - 1
    assert not errors("prediction.schema.json", pred)
    for s, p in zip(segments, pred["segments"], strict=True):
        assert s["anomaly_score"] == pytest.approx(p["anomaly_score"], abs=1e-4)


def test_serve_counts_gated_segments_per_camera(extractor):
    from avarnet.alerts import AlertRule
    from avarnet.apps.serve.engine import Engine

    ckpt = tiny_checkpoint(extractor)
    ckpt.spec = gated_extractor(extractor).spec  # serve runs the checkpoint's spec as it is
    seen: list[str] = []
    engine = Engine(ckpt, extractor, lambda kind, *rest: seen.append(kind))
    for name in ("still", "busy"):
        engine.add_camera(name, AlertRule(), ())
    engine.start()
    for i in range(4):  # one batch may mix cameras: each keeps its own reference
        engine.put("still", segment(i))
        engine.put("busy", segment(i, level=40 * i))
    engine.close()
    engine.join(10)
    assert seen.count("segment") == 8 and "fault" not in seen
    assert (engine.cameras["still"].gated, engine.cameras["busy"].gated) == (3, 0)
