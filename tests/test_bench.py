"""The speed benchmark: tables, bench.json and the compute floor they are measured against."""

from __future__ import annotations

import json

import pytest

from avarnet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

FAKE_FLOOR = 123.0  # GFLOP/s


def test_bench_cli_writes_tables_and_json(tiny_backbones, tmp_path, monkeypatch, capsys):
    import avarnet.apps.bench

    monkeypatch.setattr(avarnet.apps.bench, "MIN_TIMED_S", 0.01)
    monkeypatch.setattr(avarnet.apps.bench, "measure_floor", lambda dtype, seconds=None: FAKE_FLOOR)
    vdir, adir = tiny_backbones
    out = tmp_path / "bench"
    args = [
        "-q",
        "bench",
        "--out",
        str(out),
        "--seconds",
        "3",
        "--size",
        "96x64",
        "--fps",
        "10",
        "--threads",
        "1",
        "--video-backbones",
        str(vdir),
        "--audio-backbone",
        str(adir),
        "--precisions",
        "fp32",
        "int8",
        "--runtimes",
        "torch",
        "onnx",
        "--audio-contexts",
        "0",
        "1",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    result = json.loads((out / "bench.json").read_text())
    rows = result["end_to_end"]
    assert [(r["runtime"], r["precision"], r["audio_context_s"]) for r in rows] == [
        (rt, p, c) for rt in ("torch", "onnx") for p in ("fp32", "int8") for c in (0.0, 1.0)
    ]
    e2e = rows[0]
    assert (
        e2e["segments"] == 3
        and e2e["realtime_factor"] > 0
        and e2e["latency_p95_ms"] >= e2e["latency_p50_ms"] > 0
    )
    assert result["floor"]["fp32_gflops"] == FAKE_FLOOR  # the floor measured, not made up
    assert rows[1]["gflop_per_segment"] > rows[0]["gflop_per_segment"] > 0  # look-back costs
    for r in rows:  # every row measures the floor again and states what it allows
        assert r["floor_gflops"] == FAKE_FLOOR and r["floor_dtype"] == "float32"
        allowed = FAKE_FLOOR / r["gflop_per_segment"]  # segments (of 1 s) per second
        assert r["floor_realtime_factor"] == pytest.approx(allowed, rel=0.01)
    onnx_fp32 = [r for r in rows if r["runtime"] == "onnx" and r["precision"] == "fp32"]
    assert all(r["cosine_audio_min"] > 0.999 and r["cosine_video_min"] > 0.999 for r in onnx_fp32)
    assert all(0 <= r["label_agreement"] <= 1 for r in rows)  # beside cosine, the decisions
    assert all(r["label_agreement"] == 1.0 for r in rows if r["precision"] == "fp32")
    assert {r["batch"] for r in result["video"]} == {1, 4} and result["decode"][
        "media_seconds"
    ] == pytest.approx(3.0)
    int8 = result["features"]["int8_vs_fp32_audio"]
    assert 0.9 < int8["mean"] <= 1.0001 and int8["min"] <= int8["mean"]
    printed = capsys.readouterr().out
    assert (
        "RTF % of floor" in printed
        and "Compute floor: fp32 matmul" in printed
        and "Paper (RTX 3090 Ti)" in printed
        and (out / "bench.md").exists()
    )


def test_floor_is_the_matmul_rate_over_the_time_it_took(monkeypatch):
    """Each matmul takes 10 ms of a fake clock: the floor is 2 N^3 FLOP / 10 ms, exactly."""
    import torch

    import avarnet.apps.bench as bench

    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    real_mm = torch.mm

    def mm(a, b):
        now[0] += 0.01
        return real_mm(a[:2, :2], b[:2, :2])

    monkeypatch.setattr(bench.torch, "mm", mm)
    monkeypatch.setattr(bench, "FLOOR_SIZE", 64)
    expected = 2 * 64**3 / 0.01 / 1e9
    assert bench.measure_floor(torch.float32, seconds=0.1) == pytest.approx(expected, rel=1e-9)


def test_segment_gflop_counts_frames_audio_with_look_back_and_one_window():
    """Linear stand-ins whose FLOPs are known by hand: 2 x inputs x outputs per row."""
    from types import SimpleNamespace

    import torch

    from avarnet.apps.bench import segment_gflop

    k, size, rate, seg, L, D = 2, 8, 100, 1.0, 5, 6
    cpu = torch.device("cpu")
    w_video, w_model = torch.ones(3 * size * size, 4), torch.ones(D, 3)

    def encode_chunk(samples):  # the encoders' own input paths, whatever their kind
        x = torch.from_numpy(samples)[None]
        return x @ torch.ones(x.shape[1], 2)

    video = SimpleNamespace(
        device=cpu,
        encode=lambda frames: torch.zeros(len(frames), 3 * size * size) @ w_video,
    )
    extractor = SimpleNamespace(
        spec=SimpleNamespace(frames_per_segment=k, image_size=size, segment_seconds=seg),
        video=video,
        audio=SimpleNamespace(sample_rate=rate, encode_chunk=encode_chunk),
    )
    ckpt = SimpleNamespace(
        train_config=SimpleNamespace(seq_len=L),
        model_config=SimpleNamespace(input_dim=D),
        model=lambda window, mask: window @ w_model,
    )
    for context in (0.0, 2.5):
        samples = round((seg + context) * rate)
        flop = 2 * k * (3 * size * size) * 4 + 2 * samples * 2 + 2 * L * D * 3
        assert segment_gflop(extractor, ckpt, context) == pytest.approx(flop / 1e9, rel=1e-12)
