"""The speed benchmark: tables, bench.json and the compute floor they are measured against."""

from __future__ import annotations

import json

import pytest

from avarnet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_cli_writes_tables_and_json(tiny_backbones, tmp_path, monkeypatch, capsys):
    import avarnet.bench

    monkeypatch.setattr(avarnet.bench, "MIN_TIMED_S", 0.01)
    monkeypatch.setattr(avarnet.bench, "FLOOR_SECONDS", 0.05)
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
    assert result["floor"]["fp32_gflops"] > 0
    assert rows[1]["gflop_per_segment"] > rows[0]["gflop_per_segment"] > 0  # look-back costs
    for r in rows:
        assert r["floor_gflops"] > 0 and r["floor_realtime_factor"] == pytest.approx(
            r["floor_gflops"] / r["gflop_per_segment"], rel=0.02
        )
        assert r["percent_of_floor"] == pytest.approx(
            100 * r["realtime_factor"] / r["floor_realtime_factor"], rel=0.05, abs=0.2
        )
    onnx_fp32 = [r for r in rows if r["runtime"] == "onnx" and r["precision"] == "fp32"]
    assert all(r["cosine_audio_min"] > 0.999 and r["cosine_video_min"] > 0.999 for r in onnx_fp32)
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
