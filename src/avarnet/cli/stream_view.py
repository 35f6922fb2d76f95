"""How `avarnet stream` shows a stream to people: the live terminal view, plain event lines, the
closing summary, and Ctrl-C handling (a first Ctrl-C stops gracefully, a second aborts)."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

BAR_WIDTH = 20
CLEAR_LINE = "\r\x1b[2K"
RED, BOLD, RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LiveView:
    """Terminal view: one status line rewritten per segment, a permanent line per alert change."""

    def __init__(self, out: TextIO, threshold: float) -> None:
        self.out = out
        self.threshold = threshold
        self.open_event: dict | None = None

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def __call__(self, record: dict) -> None:
        kind = record["type"]
        if kind == "segment":
            self.write(CLEAR_LINE + self.status_line(record))
        elif kind == "event":
            self.open_event = record if record["state"] == "open" else None
            self.write(CLEAR_LINE + self.event_line(record) + "\n")
        elif kind == "summary":
            self.write(CLEAR_LINE)

    def status_line(self, r: dict) -> str:
        score = r["anomaly_score"]
        finite = score is not None and math.isfinite(score)
        filled = min(BAR_WIDTH, max(0, round(score * BAR_WIDTH))) if finite else 0
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        hot = finite and score >= self.threshold
        shown = f"{score:.2f}" if finite else " n/a"
        colour = f"{RED}{BOLD}" if hot else ""
        lag = f"  lag {r['lag_s']:.1f} s" if r.get("lag_s") is not None else ""
        alert = (
            f"  {RED}ALERT #{self.open_event['id']} {self.open_event['class']}{RESET}"
            if self.open_event
            else ""
        )
        return (
            f"{_clock(r['start'])}  {r['label']:<14s} {colour}{bar} {shown}{RESET if hot else ''}"
            f"  {r['latency_ms']:.0f} ms{lag}{alert}"
        )

    @staticmethod
    def event_line(r: dict) -> str:
        if r["state"] == "open":
            return f"{RED}{BOLD}{_clock(r['start'])}  ALERT #{r['id']} opened: {r['class']} (score {r['peak_score']:.2f}){RESET}"
        return (
            f"{_clock(r['end'])}  alert #{r['id']} closed: {r['class']}, {_clock(r['start'])}-{_clock(r['end'])},"
            f" peak {r['peak_score']:.2f} ({r['closed_by']})"
        )


def summary_text(record: dict) -> str:
    """Human-readable lines of a summary record."""
    lat, comp, lag = record["latency_ms"], record["compute_ms"], record["lag_s"]
    lines = [
        f"stream ended: {record['end_reason']}",
        f"  {record['segments']} segments ({record['media_seconds']:.1f} s of media) in {record['wall_seconds']:.1f} s"
        f" = {record['realtime_factor']:.2f}x real time; dropped {record['dropped']}",
    ]
    if "runtime" in record:
        lines.append(f"  runtime {record['runtime']}, precision {record['precision']}")
    if lat:
        lines.append(
            f"  latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms"
            f" (compute p50 {comp['p50']:.0f} ms, p95 {comp['p95']:.0f} ms)"
        )
    if lag:
        lines.append(f"  lag behind the source: final {lag['final']:.2f} s, max {lag['max']:.2f} s")
    if record["label"]:
        lines.append(f"  overall: {record['label']}")
    lines.append(f"  events: {record.get('events_total', len(record['events']))}")
    lines += [
        f"    #{e['id']} {e['class']} {e['start']:.1f}-{e['end']:.1f} s, peak {e['peak_score']:.2f}"
        for e in record["events"]
    ]
    if record["webhook"]:
        w = record["webhook"]
        lines.append(
            f"  webhook: {w['delivered']} delivered, {w['failed']} failed, {w['dropped']} dropped"
        )
    return "\n".join(lines)


class StreamOutput:
    """Where records go: JSON lines to a text stream, the live view, plain event lines otherwise.

    ``run``: what ran the stream (runtime, precision), recorded in the summary record."""

    def __init__(
        self,
        jsonl: TextIO | None,
        view: LiveView | None,
        text: TextIO,
        run: dict | None = None,
    ) -> None:
        self.jsonl = jsonl
        self.view = view
        self.text = text
        self.run = dict(run or {})
        self.summary: dict = {}

    def __call__(self, record: dict) -> None:
        if record["type"] == "summary" and self.run:
            record = {**record, **self.run}
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.jsonl.flush()
        if self.view is not None:
            self.view(record)
        elif record["type"] == "event":
            print(
                f"event #{record['id']} {record['state']}: {record['class']} from {record['start']:.1f} s"
                f" (peak {record['peak_score']:.2f})",
                file=self.text,
                flush=True,
            )
        if record["type"] == "summary":
            self.summary = record


@contextlib.contextmanager
def stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C sets ``stop`` (graceful: queued segments are finished); a second one aborts."""

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nstopping: finishing queued segments (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
