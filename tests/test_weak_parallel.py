"""Weak training split over processes: the same steps as one process on whole batches, its
default, and errors that arrive as one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_weak import TINY, official_store

from avarnet.checkpoint import load_checkpoint
from avarnet.cli import main
from avarnet.parallel import Ranks, ShardedBatches
from avarnet.store import FeatureStore, StoreError
from avarnet.train import TrainError
from avarnet.weak import PARALLEL_MIN_BATCHES, WeakConfig, train_weak, training_processes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    """40 training videos (a fifth of them validate), 8 test ones, official format."""
    return official_store(tmp_path_factory.mktemp("xdp"), 40, 8, 5)


def test_two_processes_take_the_steps_one_process_takes_on_whole_batches(store, tmp_path):
    """MIL (a mean over the batch's videos), no dropout: two processes on half of every batch,
    gradients averaged, end where one process on the whole batches ends."""
    assert len(store.split("train")) == 30  # batches of 7, 7, 7, 7 and 2: shares of 4, 3 and 1
    cfg = WeakConfig(epochs=3, batch_size=7, objective="mil", all_crops=False, device="cpu",
                     seed=0, num_threads=1, processes=1)  # fmt: skip
    no_dropout = TINY | {"dropout": 0.0}
    one = train_weak(store, tmp_path / "one", cfg, model_overrides=no_dropout, progress=False)
    two = train_weak(store, tmp_path / "two", cfg.replace(processes=2, num_threads=2),
                     model_overrides=no_dropout, progress=False)  # fmt: skip
    for key in ("train_loss", "val_loss"):
        assert [h[key] for h in two.history] == pytest.approx(
            [h[key] for h in one.history], rel=1e-5
        )
    assert two.best_epoch == one.best_epoch and two.params == one.params
    a, b = load_checkpoint(one.checkpoint).model, load_checkpoint(two.checkpoint).model
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, atol=2e-5, rtol=1e-4, msg=name)
    assert json.loads((tmp_path / "two" / "history.json").read_text()) == two.history
    # the CPU seconds of an epoch are those of both processes
    assert all(h["cpu_seconds"] > 0 for h in two.history)


def test_the_default_refine_objective_trains_in_two_processes_from_the_cli(store, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["-q", "xdv", "train", str(store.root), "--out", str(out), "--epochs", "2",
                 "--local-epochs", "2", "--batch-size", "8", "--processes", "2",
                 "--device", "cpu", "--model", "gru"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (out / "best.ckpt").exists() and (out / "snippet_scorer_history.json").exists()
    assert len(json.loads((out / "history.json").read_text())) == 2


def test_an_error_in_a_training_process_arrives_as_one_line(store, tmp_path):
    broken = FeatureStore.open(shutil.copytree(store.root, tmp_path / "store"))
    victim = broken.split("val")[0]
    (broken.root / victim.file).unlink()  # read by the processes only (validation)
    cfg = WeakConfig(epochs=1, local_epochs=1, batch_size=8, device="cpu", processes=2)
    with pytest.raises(StoreError, match="feature file missing") as e:
        train_weak(broken, tmp_path / "run", cfg, model_overrides=TINY, progress=False)
    assert "\n" not in str(e.value)


def test_processes_by_default_and_on_request():
    def procs(samples: int, **kw) -> tuple[int, int]:
        return training_processes(WeakConfig(**kw), CPU, samples)

    enough = 32 * PARALLEL_MIN_BATCHES
    assert procs(enough, num_threads=2) == (2, 1)
    assert procs(enough, num_threads=8) == (2, 4)
    assert procs(enough - 32, num_threads=2) == (1, 2)  # an epoch too short to pay for the start
    assert procs(enough, num_threads=1) == (1, 1)  # one core: one process
    assert procs(10, num_threads=2, processes=2) == (2, 1)  # asked for
    with pytest.raises(TrainError, match="cannot share batches"):
        procs(enough, processes=4, batch_size=2)
    with pytest.raises(TrainError, match="CPU only"):
        training_processes(WeakConfig(processes=2), torch.device("cuda"), enough)


def test_sharded_batches_split_each_batch_and_keep_processes_in_step():
    batches = [[0, 1, 2, 3, 4], [5], [6, 7]]
    share = [list(ShardedBatches(batches, Ranks(r, 2), lockstep=True)) for r in (0, 1)]
    assert share == [[[0, 2, 4], [6]], [[1, 3], [7]]]  # [5] alone: left out by both
    scoring = [list(ShardedBatches(batches, Ranks(r, 2), lockstep=False)) for r in (0, 1)]
    assert scoring == [[[0, 2, 4], [5], [6]], [[1, 3], [7]]]  # every sample scored once


def _spawned_children(pid: int) -> list[int]:
    """The pids of ``pid``'s children that multiprocessing spawned to run a function (not its
    resource tracker)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(fields.get("PPid", "0")) == pid and b"spawn_main" in cmdline:
            out.append(int(status.parent.name))
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state in "ZX"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_sigterm_during_two_process_training_leaves_no_process_and_no_file(store, tmp_path):
    """A service manager stops `xdv train --processes 2` with SIGTERM: the training processes
    stop with it, the folder that joined them is removed, and the command says so in one line."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = os.environ | {"TMPDIR": str(tmp), "AVARNET_DEBUG": ""}
    cmd = [sys.executable, "-m", "avarnet", "-q", "xdv", "train", str(store.root),
           "--out", str(tmp_path / "run"), "--epochs", "1000", "--objective", "mil",
           "--batch-size", "8", "--processes", "2", "--device", "cpu", "--model", "gru"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(children := _spawned_children(proc.pid)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the training processes never started"
            time.sleep(0.1)
        assert list(tmp.glob("avarnet-ranks-*"))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        "avarnet xdv train: terminated: nothing resumes it; run the command again to start over"
    )
    deadline = time.monotonic() + 10
    while not all(_gone(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(c) for c in children)
    assert not list(tmp.glob("avarnet-ranks-*"))
