"""Progress bars in a log file: whole lines, a few seconds apart, and the last state."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import launcher

INTERVAL_ENV = "AVARNET_PROGRESS_SECONDS"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_redraws_become_one_line_per_interval_and_the_last_state():
    from avarnet.progress import LineWriter

    out, clock = io.StringIO(), Clock()
    w = LineWriter(out, interval=5.0, clock=clock)
    w.write("\rstep 0   ")  # the first state is shown at once
    for i in range(1, 50):  # 49 redraws within 4.9 s: held back
        clock.t += 0.1
        w.write(f"\rstep {i}")
    assert out.getvalue() == "step 0\n"
    clock.t += 0.2  # 5.1 s after the first line
    w.write("\rstep 50")
    w.write("\r")  # a clear: nothing to show
    w.write("\rstep 51")
    clock.t += 0.1
    w.write("\rstep 52")
    w.write("\n")  # the bar closes: its last state, whatever the time
    assert out.getvalue().splitlines() == ["step 0", "step 50", "step 52"]


def test_a_bar_on_a_file_writes_lines_and_a_terminal_keeps_tqdm():
    from avarnet.progress import progress_bar

    out = io.StringIO()
    bar = progress_bar(range(3000), desc="work", unit="it", file=out)
    for _ in bar:
        pass
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and 1 <= len(lines) <= 2
    assert "3000/3000" in lines[-1]
    terminal = Terminal()
    for _ in progress_bar(range(3), desc="work", file=terminal):
        pass
    assert terminal.getvalue().startswith("\r")  # redrawn in place


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interval_from_the_environment(monkeypatch):
    from avarnet.progress import LOG_INTERVAL_S, log_interval

    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    assert log_interval() == 0.5
    for bad in ("abc", "-1", "nan", "0"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        assert log_interval() == LOG_INTERVAL_S


def test_train_into_a_log_file_writes_few_whole_progress_lines(factory_store, tmp_path):
    """`avarnet train ... > log 2>&1`: no line of carriage returns; at most one progress line
    per interval, plus the first and the last."""
    log, interval = tmp_path / "log", 0.5
    env = dict(os.environ, OMP_NUM_THREADS="1", **{INTERVAL_ENV: str(interval)})
    argv = [sys.executable, "-m", "avarnet", "train", str(factory_store.root)]
    argv += ["--out", str(tmp_path / "run"), "--epochs", "25", "--device", "cpu"]
    start = time.monotonic()
    proc = launcher.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    assert proc.wait(120) == 0, log.read_text()
    wall = time.monotonic() - start
    text = log.read_text()
    assert "\r" not in text and max(map(len, text.splitlines())) < 300
    bars = [line for line in text.splitlines() if "epoch/s" in line]
    assert 2 <= len(bars) <= 2 + wall / interval, text
    assert "25/25" in bars[-1] and "0/25" in bars[0]
    assert text.rstrip().splitlines()[-1].startswith("best epoch")
