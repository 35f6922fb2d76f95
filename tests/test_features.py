"""One feature definition: extract (causal spec) == stream, the live-vs-trained warning, gaps,
bounded stream statistics."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import TINY_CLASSES as CLASSES
from conftest import cli, read_jsonl, tiny_checkpoint
from conftest import make_tiny_extractor as tiny_extractor

from avarnet import features
from avarnet.checkpoint import save_checkpoint
from avarnet.cli import main
from avarnet.cli.stream_view import LiveView
from avarnet.config import DEFAULT_AUDIO_CONTEXT_S, FeatureSpec
from avarnet.features import SegmentEncoder, live_spec
from avarnet.media import SegmentSource
from avarnet.store import FeatureStore
from avarnet.stream import BoundedStats, StreamSummary

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def extractor(tiny_backbones):
    return tiny_extractor(tiny_backbones)


def _save(ckpt, path: Path) -> Path:
    save_checkpoint(path, ckpt)
    return path


def test_old_specs_without_the_field_are_chunked():
    d = FeatureSpec().to_dict()
    del d["audio_mode"], d["audio_context_seconds"]
    spec = FeatureSpec.from_dict(d)
    assert spec.audio_mode == "chunked"
    assert live_spec(spec).audio_mode == "causal"
    assert live_spec(spec, 0.0).audio_context_seconds == 0.0
    causal = spec.replace(audio_mode="causal", audio_context_seconds=1.0)
    assert live_spec(causal) is causal
    # a chunked spec has no look-back: stores compare equal whatever default a version used
    assert FeatureSpec(audio_context_seconds=1.0) == FeatureSpec() == spec
    with pytest.raises(ValueError):
        FeatureSpec(audio_mode="lookahead")
    with pytest.raises(ValueError):
        FeatureSpec(audio_context_seconds=-1.0)


def test_extract_causal_equals_what_stream_used(
    tiny_backbones, tiny_dataset, tmp_path, monkeypatch, extractor
):
    vdir, adir = tiny_backbones
    feats = tmp_path / "feats"
    code = main(
        cli(
            "extract",
            str(tiny_dataset),
            "--out",
            str(feats),
            "--video-backbone",
            str(vdir),
            "--audio-backbone",
            str(adir),
            "--audio-features",
            "causal",
            "--audio-context",
            "0.5",
        )
    )
    assert code == 0
    store = FeatureStore.open(feats)
    assert store.spec.audio_mode == "causal" and store.spec.audio_context_seconds == 0.5
    entry = store.entries[0]
    stored = store.load(entry)
    # a checkpoint trained on that store's spec: stream feeds it the same features
    ckpt = tiny_checkpoint(extractor)
    ckpt.spec = store.spec
    path = _save(ckpt, tmp_path / "causal.ckpt")
    used: list[dict] = []
    original = SegmentEncoder.encode

    def recording(self, segments):
        out = original(self, segments)
        used.append(out)
        return out

    monkeypatch.setattr(SegmentEncoder, "encode", recording)
    jsonl = tmp_path / "s.jsonl"
    clip = tiny_dataset / entry.source
    assert main(cli("stream", str(clip), "--checkpoint", str(path), "--jsonl", str(jsonl))) == 0
    live = {k: np.concatenate([u[k] for u in used]) for k in used[0]}
    segments = [r for r in read_jsonl(jsonl) if r["type"] == "segment"]
    assert len(segments) == entry.T == len(live["video"])
    for key in ("video", "audio"):
        assert np.abs(live[key] - stored[key]).max() <= 1e-4, key
    np.testing.assert_array_equal(live["audio_mask"], stored["audio_mask"])
    assert stored["audio_mask"].any() and np.abs(stored["audio"]).max() > 0
    # and it is not the chunked definition (which sees ahead)
    chunked, _ = extractor(clip)
    assert np.abs(chunked["audio"] - stored["audio"]).max() > 1e-3
    summary = read_jsonl(jsonl)[-1]
    assert summary["features"] is None  # trained on what it gets: nothing to report


def test_chunked_checkpoint_warns_once_and_strict_refuses(extractor, tmp_path, capsys, caplog):
    from avarnet.synth import render_clip, write_av

    frames, audio = render_clip("crash", np.random.default_rng(3), 5.0, 10.0, (96, 64), 16_000)
    clip = tmp_path / "c.mp4"
    write_av(clip, frames, 10.0, audio, 16_000)
    ckpt = _save(tiny_checkpoint(extractor), tmp_path / "chunked.ckpt")
    jsonl = tmp_path / "s.jsonl"
    assert main(cli("stream", str(clip), "--checkpoint", str(ckpt), "--jsonl", str(jsonl))) == 0
    warnings = [r.getMessage() for r in caplog.records if "LIVE FEATURES DIFFER" in r.getMessage()]
    assert len(warnings) == 2  # once at the start, once with the first minute's numbers
    assert (
        "chunked" in warnings[0]
        and f"causal (look-back {DEFAULT_AUDIO_CONTEXT_S:g} s)" in warnings[0]
    )
    assert "cosine" in warnings[1]
    summary = read_jsonl(jsonl)[-1]
    drift = summary["features"]
    assert drift["trained_on"].startswith("chunked") and drift["compared_seconds"] == 5.0
    assert 0 < drift["audio_cosine_min"] <= drift["audio_cosine_mean"] < 0.9999
    # the numbers are the real distance between the two feature definitions
    segs = list(SegmentSource(clip, extractor.spec))
    live = SegmentEncoder(extractor, DEFAULT_AUDIO_CONTEXT_S).encode(segs)["audio"]
    full, _ = extractor(clip)
    assert drift["audio_cosine_mean"] == pytest.approx(
        features.cosine(live, full["audio"]).mean(), abs=2e-3
    )
    capsys.readouterr()
    caplog.clear()
    code = main(cli("stream", str(clip), "--checkpoint", str(ckpt), "--strict"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "chunked" in err[0] and "--strict" in err[0]


def gap_clip(path: Path, gap_s: float = 300.0, with_audio: bool = True) -> Path:
    """4 video frames at 10 fps: two at t = 0, 0.1 s, two after a jump of ``gap_s``; 2 s of audio."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.codec_context.time_base = v.time_base = Fraction(1, 10)
        a = out.add_stream("aac", rate=16_000) if with_audio else None
        ticks = [0, 1, round(gap_s * 10), round(gap_s * 10) + 1]
        for i, pts in enumerate(ticks):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 + 40 * i, np.uint8), "rgb24")
            frame.pts = pts
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        if a is not None:
            samples = (0.3 * np.sin(np.arange(32_000) / 16_000 * 2 * np.pi * 440)).astype(
                np.float32
            )
            for start in range(0, samples.size, 1024):
                frame = av.AudioFrame.from_ndarray(
                    samples[None, start : start + 1024], "flt", "mono"
                )
                frame.sample_rate = 16_000
                frame.pts = start
                for packet in a.encode(frame):
                    out.mux(packet)
            for packet in a.encode():
                out.mux(packet)
    return path


