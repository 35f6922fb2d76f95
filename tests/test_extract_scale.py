"""The parallel extraction engine and concurrent writers: same store as the in-process path."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import launcher
import numpy as np
import pytest
from conftest import backbones, extract_argv

from avarnet.extract import extract_dataset
from avarnet.store import INDEX_FILE, FeatureStore

TOL = 1e-4


def assert_same_store(a: Path, b: Path, tol: float = TOL) -> None:
    """Same index entries, same failures, features within ``tol``."""
    sa, sb = FeatureStore.open(a), FeatureStore.open(b)
    assert [e.to_dict() for e in sa.entries] == [e.to_dict() for e in sb.entries]
    assert sorted(f["path"] for f in sa.failures) == sorted(f["path"] for f in sb.failures)
    assert sa.spec == sb.spec
    for e in sa.entries:
        ta, tb = sa.load(e), sb.load(e)
        assert set(ta) == set(tb)
        np.testing.assert_array_equal(ta["audio_mask"], tb["audio_mask"])
        for k in ("video", "audio"):
            assert ta[k].shape == tb[k].shape
            assert np.abs(ta[k] - tb[k]).max() <= tol, (e.source, k)


def index_ids(store: Path) -> list[str]:
    return [
        json.loads(line)["id"]
        for line in (store / INDEX_FILE).read_text().splitlines()
        if line.strip()
    ]


def test_parallel_engine_writes_the_in_process_store(
    mixed_dataset, tiny_backbones, in_process_store, tmp_path
):
    out = tmp_path / "feats"
    r = extract_dataset(mixed_dataset, out, workers=2, **backbones(tiny_backbones))
    assert r.done == 10 and r.skipped == 0
    assert sorted(f["path"] for f in r.failures) == sorted(
        f["path"] for f in FeatureStore.open(out).failures
    )
    assert_same_store(in_process_store, out)
    long = [e for e in FeatureStore.open(out).entries if e.source.startswith("pain/")]
    assert len(long) == 2 and all(e.T >= 11 for e in long)  # two full 10-s chunks batched together
    again = extract_dataset(mixed_dataset, out, workers=2, **backbones(tiny_backbones))
    assert again.done == 0 and again.skipped == 10 and len(again.failures) == 4
    assert len(index_ids(out)) == 10


def test_parallel_random_weights_match_in_process(tiny_dataset, tiny_backbones, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    extract_dataset(tiny_dataset, a, weights="random", workers=0, **backbones(tiny_backbones))
    extract_dataset(tiny_dataset, b, weights="random", workers=1, **backbones(tiny_backbones))
    assert_same_store(a, b)


def test_precision_is_recorded_and_refused_where_missing(tiny_dataset, tiny_backbones, tmp_path):
    from avarnet.config import ENCODER_PRECISIONS
    from avarnet.encoders import resolve_device
    from avarnet.runtime import supported_precisions

    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        extract_dataset(tiny_dataset, tmp_path / "x", precision="fp16", **backbones(tiny_backbones))
    assert not (tmp_path / "x").exists()
    if "bf16" not in supported_precisions(resolve_device("cpu"), ENCODER_PRECISIONS):
        pytest.skip("this CPU has no bf16")
    out = tmp_path / "bf16"
    extract_dataset(tiny_dataset, out, precision="bf16", workers=1, **backbones(tiny_backbones))
    store = FeatureStore.open(out)
    assert store.spec.precision == "bf16" and len(store.entries) == 9
    with pytest.raises(Exception, match="computed by torch bf16, not torch fp32"):
        extract_dataset(tiny_dataset, out, precision="fp32", workers=1, **backbones(tiny_backbones))


@pytest.mark.slow
def test_two_extract_processes_on_one_store(
    mixed_dataset, tiny_backbones, in_process_store, tmp_path
):
    out = tmp_path / "feats"
    cmd = [sys.executable, "-m", "avarnet",
           *extract_argv(tiny_backbones, mixed_dataset, out, "--workers", "1")]  # fmt: skip
    procs = [launcher.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs  # the hostile files fail in both
    ids = index_ids(out)
    assert len(ids) == len(set(ids)) == 10  # each video indexed once
    extracted = [int(o.split("extracted ")[1].split(",")[0]) for o, _ in outs]
    assert sum(extracted) == 10  # and extracted by one process only
    assert not list(out.rglob(".tmp-*"))
    assert_same_store(in_process_store, out)


def test_ray_engine_without_ray_names_the_extra(tiny_dataset, tmp_path, monkeypatch, capsys):
    from avarnet.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code = main(
        ["-q", "extract", str(tiny_dataset), "--out", str(tmp_path / "f"), "--engine", "ray"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "avarnet[ray]" in err[0]
    assert not (tmp_path / "f").exists()


def test_waiting_audio_chunks_stay_bounded_when_decoders_stay_ahead(
    tiny_dataset, tiny_backbones, tmp_path, monkeypatch
):
    """Each video's audio here has its own length, so no chunk finds another to share a batch with;
    with an encoder slower than the decoders, the queue never empties. The chunks waiting (and the
    unfinished videos they keep in memory) must still stay within one batch, not grow with the
    number of videos."""
    import torch

    import avarnet.extract as ex

    batch, waiting = ex.audio_batch(torch.device("cpu")), []
    slow_encode, flush = ex.encode_pixels, ex.ParallelExtraction._flush_audio

    def slow(*args, **kwargs):  # the encoder is the bottleneck, as on a CPU
        time.sleep(0.15)  # decoding one of these clips takes a few tens of ms
        return slow_encode(*args, **kwargs)

    def watched(self, all_groups):
        flush(self, all_groups)
        waiting.append(sum(map(len, self.audio_groups.values())))

    monkeypatch.setattr(ex, "encode_pixels", slow)
    monkeypatch.setattr(ex.ParallelExtraction, "_flush_audio", watched)
    r = extract_dataset(tiny_dataset, tmp_path / "f", workers=1, **backbones(tiny_backbones))
    assert r.done == 9
    assert 0 < max(waiting) < batch


def _session_members(sid: int) -> dict[int, str]:
    """pid -> command line of every process in session ``sid`` (fields of /proc/PID/stat)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(d.name)] = cmdline
    return found


