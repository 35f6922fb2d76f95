"""Commands run as real processes without paying the interpreter start each time.

Tests that need a separate process (a signal, SIGKILL, a memory cap, two writers at once, a
server) would each pay about 5 s of CPU importing torch and transformers. A multiprocessing
forkserver holds them imported; every command is then a fresh fork of it: its own pid, file
descriptors, signals, limits and exit code, running what ``python -m avarnet ARGS`` or
``python -c CODE ARGS`` would run. :func:`start_here` makes that forkserver a fork of the test
worker itself, taken before the first test runs (the worker imports those modules anyway), so
they are imported once per worker, not twice. ``test_cli`` keeps a run of the real
``python -m avarnet``, and tests about what a fresh interpreter imports or allocates start one.

``run`` stands in for ``subprocess.run(capture_output=True, text=True)``, ``Popen`` for
``subprocess.Popen`` with the output to files or pipes.
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import io
import logging
import multiprocessing as mp
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# What the commands import; a module that fails to import here is imported by the command instead.
PRELOAD = [
    "avarnet.cli",
    "avarnet.extract",
    "avarnet.predict",
    "avarnet.stream",
    "avarnet.apps.serve.app",
    "avarnet.report",  # matplotlib, for predict's timeline
    "scipy.signal",  # the timeline's peaks
    "transformers.models.mobilevit.modeling_mobilevit",
    "transformers.models.wav2vec2.modeling_wav2vec2",
]

GC_THRESHOLDS = gc.get_threshold()  # a fresh interpreter's

_ctx = mp.get_context("forkserver")
_ctx.set_forkserver_preload(PRELOAD)


def start_here() -> None:
    """Make a fork of this process the forkserver, after importing PRELOAD here.

    Call it from the main thread before the tests start threads of their own (servers, clients):
    the fork keeps only the calling thread. In the fork every file descriptor but its listening
    socket and the pipe that tells it this process has gone points to /dev/null; it serves forks
    until this process ends.
    Without this call the forkserver is a fresh interpreter that imports PRELOAD itself.
    """
    from multiprocessing import connection, forkserver

    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        return
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # The modules and the collected tests live as long as the worker: full collections, here and
    # in every fork, stop scanning their objects (about 600,000); the worker collects young objects
    # a tenth as often (commands keep a fresh interpreter's thresholds)
    gc.collect()
    gc.freeze()
    gc.set_threshold(10 * GC_THRESHOLDS[0], *GC_THRESHOLDS[1:])
    address = connection.arbitrary_address("AF_UNIX")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address)
    os.chmod(address, 0o600)
    listener.listen()
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forkserver: nothing of the test session stays open in it
        try:
            faulthandler.disable()
            # Every inherited descriptor but the two it serves with becomes /dev/null rather
            # than closed: objects of the session that still hold a number close /dev/null when
            # they go, never a file a command has opened since under the same number.
            null = os.open(os.devnull, os.O_RDWR)
            keep = {null, listener.fileno(), alive_r}
            for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
                if fd not in keep:
                    try:
                        os.fstat(fd)
                    except OSError:
                        continue
                    os.dup2(null, fd)
            forkserver.main(listener.fileno(), alive_r, [])
        finally:
            os._exit(0)
    os.close(alive_r)
    listener.close()
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid


def _exec(argv, out, err, env, cwd, memory_cap, new_session):  # runs in the forked process
    gc.set_threshold(*GC_THRESHOLDS)  # as a fresh interpreter has them
    root = logging.getLogger()  # as a fresh interpreter has it
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    if new_session:
        os.setsid()
    if memory_cap:
        resource.setrlimit(resource.RLIMIT_AS, (memory_cap, memory_cap))
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        if path is not None:
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(target, fd)
            os.close(target)
    unbuffered = env.get("PYTHONUNBUFFERED") == "1"
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=unbuffered
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), line_buffering=True, write_through=True
    )
    sys.stdin = io.TextIOWrapper(io.FileIO(os.open(os.devnull, os.O_RDONLY), "r"))
    if "OMP_NUM_THREADS" in env:  # read by torch at start, which happened in the server
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if argv[:2] == ["-m", "avarnet"]:
        from avarnet.cli import main

        sys.argv = ["avarnet", *argv[2:]]
        sys.exit(main(argv[2:]))
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        sys.exit(0)
    raise ValueError(f"not a python -m avarnet or -c command: {argv}")


def _python_args(argv: list[str]) -> list[str]:
    if not argv or argv[0] != sys.executable:
        raise ValueError(f"expected [sys.executable, ...], got {argv[:1]}")
    return list(argv[1:])


class Popen:
    """A ``subprocess.Popen`` look-alike for ``[sys.executable, "-m", "avarnet", ...]`` and
    ``[sys.executable, "-c", CODE, ...]``. ``stdout``/``stderr``: a path, an open file,
    ``subprocess.PIPE`` (read by :meth:`communicate`), ``subprocess.DEVNULL`` or
    ``subprocess.STDOUT`` (stderr only). Output is read as text."""

    def __init__(
        self,
        argv: list[str],
        stdout=None,
        stderr=None,
        env: dict | None = None,
        cwd: str | Path | None = None,
        memory_cap: int | None = None,
        start_new_session: bool = False,
    ):
        self._files = tempfile.TemporaryDirectory(prefix="launcher-")
        self._pipes: dict[str, Path] = {}
        out = self._target("stdout", stdout)
        err = out if stderr == subprocess.STDOUT else self._target("stderr", stderr)
        self._proc = _ctx.Process(
            target=_exec,
            args=(_python_args(argv), out, err, dict(os.environ if env is None else env),
                  None if cwd is None else str(cwd), memory_cap, start_new_session),
        )  # fmt: skip
        self._proc.start()
        self.pid = self._proc.pid
        self.returncode: int | None = None
        self.args = argv

    def _target(self, name: str, spec) -> str | None:
        if spec is None:
            return None
        if spec == subprocess.DEVNULL:
            return os.devnull
        if spec == subprocess.PIPE:
            self._pipes[name] = Path(self._files.name) / name
            self._pipes[name].touch()
            return str(self._pipes[name])
        if isinstance(spec, (str, os.PathLike)):
            return str(spec)
        spec.flush()  # an open file: the child appends to its path
        return str(spec.name)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._proc.exitcode  # -N when killed by signal N, as subprocess says
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        self.wait(timeout)
        got = tuple(
            self._pipes[n].read_text(errors="replace") if n in self._pipes else None
            for n in ("stdout", "stderr")
        )
        self._files.cleanup()
        return got

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run(
    argv: list[str],
    env: dict | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    memory_cap: int | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, text=True, ...)`` through the forkserver."""
    p = Popen(argv, subprocess.PIPE, subprocess.PIPE, env=env, cwd=cwd, memory_cap=memory_cap)
    try:
        out, err = p.communicate(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        raise
    r = subprocess.CompletedProcess(argv, p.returncode, out, err)
    if check and r.returncode:
        raise subprocess.CalledProcessError(r.returncode, argv, out, err)
    return r
