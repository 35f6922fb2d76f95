"""Data-parallel training on CPU: processes that each take their share of every batch.

On two CPU cores one training process with two threads keeps the cores only partly busy (a narrow
model's many small operations run one after another between its matmuls, each split over threads
that mostly wait), while two single-threaded processes, each on half of every batch, keep both
cores busy (docs/weak-supervision.md measures it). :func:`start` runs a function in ``world``
processes joined by a gloo process group; :class:`Ranks` is what the training loop needs to know
about it: its share of a batch, the averaged gradients, and sums over all processes. ``Ranks()``
is one process on its own, where every method does nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Sampler

from .errors import AvarnetError, Terminated


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` data-parallel training processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0

    def shard(self, batches: Sampler, lockstep: bool) -> Sampler:
        """This process's share of every batch of ``batches`` (lists of sample indices).

        ``lockstep``: every process steps on every batch together (training, where gradients are
        averaged after each step), so a batch with fewer samples than processes is left out by all
        of them; otherwise (scoring) a process simply skips a batch that leaves it nothing.
        """
        return batches if self.world == 1 else ShardedBatches(batches, self, lockstep)

    def average_gradients(self, params: Iterable[torch.nn.Parameter], samples: int) -> None:
        """Each gradient becomes the sample-weighted mean of the processes' gradients: the
        gradient of the whole batch for a loss that is a mean over its samples."""
        if self.world == 1:
            return
        params = [p for p in params if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat(
            [g.reshape(-1) * samples for g in grads]
            + [torch.tensor([samples], dtype=grads[0].dtype)]
        )
        dist.all_reduce(flat)
        flat = flat[:-1] / flat[-1]
        at = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[at : at + n].view_as(p).clone()
            at += n

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the processes (float64)."""
        if self.world == 1:
            return tuple(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def gather(self, part: dict) -> dict:
        """The union of every process's ``part`` (picklable values)."""
        if self.world == 1:
            return part
        parts: list = [None] * self.world
        dist.all_gather_object(parts, part)
        return {k: v for p in parts for k, v in p.items()}


class ShardedBatches(Sampler):
    """The batches of a batch sampler, each cut to one process's share: ``batch[rank::world]``."""

    def __init__(self, batches: Sampler, ranks: Ranks, lockstep: bool):
        self.batches, self.ranks, self.lockstep = batches, ranks, lockstep

    def __iter__(self) -> Iterator[list[int]]:
        r, w = self.ranks.rank, self.ranks.world
        for batch in self.batches:
            if self.lockstep and len(batch) < w:
                continue
            if batch[r::w]:
                yield batch[r::w]

    def __len__(self) -> int:
        return len(self.batches)


class RankFailed(AvarnetError):
    """A training process stopped with an error."""


def _run_rank(rank: int, fn: Callable, args: Sequence, world: int, init: str, reports) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        value = fn(Ranks(rank, world), *args)
        if rank == 0:
            reports.put(("result", value))
    except AvarnetError as e:  # a one-line reason for the parent to raise as the same type
        reports.put(("error", type(e).__module__, type(e).__qualname__, str(e)))
        raise
    finally:
        dist.destroy_process_group()


def start(fn: Callable, args: Sequence, world: int, threads: int):
    """Run ``fn(ranks, *args)`` in ``world`` fresh processes of ``threads`` torch threads each,
    joined by a gloo process group; wait for all of them and return what the main one returned.

    ``fn`` must be a module-level function and ``args`` picklable (the processes are spawned).
    An avarnet error in a process is raised here as the same error with its message (the other
    processes are stopped); any other failure as :class:`RankFailed` with the process's traceback.
    """
    tmp = Path(tempfile.mkdtemp(prefix="avarnet-ranks-"))
    ctx = mp.get_context("spawn")
    reports = ctx.SimpleQueue()
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read by each process's OpenMP runtime as it starts
    processes = None
    with _sigterm_raises():
        try:
            processes = mp.spawn(
                _run_rank,
                args=(fn, args, world, f"file://{tmp / 'init'}", reports),
                nprocs=world,
                join=False,
            )
            while not processes.join():
                pass
        except mp.ProcessRaisedException as e:
            while not reports.empty():
                kind, *rest = reports.get()
                if kind == "error":
                    module, name, message = rest
                    raise _error_type(module, name)(message) from None
            raise RankFailed(f"a training process failed:\n{e}") from None
        except mp.ProcessExitedException as e:
            raise RankFailed(f"a training process died: {e}") from None
        finally:  # Ctrl-C, SIGTERM or an error here: no process and no file is left behind
            for p in processes.processes if processes is not None else ():
                if p.is_alive():
                    p.terminate()
                p.join(5)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(tmp, ignore_errors=True)
    kind, value = reports.get()
    return value


@contextlib.contextmanager
def _sigterm_raises():
    """Inside, SIGTERM raises :class:`Terminated` in the main thread, so that ``finally`` blocks
    run as they do for Ctrl-C; in another thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _error_type(module: str, name: str) -> type[AvarnetError]:
    import importlib

    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return RankFailed
    return cls if isinstance(cls, type) and issubclass(cls, AvarnetError) else RankFailed
