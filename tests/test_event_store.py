"""The event database: constant cost per segment, writes kept through a full disk, a damaged file
kept aside, and one server per storage folder."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from avarnet.apps.serve import events
from avarnet.apps.serve.events import EventStore
from avarnet.errors import AvarnetError


def event_row(event_id: str, start: float = 1000.0, scores=None) -> dict:
    return {
        "id": event_id,
        "camera": "yard",
        "label": "crash",
        "start_time": start,
        "end_time": None,
        "media_start": 0.0,
        "peak_score": 0.9,
        "peak_time": start,
        "score": 0.9,
        "segments": 1,
        "scores": scores if scores is not None else [[start, 0.9]],
    }


def wal_frames_written(path, work) -> int:
    """Pages the database wrote (WAL frames) while ``work()`` ran."""
    probe = sqlite3.connect(str(path))
    try:
        probe.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        work()
        return probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    finally:
        probe.close()


def test_a_segment_costs_the_same_after_a_week_as_after_a_minute(tmp_path):
    path = tmp_path / "events.db"
    store = EventStore(path)
    week = 7 * 24 * 3600 // 10  # an event a week long, its scores in the database (sampled)
    store.insert(event_row("short", scores=[[1000.0 + i, 0.5] for i in range(10)]))
    store.insert(event_row("long", scores=[[1000.0 + i, 0.5] for i in range(week)]))

    def segments(event_id: str, n: int = 10):
        return lambda: [store.append_score(event_id, 5e5 + i, 0.75) for i in range(n)]

    short = wal_frames_written(path, segments("short"))
    long = wal_frames_written(path, segments("long"))
    assert 0 < long <= short + 2  # pages written per segment do not grow with the event
    assert long <= 3 * 10  # a few pages per segment (the row, the index), not the whole event
    scores = store.get("long")["scores"]
    assert len(scores) == week + 10 and scores[0] == [1000.0, 0.5] and scores[-1] == [5e5 + 9, 0.75]
    assert [s[0] for s in store.get("short")["scores"]] == [
        *(1000.0 + i for i in range(10)),
        *(5e5 + i for i in range(10)),
    ]
    store.close()


def test_scores_stored_by_an_older_version_are_kept(tmp_path):
    path = tmp_path / "events.db"
    db = sqlite3.connect(str(path))
    db.executescript(events.SCHEMA.split("CREATE TABLE IF NOT EXISTS scores")[0])
    db.execute(
        "INSERT INTO events (id, camera, label, start_time, media_start, peak_score, peak_time,"
        " score, scores) VALUES ('old', 'yard', 'crash', 1, 0, 0.9, 1, 0.9, '[[1.0, 0.8], [2.0, 0.9]]')"
    )
    db.commit()
    db.close()
    store = EventStore(path)
    store.append_score("old", 3.0, 0.7)
    assert store.get("old")["scores"] == [[1.0, 0.8], [2.0, 0.9], [3.0, 0.7]]
    store.close()


def fill_disk(store: EventStore) -> None:
    """The database may not grow by one more page (SQLite's "database or disk is full")."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def free_disk(store: EventStore) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_delays_writes_in_order_and_raises_nothing(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(events, "RETRY_EVERY_S", 0.0, raising=False)
    store = EventStore(tmp_path / "events.db")
    store.insert(event_row("before"))
    first = store.enqueue("avarnet/events", "m0")

    fill_disk(store)
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        for i in range(40):  # enough rows to need new pages
            start = 2000.0 + i
            store.insert(event_row(f"during-{i:02d}", start, [[start - j, 0.6] for j in range(8)]))
            store.update(f"during-{i:02d}", label="scream", peak_score=0.95, segments=i)
        seqs = [store.enqueue("avarnet/events", f"m{i}") for i in (1, 2, 3)]
        store.delivered(first)
        store.update("before", end_time=1010.0, closed_by="scores")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "database or disk is full" in warnings[0].getMessage()
    assert "database or disk is full" in store.degraded
    assert seqs == [None, None, None]  # kept in memory, numbered once written
    assert len(store.list(limit=100)) < 41  # reads miss what waits
    # the outbox: the delivered message is no longer offered; the new ones count as pending
    assert [m.payload for m in store.pending()] == []
    assert store.outbox_size() == 3

    free_disk(store)
    with caplog.at_level(logging.INFO, logger="avarnet"):
        store.append_score("during-39", 9999.0, 0.1)  # the next write replays the waiting first
    assert store.degraded is None and store.queued_writes == 0
    assert store.retry() is True
    rows = store.list(limit=100, oldest_first=True)
    assert [r["id"] for r in rows] == ["before", *(f"during-{i:02d}" for i in range(40))]
    for i, row in enumerate(rows[1:]):
        assert row["label"] == "scream" and row["peak_score"] == 0.95 and row["segments"] == i
        assert len(row["scores"]) == 8 + (i == 39)
    assert rows[-1]["scores"][-1] == [9999.0, 0.1]
    assert rows[0]["end_time"] == 1010.0
    assert [m.payload for m in store.pending()] == ["m1", "m2", "m3"]
    assert store.outbox_size() == 3
    assert "writes work again" in caplog.text
    store.close()


def test_the_waiting_writes_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "REPLAY_LIMIT", 20, raising=False)
    monkeypatch.setattr(events, "SCORE_REPLAY_LIMIT", 10, raising=False)
    store = EventStore(tmp_path / "events.db")
    store.insert(event_row("e"))
    fill_disk(store)
    for i in range(400):
        store.append_score("e", 2000.0 + i, 0.5)
    waiting = store.queued_writes
    assert waiting <= 10
    for i in range(30):
        store.update("e", segments=i)
    assert store.queued_writes == 20
    assert store.dropped_writes > 0 and "lost" in store.degraded
    free_disk(store)
    assert store.retry()
    assert store.get("e")["segments"] == 29  # the newest writes survive
    store.close()


