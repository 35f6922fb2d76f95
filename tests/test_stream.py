"""Streaming: segment cutting, StreamingPredictor, `stream` == `predict --causal`, sources that die, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import launcher
import media_factory as mf
import numpy as np
import pytest
import torch
from conftest import (
    TINY_CLASSES,
    TINY_SEQ_LEN,
    cli,
    make_tiny_extractor,
    read_jsonl,
    tiny_checkpoint,
    write_event_clip,
)

from avarnet import media
from avarnet.cli import main
from avarnet.cli.stream_view import LiveView
from avarnet.config import FeatureSpec
from avarnet.extract import Extractor, segment_times
from avarnet.predict import model_input, step_probabilities
from avarnet.stream import (
    SegmentEncoder,
    SegmentQueue,
    SegmentSource,
    StreamingPredictor,
    StreamOptions,
    causal_features,
    run_stream,
)

SEQ_LEN = TINY_SEQ_LEN
CLASSES = list(TINY_CLASSES)
tiny_extractor = make_tiny_extractor


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def extractor(tiny_backbones) -> Extractor:
    return tiny_extractor(tiny_backbones)


@pytest.fixture(scope="module")
def ckpt_path(tiny_ckpt_path) -> Path:
    return tiny_ckpt_path  # the same untrained model as tiny_checkpoint(extractor)


@pytest.fixture(scope="module")
def event_clip(tmp_path_factory) -> Path:
    return write_event_clip(tmp_path_factory.mktemp("clips") / "event.mp4", 7.0)


# ------------------------------------------------------------------------------ segment cutting


CLIPS = {
    "3.5s_10fps": lambda d: mf.clip(d / "a.mp4", seconds=3.5, fps=10.0),
    "48k_stereo_25fps": lambda d: mf.clip(
        d / "b.mp4", seconds=2.0, fps=25.0, sample_rate=48_000, channels=2
    ),
    "one_fps": mf.one_fps_clip,
    "short": mf.short_clip,
    "silent": mf.video_no_audio,
}


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_segments_carry_extracts_frames_and_audio(name, k, tmp_path):
    path = CLIPS[name](tmp_path)
    spec = FeatureSpec(resize_shortest_edge=40, frames_per_segment=k)
    source = SegmentSource(path, spec)
    segments = list(source)
    info = media.probe(path)
    times = segment_times(info.duration, spec.segment_seconds, k)
    assert [s.index for s in segments] == list(range(len(times)))
    expected = list(media.read_frames(path, times.ravel().tolist(), 40, info=info))
    got = [f for s in segments for f in s.frames]
    assert len(got) == len(expected) and all(
        np.array_equal(a, b) for a, b in zip(got, expected, strict=True)
    )
    track = media.load_audio(path, info=info)
    audio = np.concatenate([s.audio for s in segments])
    assert audio.size == min(track.size, round(len(times) * spec.segment_seconds * 16_000))
    np.testing.assert_array_equal(audio, track[: audio.size])
    assert all(s.audio.size == 16_000 for s in segments[:-1]) or not info.has_audio
    assert segments[-1].end == pytest.approx(info.duration, abs=1e-6)
    assert source.complete and source.end_reason.startswith("end of file")


def test_cutter_memory_stays_bounded_when_video_stalls():
    import av

    from avarnet.stream import MAX_AUDIO_HELD_S, SegmentCutter

    cutter = SegmentCutter(1.0, 1, 16_000, None, has_audio=True, fps=10.0)
    frame = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="rgb24")
    assert list(cutter.add_frame(frame, 0.0)) == []
    second = np.zeros(16_000, np.float32)
    for _ in range(100):  # 100 s of audio, no more video
        assert cutter.add_audio(second) == []
    assert cutter.audio_held <= MAX_AUDIO_HELD_S * 16_000
    segments = list(cutter.finish())
    assert len(segments) == 1 and segments[0].frames.shape == (1, 8, 8, 3)


def test_batched_audio_windows_equal_one_at_a_time(extractor):
    rng = np.random.default_rng(0)
    windows = [
        rng.normal(0, 0.1, n).astype(np.float32) for n in (32_000, 16_000, 32_000, 300, 32_000)
    ]
    batched = extractor.audio.encode_batch(windows)
    for w, got in zip(windows, batched, strict=True):
        np.testing.assert_allclose(got, extractor.audio.encode_chunk(w), atol=1e-5)


def test_segment_queue_drops_oldest_or_blocks():
    q = SegmentQueue(capacity=2, drop_oldest=True)
    for i in range(5):
        assert q.put(i)
    assert q.dropped == 3 and q.get_batch(10, 0.01) == [3, 4] and q.high_water == 2
    assert q.get_batch(10, 0.01) == []
    q.close()
    assert q.get_batch(10, 0.01) is None

    blocking = SegmentQueue(capacity=1, drop_oldest=False)
    blocking.put("a")
    t = threading.Thread(target=blocking.put, args=("b",))
    t.start()
    time.sleep(0.2)
    assert t.is_alive()  # waits for room instead of dropping
    assert blocking.get_batch(1, 0.1) == ["a"]
    t.join(timeout=2)
    assert not t.is_alive() and blocking.get_batch(5, 0.1) == ["b"] and blocking.dropped == 0


# ------------------------------------------------------------------------------ predictor


def test_streaming_predictor_equals_causal_step_probabilities(extractor):
    ckpt = tiny_checkpoint(extractor)
    rng = np.random.default_rng(1)
    T, dv, da = 9, extractor.spec.video_dim, extractor.spec.audio_dim
    tensors = {
        "video": rng.normal(size=(T, dv)).astype(np.float32),
        "audio": rng.normal(size=(T, da)).astype(np.float32),
        "audio_mask": np.array([True, True, False, True, True, True, False, True, True]),
    }
    tensors["audio"][~tensors["audio_mask"]] = 0
    expected = step_probabilities(
        ckpt.model, model_input(ckpt, tensors), SEQ_LEN, causal=True
    )  # (T, C)
    predictor = StreamingPredictor(ckpt)
    for t in range(T):
        pred = predictor.push_features(
            tensors["video"][t], tensors["audio"][t], tensors["audio_mask"][t]
        )
        assert pred["segment"] == t and pred["start"] == t and pred["end"] == t + 1
        np.testing.assert_allclose(list(pred["probabilities"].values()), expected[t], atol=1e-5)
        assert pred["anomaly_score"] == pytest.approx(
            1 - expected[t][CLASSES.index("normal")], abs=1e-5
        )
    non_causal = step_probabilities(ckpt.model, model_input(ckpt, tensors), SEQ_LEN, causal=False)
    assert not np.allclose(
        non_causal, expected, atol=1e-4
    )  # the look-ahead matters, so the test can fail
    predictor.reset()
    again = predictor.push_features(tensors["video"][0], tensors["audio"][0], True)
    np.testing.assert_allclose(list(again["probabilities"].values()), expected[0], atol=1e-5)


def test_push_raw_segments_equals_features_of_the_whole_file(extractor, event_clip):
    ckpt = tiny_checkpoint(extractor)
    feats, end = causal_features(event_clip, extractor)
    assert end == pytest.approx(7.0) and feats["video"].shape == (7, extractor.spec.video_dim)
    expected = step_probabilities(ckpt.model, model_input(ckpt, feats), SEQ_LEN, causal=True)
    predictor = StreamingPredictor(ckpt, extractor)
    for t, seg in enumerate(SegmentSource(event_clip, extractor.spec)):
        pred = predictor.push(seg.frames, seg.audio)
        np.testing.assert_allclose(list(pred["probabilities"].values()), expected[t], atol=1e-4)


def test_stream_features_video_equal_extract_audio_close(extractor, event_clip):
    causal, _ = causal_features(event_clip, extractor, audio_context_seconds=1.0)
    full, _ = extractor(event_clip)
    np.testing.assert_allclose(causal["video"], full["video"], atol=1e-5)
    assert causal["audio_mask"].all()
    cos = (
        (causal["audio"] * full["audio"]).sum(1)
        / np.linalg.norm(causal["audio"], axis=1)
        / np.linalg.norm(full["audio"], axis=1)
    )
    assert (
        cos.mean() > 0.95
    )  # per-segment encoding with 1 s of left context stays close to chunked extraction
    segments = list(SegmentSource(event_clip, extractor.spec))
    no_context = SegmentEncoder(extractor, audio_context_seconds=0.0).encode(segments)
    np.testing.assert_allclose(no_context["video"], causal["video"], atol=1e-6)
    np.testing.assert_allclose(
        no_context["audio"][0], causal["audio"][0], atol=1e-5
    )  # nothing before segment 0
    assert not np.allclose(
        no_context["audio"][1:], causal["audio"][1:], atol=1e-4
    )  # the context is used


# ------------------------------------------------------------------------------ CLI


def test_stream_jsonl_equals_predict_causal(ckpt_path, event_clip, tmp_path, capsys):
    out, pred_dir = tmp_path / "stream.jsonl", tmp_path / "pred"
    assert (
        main(
            cli(
                "stream",
                str(event_clip),
                "--checkpoint",
                str(ckpt_path),
                "--jsonl",
                str(out),
                "--threshold",
                "0.0",
                "--min-segments",
                "2",
            )
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "stream ended: end of file at 7.0 s" in printed and "latency p50" in printed
    records = read_jsonl(out)
    segments = [r for r in records if r["type"] == "segment"]
    assert (
        main(
            cli(
                "predict",
                str(event_clip),
                "--checkpoint",
                str(ckpt_path),
                "--out",
                str(pred_dir),
                "--causal",
            )
        )
        == 0
    )
    prediction = json.loads((pred_dir / "prediction.json").read_text())
    assert prediction["causal"] is True and len(segments) == len(prediction["segments"]) == 7
    for s, p in zip(segments, prediction["segments"], strict=True):
        assert (s["start"], s["end"]) == (p["start"], p["end"])
        assert s["anomaly_score"] == pytest.approx(p["anomaly_score"], abs=1e-3)
        assert s["label"] == p["label"] and set(s["top"]) <= set(CLASSES) and s["latency_ms"] >= 0
    scores = np.array([s["anomaly_score"] for s in segments])
    assert scores.std() > 1e-4  # the clip's event moves the score, so agreement is not trivial
    events = [r for r in records if r["type"] == "event"]
    assert [e["state"] for e in events] == [
        "open",
        "closed",
    ]  # threshold 0: one event over the whole clip
    summary = records[-1]
    assert (
        summary["type"] == "summary"
        and summary["complete"]
        and summary["segments"] == 7
        and summary["dropped"] == 0
    )
    assert summary["events"] == [events[-1]] and events[-1]["end"] == pytest.approx(7.0)


def test_truncated_file_ends_with_a_message_and_a_summary(ckpt_path, tmp_path, capsys):
    broken = mf.truncated_tail_mp4(tmp_path)
    out = tmp_path / "s.jsonl"
    t0 = time.monotonic()
    code = main(cli("stream", str(broken), "--checkpoint", str(ckpt_path), "--jsonl", str(out)))
    printed = capsys.readouterr().out
    assert code == 1 and time.monotonic() - t0 < 60
    assert "stream ended: file ended early" in printed and "truncated" in printed
    records = read_jsonl(out)
    assert records[-1]["type"] == "summary" and not records[-1]["complete"]
    assert 1 <= records[-1]["segments"] < 4


class _ClipServer(BaseHTTPRequestHandler):
    """Serves the clip at /full.mp4; /cut.mp4 sends half of it and drops the connection."""

    def do_GET(self):  # noqa: N802
        data = self.server.data
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data if self.path == "/full.mp4" else data[: len(data) // 2])
        self.wfile.flush()
        self.connection.shutdown(2)

    def log_message(self, *args):
        pass


@pytest.fixture
def clip_server(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClipServer)
    server.data = mf.clip(tmp_path / "served.mp4", seconds=3.0, faststart=True).read_bytes()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_source_and_a_dropped_connection(ckpt_path, clip_server, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert (
        main(
            cli(
                "stream",
                f"{clip_server}/full.mp4",
                "--checkpoint",
                str(ckpt_path),
                "--jsonl",
                str(out),
                "--realtime",
            )
        )
        == 0
    )
    full = read_jsonl(out)[-1]
    assert full["complete"] and full["segments"] == 3 and full["lag_s"] is not None
    code = main(
        cli("stream", f"{clip_server}/cut.mp4", "--checkpoint", str(ckpt_path), "--jsonl", str(out))
    )
    assert code == 1
    assert "source broke off" in capsys.readouterr().out
    cut = read_jsonl(out)[-1]
    assert cut["type"] == "summary" and 1 <= cut["segments"] < 3 and not cut["complete"]


def test_unreachable_source_is_one_clear_line(ckpt_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(cli("stream", f"http://127.0.0.1:{port}/cam", "--checkpoint", str(ckpt_path)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot open" in err[0] and "Traceback" not in err[0]


def test_slow_consumer_on_a_live_pace_drops_instead_of_growing(tiny_backbones, tmp_path):
    extractor = tiny_extractor(tiny_backbones, segment_seconds=0.25)
    ckpt = tiny_checkpoint(extractor)
    clip = mf.clip(tmp_path / "c.mp4", seconds=1.5, fps=20.0)
    records: list[dict] = []

    def slow_emit(record: dict) -> None:
        records.append(record)
        if record["type"] == "segment":
            time.sleep(0.6)  # far slower than one 0.25-s segment per 0.25 s

    summary = run_stream(
        clip, ckpt, extractor, slow_emit, StreamOptions(realtime=True, queue_segments=2)
    )
    assert summary.dropped > 0 and summary.queue_high_water <= 2
    assert summary.segments + summary.dropped == 6 and summary.complete
    lags = [r["lag_s"] for r in records if r["type"] == "segment"]
    assert lags[-1] > lags[0]  # the consumer falls behind, and says so


@pytest.mark.slow
def test_ctrl_c_flushes_closes_events_and_summarises(ckpt_path, event_clip, tmp_path):
    out = tmp_path / "s.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "avarnet",
        *cli(
            "stream",
            str(event_clip),
            "--checkpoint",
            str(ckpt_path),
            "--jsonl",
            str(out),
            "--realtime",
            "--threshold",
            "0.0",
            "--min-segments",
            "1",
        ),
    ]
    proc = launcher.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (
            out.exists()
            and sum(1 for line in out.read_text().splitlines() if '"segment"' in line) >= 2
        ):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the stream ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert (
        "stopping" in stderr and "stream ended: stopped at" in stdout and "Traceback" not in stderr
    )
    records = read_jsonl(out)
    summary = records[-1]
    assert summary["type"] == "summary" and summary["complete"] and summary["segments"] < 7
    assert [r["state"] for r in records if r["type"] == "event"] == ["open", "closed"]
    assert summary["events"][0]["closed_by"] == "end of stream"
    assert all(r["lag_s"] is not None for r in records if r["type"] == "segment")


def test_live_view_lines():
    import io

    buf = io.StringIO()
    view = LiveView(buf, threshold=0.5)
    seg = {
        "type": "segment",
        "start": 65.0,
        "label": "crash",
        "anomaly_score": 0.75,
        "latency_ms": 120.0,
        "lag_s": 0.2,
    }
    view(
        {
            "type": "event",
            "state": "open",
            "id": 1,
            "start": 63.0,
            "end": None,
            "class": "crash",
            "peak_score": 0.8,
        }
    )
    view(seg)
    text = buf.getvalue()
    assert (
        "ALERT #1 opened: crash" in text
        and "00:01:05" in text
        and "█" * 15 in text
        and "0.75" in text
    )
    assert "120 ms" in text and "lag 0.2 s" in text


def test_faster_precisions_stay_close_to_fp32(extractor, tiny_backbones, event_clip):
    from avarnet.stream import autocast_dtype, quantize_audio_encoder

    ckpt = tiny_checkpoint(extractor)
    segments = list(SegmentSource(event_clip, extractor.spec))
    reference = [
        StreamingPredictor(ckpt, extractor).push(s.frames, s.audio)["anomaly_score"]
        for s in segments
    ]
    int8 = tiny_extractor(tiny_backbones)
    quantize_audio_encoder(int8.audio)
    bf16 = StreamingPredictor(
        ckpt, extractor, autocast_dtype=autocast_dtype("bf16", torch.device("cpu"))
    )
    for name, predictor in (("int8", StreamingPredictor(ckpt, int8)), ("bf16", bf16)):
        scores = [predictor.push(s.frames, s.audio)["anomaly_score"] for s in segments]
        assert np.abs(np.array(scores) - reference).max() < 0.05, name


def test_stream_posts_event_records_to_a_flaky_webhook(extractor, event_clip):
    from test_alerts import _FlakyHandler

    from avarnet.alerts import AlertRule, WebhookPoster

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    server.lock, server.requests, server.bodies, server.fail_first = threading.Lock(), 0, [], 2
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        poster = WebhookPoster(
            f"http://127.0.0.1:{server.server_address[1]}/", backoff_s=0.05, timeout_s=2.0
        )
        records: list[dict] = []
        options = StreamOptions(rule=AlertRule(threshold=0.0, min_segments=2))
        summary = run_stream(
            event_clip,
            tiny_checkpoint(extractor),
            extractor,
            records.append,
            options,
            webhook=poster,
        )
    finally:
        server.shutdown()
        server.server_close()
    events = [r for r in records if r["type"] == "event"]
    assert [e["state"] for e in events] == ["open", "closed"]
    assert server.bodies == events and server.requests == 4  # two failures, then both delivered
    assert summary.webhook["delivered"] == 2 and summary.webhook["failed"] == 0
