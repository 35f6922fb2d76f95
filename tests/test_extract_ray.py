"""The Ray engine on a local Ray cluster (2 CPUs): same store as the in-process path, survives a kill."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import test_extract_scale as scale
from test_extract_scale import assert_same_store, backbones, index_ids

from avarnet.extract_ray import RayOptions, extract_dataset_ray
from avarnet.store import FeatureStore
from avarnet.synth import synthesize_dataset

ray = pytest.importorskip("ray", reason="the Ray engine needs avarnet[ray]")
pytestmark = pytest.mark.slow
mixed_dataset = scale.mixed_dataset  # session fixtures shared with the local engine's tests
in_process_store = scale.in_process_store


@pytest.fixture(scope="module")
def cluster():
    for attempt in range(
        3
    ):  # Ray gives its raylet 30 s to start: a busy machine may need another go
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as e:
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_writes_the_in_process_store(
    cluster, mixed_dataset, tiny_backbones, in_process_store, tmp_path
):
    out = tmp_path / "feats"
    r = extract_dataset_ray(mixed_dataset, out, **backbones(tiny_backbones))
    assert r.done == 10 and len(r.failures) == 4
    assert_same_store(in_process_store, out)
    assert len(index_ids(out)) == 10
    again = extract_dataset_ray(mixed_dataset, out, **backbones(tiny_backbones))
    assert again.done == 0 and again.skipped == 10 and len(again.failures) == 4


def _pids_of(name: str) -> list[int]:
    """Processes whose command line names ``name`` (Ray titles worker processes by their actor class)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if name in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


@pytest.mark.slow
def test_killed_encoder_actor_mid_job(cluster, tiny_backbones, tmp_path):
    data = tmp_path / "data"
    synthesize_dataset(
        data,
        clips_per_class=8,
        seed=11,
        duration=(1.5, 2.5),
        size=(64, 48),
        classes=("crash", "normal"),
        progress=False,
    )
    out = tmp_path / "feats"
    kwargs = {**backbones(tiny_backbones), "options": RayOptions(videos_per_batch=1)}
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(r=extract_dataset_ray(data, out, **kwargs)))
    job.start()
    killed = None
    deadline = time.time() + 300
    while time.time() < deadline and job.is_alive():
        written = (
            len(list((out / "features").rglob("*.safetensors")))
            if (out / "features").exists()
            else 0
        )
        pids = _pids_of("AudioEncoderActor")
        if written >= 1 and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    assert killed is not None, "the job finished before an actor could be killed"
    done_at_kill = len(FeatureStore.open(out).entries)
    assert done_at_kill < 16
    job.join(600)
    assert not job.is_alive()
    r = result["r"]
    assert r.done + r.skipped == 16 and r.done >= 1 and not r.failures  # every video reported once
    store = FeatureStore.open(out)
    ids = index_ids(out)
    assert len(ids) == len(set(ids)) == 16
    for e in store.entries:
        t = store.load(e)
        assert t["video"].shape[0] == e.T and np.isfinite(t["audio"]).all()
    assert not list(out.rglob(".tmp-*"))
    again = extract_dataset_ray(data, out, **kwargs)
    assert again.done == 0 and again.skipped == 16  # nothing recomputed