@pytest.mark.parametrize("gap_s", [30.0, 300.0])
def test_a_timestamp_gap_builds_and_encodes_no_frames(extractor, tmp_path, gap_s):
    path = gap_clip(tmp_path / "gap.mp4", gap_s)
    source = SegmentSource(path, extractor.spec)
    encoder = SegmentEncoder(extractor, 0.5)
    emitted = 0
    held = []
    for seg in source:
        emitted += 1
        held.append(seg.frames.base if seg.frames.base is not None else seg.frames)
        encoder.encode([seg])
    assert emitted == math.ceil(
        gap_s + 0.2 - 1e-9
    )  # the timeline is kept: same segments as predict
    assert source.frames_built <= 4  # one RGB conversion per decoded frame, whatever the gap
    assert len({id(h) for h in held}) <= 4  # segments in the gap share their frame
    assert encoder.frames_encoded <= 4  # ... and its MobileViT vector


def test_predict_causal_on_a_gap_encodes_no_gap_frames(extractor, tmp_path, monkeypatch):
    path = gap_clip(tmp_path / "gap.mp4", 300.0)
    counts = []
    original = SegmentEncoder.encode

    def counting(self, segments):
        out = original(self, segments)
        counts.append(self.frames_encoded)
        return out

    monkeypatch.setattr(SegmentEncoder, "encode", counting)
    tensors, end = features.causal_features(path, extractor)
    assert len(tensors["video"]) == 301 and end == pytest.approx(300.2, abs=0.05)
    assert counts[-1] <= 4


def test_bounded_stats_stay_bounded_and_close():
    stats = BoundedStats(capacity=1000)
    values = np.random.default_rng(0).exponential(100.0, 200_000)
    for v in values:
        stats.add(v)
    stats.add(float("nan"))
    assert len(stats) == 1000 and stats.count == 200_000 and stats.non_finite == 1
    p = stats.percentiles()
    assert p["max"] == pytest.approx(values.max(), abs=0.1)
    assert p["p50"] == pytest.approx(np.percentile(values, 50), rel=0.1)
    assert p["p95"] == pytest.approx(np.percentile(values, 95), rel=0.1)
    small = BoundedStats()
    for v in (3.0, 1.0, 2.0):
        small.add(v)
    assert small.percentiles() == {"p50": 2.0, "p95": 2.9, "max": 3.0}  # exact below capacity


def test_stream_summary_keeps_bounded_events():
    from avarnet.stream import SUMMARY_EVENTS

    summary = StreamSummary("src")
    for i in range(SUMMARY_EVENTS * 3):
        summary.events.append({"id": i})
        summary.events_total += 1
    rec = summary.record()
    assert (
        len(rec["events"]) == SUMMARY_EVENTS and rec["events"][-1]["id"] == SUMMARY_EVENTS * 3 - 1
    )
    assert rec["events_total"] == SUMMARY_EVENTS * 3
    json.dumps(rec, allow_nan=False)


def test_live_view_survives_a_nan_score():
    import io

    view = LiveView(io.StringIO(), threshold=0.5)
    record = {
        "type": "segment",
        "start": 3.0,
        "label": CLASSES[0],
        "anomaly_score": float("nan"),
        "latency_ms": 10.0,
        "lag_s": None,
    }
    view(record)
    assert "n/a" in view.out.getvalue()