def test_sigkill_of_extract_leaves_no_worker_behind(tiny_dataset, tiny_backbones, tmp_path):
    """`extract --workers 2` killed outright: its decoding workers (and whatever they keep alive)
    end within 5 s instead of waiting forever on their task queues."""
    cmd = [sys.executable, "-m", "avarnet"]
    cmd += extract_argv(tiny_backbones, tiny_dataset, tmp_path / "f", "--workers", "2")
    proc = launcher.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        workers: dict[int, str] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            workers = {p: c for p, c in _session_members(proc.pid).items() if p != proc.pid}
            if sum("multiprocessing" in c for c in workers.values()) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "extraction finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as the OOM killer or `kill -9` would
        proc.wait(10)
        deadline = time.monotonic() + 5
        left = _session_members(proc.pid)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = _session_members(proc.pid)
        assert not left, f"still running after the parent was killed: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _closed_port() -> int:
    with socket.socket() as s:  # a loopback port nothing listens on (once this socket is closed)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "address",
    ["::garbage::", "ray://", "ray://host:port", "127.0.0.1:{closed}", "ray://127.0.0.1:{closed}"],
)
def test_ray_engine_refuses_a_bad_or_unreachable_address_in_one_line(
    address, tiny_dataset, tiny_backbones, tmp_path, capsys
):
    pytest.importorskip("ray.data")
    from avarnet.cli import main

    out = tmp_path / "f"
    argv = extract_argv(tiny_backbones, tiny_dataset, out, "--engine", "ray")
    start = time.monotonic()
    code = main([*argv, "--address", address.format(closed=_closed_port())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Ray" in err[0], err
    assert time.monotonic() - start < 15 and not out.exists()


def test_a_dead_decoding_worker_fails_only_its_video_and_hands_the_rest_on(
    tiny_dataset, tiny_backbones, tmp_path, monkeypatch
):
    """The worker decoding a video is killed as its first piece arrives: that video fails with one
    line, the worker's other video goes (with its claim) to the worker started in its place, and
    every other video is written."""
    import avarnet.extract as ex
    from avarnet.decode import VideoInfo

    handle, killed = ex.ParallelExtraction._handle, []

    def kill_first(self, msg):
        if not killed and isinstance(msg.piece, VideoInfo):
            proc = self.procs[msg.wid][0]
            killed.append((msg.wid, len(self.assigned[msg.wid])))
            proc.kill()
            proc.join(10)
            self._check_workers()
        handle(self, msg)

    monkeypatch.setattr(ex.ParallelExtraction, "_handle", kill_first)
    out = tmp_path / "f"
    r = extract_dataset(tiny_dataset, out, workers=1, **backbones(tiny_backbones))
    assert killed == [(0, ex.TASKS_PER_WORKER)]  # one video in decoding, one waiting behind it
    assert [f["reason"] for f in r.failures] == ["the decoding process died (exit code -9)"]
    assert r.done == 8 and len(index_ids(out)) == 8
    assert not list((out / ".claims").glob("*.lock"))  # every claim released
