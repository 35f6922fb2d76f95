"""The Ray engine on a local Ray cluster (2 CPUs): same store as the in-process path, survives a kill."""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import backbones
from test_extract_scale import assert_same_store, index_ids

from avarnet.apps.extract_ray import RayOptions, extract_dataset_ray
from avarnet.store import FeatureStore

# Ray is imported where a cluster starts: of the test workers, only the one that runs it pays for it
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None, reason="the Ray engine needs avarnet[ray]"
    ),
]


@pytest.fixture(scope="module")
def cluster():
    import ray

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
def test_killed_encoder_actor_mid_job_still_writes_the_in_process_store(
    cluster, mixed_dataset, tiny_backbones, in_process_store, tmp_path
):
    """Hostile files mixed in, an encoder actor killed mid-job: the job completes, every video is
    indexed once, and the store equals the in-process one; a rerun recomputes nothing."""
    out = tmp_path / "feats"
    # whole CPUs per decoding and writing task: on the 2-CPU cluster Ray then starts two worker
    # processes for them rather than eight
    options = RayOptions(videos_per_batch=1, decode_cpus=1.0, write_cpus=1.0)
    kwargs = {**backbones(tiny_backbones), "options": options}
    result: dict = {}
    job = threading.Thread(
        target=lambda: result.update(r=extract_dataset_ray(mixed_dataset, out, **kwargs))
    )
    job.start()
    killed = None
    deadline = time.time() + 300
    while time.time() < deadline and job.is_alive():
        written = (
            len(list((out / "features").rglob("*.safetensors")))
            if (out / "features").exists()
            else 0
        )
        pids = _pids_of("AudioEncoderActor") if written >= 1 else []  # reads every /proc entry
        if pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.1)
    assert killed is not None, "the job finished before an actor could be killed"
    done_at_kill = len(FeatureStore.open(out).entries)
    assert done_at_kill < 10
    job.join(600)
    assert not job.is_alive()
    r = result["r"]
    # every video reported once: the good ones written (or found written after a retry), the
    # hostile ones failed
    assert r.done + r.skipped == 10 and r.done >= 1 and len(r.failures) == 4
    ids = index_ids(out)
    assert len(ids) == len(set(ids)) == 10
    assert_same_store(in_process_store, out)
    assert not list(out.rglob(".tmp-*"))
    # The rerun: every video in the index is skipped, so no Ray job starts. (The hostile files, not
    # in the index, would be tried again; they are set aside so the rerun shows the skipping alone.)
    moves = [(mixed_dataset / f["path"], tmp_path / "aside" / f["path"]) for f in r.failures]
    try:
        for original, aside in moves:
            aside.parent.mkdir(parents=True, exist_ok=True)
            original.rename(aside)
        again = extract_dataset_ray(mixed_dataset, out, **kwargs)
    finally:
        for original, aside in moves:
            if aside.exists():
                aside.rename(original)
    assert again.done == 0 and again.skipped == 10 and not again.failures  # nothing recomputed


def test_ray_engine_takes_the_local_engines_settings_and_refuses_the_rest(tmp_path):
    from avarnet.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="workers"):
        extract_dataset_ray(tmp_path, tmp_path / "o", workers=2)
    with pytest.raises(InvalidArgumentError, match="audio_mode"):
        extract_dataset_ray(tmp_path, tmp_path / "o", audio_mode="causal")
    with pytest.raises(InvalidArgumentError, match="unexpected keyword argument 'engine'"):
        extract_dataset_ray(tmp_path, tmp_path / "o", engine="ray")
    assert not (tmp_path / "o").exists()


def test_pipeline_asks_resources_by_name_and_keeps_decoding_apart(
    cluster, tiny_store, tmp_path, capsys
):
    """No argument Ray Data has deprecated (free-form remote arguments, ``concurrency``), and
    decoding stays an operator of its own: never fused into the encoder actors."""
    import warnings

    import ray

    from avarnet.apps.extract_ray import build_pipeline

    spec = FeatureStore.open(tiny_store).spec
    rows = [{"path": f"/x/{i}.mp4", "rel_path": f"c/{i}.mp4", "vid": str(i), "label": "c",
             "split": "train"} for i in range(3)]  # fmt: skip
    for res in (  # a CPU cluster, and a GPU one
        {"actors": 2, "actor": {"num_cpus": 1.0}, "decode_cpus": 1.0},
        {"actors": 1, "actor": {"num_cpus": 1.0, "num_gpus": 0.5}, "decode_cpus": 1.0},
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = build_pipeline(ray, rows, spec, tmp_path, "cpu", res, RayOptions())
        deprecated = [  # Ray's own settings may warn too: only what this call site asks counts
            w
            for w in caught
            if issubclass(w.category, DeprecationWarning)
            and (w.filename.endswith("extract_ray.py") or "remote_args" in str(w.message))
        ]
        assert not deprecated, [str(w.message) for w in deprecated]
        capsys.readouterr()
        ds.explain()
        physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[-1]
        decode = [line for line in physical.splitlines() if "decode_row" in line]
        assert len(decode) == 1 and "Encoder" not in decode[0], physical
        assert "MapBatches(VideoEncoderActor)" in physical


def _encoder_sources(kind: str, root: Path) -> dict:
    """Library keyword arguments selecting a tiny clip encoder (6 frames at 12 fps: not a multiple
    of the frames a CPU pass takes) and an audio encoder of ``kind``, on the CPU."""
    import json

    import encoder_factory as ef
    from test_spectrogram_encoders import save_tiny_ast

    clip = ef.save_onnx_encoder("clip", root / "clip", clip_frames=6)
    manifest = ef.manifest("clip")
    manifest["input"] |= {"frames": 6, "fps": 12.0}
    clip.with_suffix(".json").write_text(json.dumps(manifest))
    audio = {
        "logmel": lambda: f"onnx:{ef.save_onnx_encoder('logmel', root / 'logmel')}",
        "spectrogram": lambda: str(save_tiny_ast(root / "ast")),
    }[kind]()
    return {"video_backbone": f"onnx:{clip}", "audio_backbone": audio, "device": "cpu",
            "progress": False}  # fmt: skip


@pytest.mark.parametrize("audio", ["logmel", "spectrogram"])
def test_ray_engine_with_a_clip_encoder_writes_the_local_engines_store(
    cluster, audio, tiny_dataset, tmp_path
):
    """Clips of a clip encoder, log-mel and spectrogram audio encoders: the Ray actors encode as
    the local engine does, so the two stores hold the same features."""
    from avarnet.extract import extract_dataset

    kwargs = _encoder_sources(audio, tmp_path / "encoders")
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    r = extract_dataset(tiny_dataset, local, workers=0, **kwargs)
    assert r.done == 9 and not r.failures
    options = RayOptions(videos_per_batch=3, decode_cpus=1.0, write_cpus=1.0)
    r = extract_dataset_ray(tiny_dataset, ray_out, options=options, **kwargs)
    assert r.done == 9 and not r.failures, r.failures
    spec = FeatureStore.open(ray_out).spec
    assert spec.video_encoder["kind"] == "clip" and spec.frames_per_segment == 6
    assert spec.audio_encoder["kind"] == audio
    assert_same_store(local, ray_out)