def test_a_damaged_database_is_kept_aside_and_a_fresh_one_started(tmp_path, caplog):
    path = tmp_path / "events.db"
    path.write_bytes(b"this is not a database, it was overwritten by something" * 100)
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        store = EventStore(path)
    store.insert(event_row("fresh"))
    assert [e["id"] for e in store.list()] == ["fresh"]
    store.close()
    (kept,) = tmp_path.glob("events.db.damaged-*")
    assert kept.read_bytes().startswith(b"this is not a database")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "damaged" in lines[0] and kept.name in lines[0]


def malformed_database(path):
    store = EventStore(path)
    store.insert(event_row("a", scores=[[float(i), 0.5] for i in range(3000)]))
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page : 6 * page] = b"\x07" * (4 * page)  # scribble over pages in the middle
    path.write_bytes(bytes(data))
    return path


def test_a_malformed_database_is_kept_aside(tmp_path, caplog):
    path = malformed_database(tmp_path / "events.db")
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        store = EventStore(path)
    assert store.list() == []
    store.insert(event_row("b"))
    store.close()
    assert len(list(tmp_path.glob("events.db.damaged-*"))) == 1
    assert len([r for r in caplog.records if "damaged" in r.getMessage()]) == 1


def test_a_reader_never_moves_a_damaged_database(tmp_path):
    path = malformed_database(tmp_path / "events.db")
    with pytest.raises(AvarnetError, match="damaged"):
        EventStore(path, lock=False)
    assert not list(tmp_path.glob("events.db.damaged-*"))


def test_one_server_per_storage_folder(tmp_path):
    path = tmp_path / "events.db"
    first = EventStore(path)
    with pytest.raises(AvarnetError) as err:
        EventStore(path)
    assert isinstance(err.value, events.StorageLockedError) and "\n" not in str(err.value)
    assert str(tmp_path) in str(err.value)
    reader = EventStore(path, lock=False)  # export, tests: read alongside the server
    first.insert(event_row("x"))
    assert [e["id"] for e in reader.list()] == ["x"]
    reader.close()
    first.close()
    again = EventStore(path)  # released on close
    again.close()


def test_the_lock_goes_away_with_the_process(tmp_path):
    path = tmp_path / "events.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from avarnet.apps.serve.events import EventStore
                store = EventStore({str(path)!r})
                print("ready", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(
            AvarnetError, match=rf"in use by another avarnet server \(process {holder.pid}\b"
        ):
            EventStore(path)
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait(timeout=10)
    store = EventStore(path)
    store.close()
