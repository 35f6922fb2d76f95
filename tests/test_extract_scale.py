"""The parallel extraction engine and concurrent writers: same store as the in-process path."""

from __future__ import annotations

import json
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
    from avarnet.encoders import resolve_device
    from avarnet.extract import supported_precisions

    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        extract_dataset(tiny_dataset, tmp_path / "x", precision="fp16", **backbones(tiny_backbones))
    assert not (tmp_path / "x").exists()
    if "bf16" not in supported_precisions(resolve_device("cpu")):
        pytest.skip("this CPU has no bf16")
    out = tmp_path / "bf16"
    extract_dataset(tiny_dataset, out, precision="bf16", workers=1, **backbones(tiny_backbones))
    store = FeatureStore.open(out)
    assert store.spec.precision == "bf16" and len(store.entries) == 9
    with pytest.raises(Exception, match="different spec"):
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
