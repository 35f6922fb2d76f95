"""serve's threads never die silently: an error in a camera, the engine or a publisher is logged
once, shows as unhealthy, closes the open event with a reason, and detection goes on; a full
disk costs the writes it must, never detection."""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from pathlib import Path

import pytest
import serve_support as ss

from avarnet.apps.serve.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

ALWAYS = {"threshold": 0.0, "min_segments": 2}  # every segment is high: one event per pass


@pytest.fixture(scope="module")
def ckpt(tiny_backbones, tmp_path_factory) -> Path:
    return ss.tiny_checkpoint(tiny_backbones, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return ss.make_clip(tmp_path_factory.mktemp("media") / "cam.mp4", 6.0)


def config(tmp_path: Path, ckpt: Path, clip: Path, **camera):
    cams = {"cam": {"source": str(clip), "alerts": ALWAYS, "retry_max_s": 1, **camera}}
    path = ss.write_config(tmp_path / "c.yaml", ckpt, cams, tmp_path / "store", ss.free_port())
    return load_config(path)


class FailOnce:
    """Wraps a callable: its ``n``-th call raises ``error``, the others pass through."""

    def __init__(self, fn, n: int, error: BaseException) -> None:
        self.fn, self.n, self.error, self.calls = fn, n, error, 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls += 1
            fail = self.calls == self.n
        if fail:
            raise self.error
        return self.fn(*args, **kwargs)


def unhealthy(cap: ss.Capture, words: str) -> list[dict]:
    return [s for s in cap.states if not s.get("healthy", True) and words in (s["error"] or "")]


def closed_by(cap: ss.Capture) -> list[str | None]:
    return [e["closed_by"] for e in cap.ended()]


def test_an_error_in_a_camera_thread_reconnects_and_closes_its_event(ckpt, clip, tmp_path, caplog):
    """The camera thread meets an error handing over its 4th segment: logged once, camera
    unhealthy (page and state topic), the open event closes with closed_by "error", the camera
    reads its source again."""

    def patch(server):
        engine = next(iter(server.engines.values()))
        # calls: the session's start marker, then segments 0, 1, 2, 3
        engine.put = FailOnce(engine.put, 5, RuntimeError("injected camera failure"))

    caplog.set_level(logging.WARNING, logger="avarnet")
    server, cap = ss.serve_here(config(tmp_path, ckpt, clip), patch=patch)
    assert unhealthy(cap, "injected camera failure")
    assert closed_by(cap) == ["error", "end of stream"]  # then a whole pass after reconnecting
    assert server.readers[0].health.sessions == 2 and server.readers[0].health.status == "ended"
    assert [a["segment"] for a in cap.anomalies] == [0, 1, 2, 0, 1, 2, 3, 4, 5]  # read again
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("injected camera failure" in r.getMessage() for r in errors) == 1
    row = server.camera_status()[0]
    assert row["healthy"] and row["error"] is None


def test_an_error_in_the_engine_skips_the_segment_and_detection_resumes(
    ckpt, clip, tmp_path, caplog
):
    """The shared encoder raises on its 3rd batch: those segments are skipped, the camera shows
    unhealthy with the reason, its open event closes with closed_by "error", later segments are
    scored (and a new event opens)."""

    def patch(server):
        engine = next(iter(server.engines.values()))
        engine.batch_segments = 1
        engine.encoder.encode = FailOnce(
            engine.encoder.encode, 3, RuntimeError("injected engine failure")
        )

    caplog.set_level(logging.WARNING, logger="avarnet")
    server, cap = ss.serve_here(config(tmp_path, ckpt, clip), patch=patch)
    assert unhealthy(cap, "injected engine failure")
    assert closed_by(cap)[0] == "error" and len(closed_by(cap)) == 2
    assert len(cap.anomalies) == 5  # one of 6 skipped
    assert cap.states[-1]["healthy"]  # healthy again once a segment was scored
    assert server.camera_status()[0]["failed"] == 1
    assert all(not e.is_alive() for e in server.engines.values())
    assert sum("injected engine failure" in r.getMessage() for r in caplog.records) == 1


def test_an_error_in_a_publisher_is_reported_and_the_others_go_on(ckpt, clip, tmp_path, caplog):
    """A publisher that raises on every anomaly message: logged once, the server reports it
    unhealthy, the events still reach the other publishers, detection goes on."""
    from avarnet.apps.serve.publisher import Publisher

    class Broken(Publisher):
        name = "broken"

        def anomaly(self, camera, payload):
            raise ConnectionError("injected publisher failure")

    seen = {}

    def patch(server):
        server.publishers.add(Broken())

    def until(server):
        seen.setdefault("stats", None)
        if server.stats()["errors"]:
            seen["stats"] = server.stats()
        return not any(r.is_alive() for r in server.readers)

    caplog.set_level(logging.WARNING, logger="avarnet")
    server, cap = ss.serve_here(config(tmp_path, ckpt, clip), patch=patch, until=until)
    stats = seen["stats"]
    assert stats is not None and not stats["healthy"]
    assert "injected publisher failure" in stats["errors"]["broken"]
    assert len(cap.scores("cam")) == 6 and closed_by(cap) == ["end of stream"]
    assert sum("injected publisher failure" in r.getMessage() for r in caplog.records) == 1


def test_a_full_disk_for_a_moment_never_stops_detection(ckpt, clip, tmp_path, caplog):
    """Database writes raise "database or disk is full" for a moment and a clip write fails:
    the engine lives on, later segments are scored, an event still closes and its end goes out."""
    full = sqlite3.OperationalError("database or disk is full")

    def patch(server):
        server.store.insert = FailOnce(server.store.insert, 1, full)
        server.store.update = FailOnce(server.store.update, 3, full)
        if "cam" in server.recorders:
            recorder = server.recorders["cam"]
            recorder.add = FailOnce(recorder.add, 5, OSError(errno.ENOSPC, "No space left"))

    caplog.set_level(logging.WARNING, logger="avarnet")
    server, cap = ss.serve_here(config(tmp_path, ckpt, clip), patch=patch)
    assert len(cap.anomalies) >= 4  # at most the segments whose writes failed are lost
    assert cap.anomalies[-1]["segment"] == 5  # the last segment was scored
    assert cap.ended() and cap.ended()[-1]["closed_by"] == "end of stream"
    assert all(not e.is_alive() for e in server.engines.values())
    assert sum("disk is full" in r.getMessage() for r in caplog.records) == 1


def test_a_snapshot_the_full_disk_refuses_still_ends_the_event(ckpt, clip, tmp_path, caplog):
    """Writing the event's snapshot fails with "No space left on device": the event is still
    finished (its `end` goes out, without a snapshot) and nothing is logged with a traceback."""
    import avarnet.io

    write = avarnet.io.atomic_write

    def full_for_jpegs(path, fn):
        if str(path).endswith(".jpg"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, fn)

    def patch(server):
        avarnet.io.atomic_write = full_for_jpegs

    caplog.set_level(logging.WARNING, logger="avarnet")
    try:
        _, cap = ss.serve_here(config(tmp_path, ckpt, clip), patch=patch)
    finally:
        avarnet.io.atomic_write = write
    ended = cap.ended()
    assert len(ended) == 1 and ended[0]["closed_by"] == "end of stream"
    assert ended[0]["has_clip"] and not ended[0]["has_snapshot"]
    assert not [r for r in caplog.records if r.exc_info]
