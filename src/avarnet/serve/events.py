"""The event database (SQLite): events with their scores and review state, and the MQTT outbox.

Both survive restarts. One connection shared by the server's threads, serialised by a lock;
WAL journal so the review page reads while cameras write.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REVIEW_STATES = ("unreviewed", "true", "false")  # true alarm / false alarm

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    label TEXT NOT NULL,
    corrected_label TEXT,
    start_time REAL NOT NULL,        -- epoch seconds
    end_time REAL,                   -- NULL while open
    media_start REAL NOT NULL,       -- s on the camera's timeline
    media_end REAL,
    peak_score REAL NOT NULL,
    peak_time REAL NOT NULL,         -- epoch seconds
    score REAL NOT NULL,             -- latest segment's score
    segments INTEGER NOT NULL DEFAULT 0,
    scores TEXT NOT NULL DEFAULT '[]',  -- [[epoch s, score], ...] from pre-roll to end
    review TEXT NOT NULL DEFAULT 'unreviewed',
    reviewed_at REAL,
    clip TEXT,                       -- file name under storage/clips, NULL until written or pruned
    clip_start REAL,                 -- epoch seconds of the clip's first frame
    snapshot TEXT,
    clip_pruned INTEGER NOT NULL DEFAULT 0,
    closed_by TEXT
);
CREATE INDEX IF NOT EXISTS events_camera ON events(camera, start_time);
CREATE INDEX IF NOT EXISTS events_start ON events(start_time);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
"""

EVENT_COLUMNS = (
    "id",
    "camera",
    "label",
    "corrected_label",
    "start_time",
    "end_time",
    "media_start",
    "media_end",
    "peak_score",
    "peak_time",
    "score",
    "segments",
    "scores",
    "review",
    "reviewed_at",
    "clip",
    "clip_start",
    "snapshot",
    "clip_pruned",
    "closed_by",
)


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


@dataclass(frozen=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: str
    qos: int
    retain: bool


class EventStore:
    """Events and the outbox in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ events

    def insert(self, event: dict) -> None:
        cols = [c for c in EVENT_COLUMNS if c in event]
        values = [json.dumps(event[c]) if c == "scores" else _finite(event[c]) for c in cols]
        with self._lock:
            self._db.execute(
                f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                values,
            )

    def update(self, event_id: str, **fields) -> None:
        if not fields:
            return
        bad = set(fields) - set(EVENT_COLUMNS)
        if bad:
            raise ValueError(f"unknown event fields: {sorted(bad)}")
        values = [json.dumps(v) if k == "scores" else _finite(v) for k, v in fields.items()]
        with self._lock:
            self._db.execute(
                f"UPDATE events SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                [*values, event_id],
            )

    @staticmethod
    def _row(row: sqlite3.Row) -> dict:
        d = dict(row)
        d["scores"] = json.loads(d["scores"])
        d["clip_pruned"] = bool(d["clip_pruned"])
        d["final_label"] = d["corrected_label"] or d["label"]
        return d

    def get(self, event_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else self._row(row)

    def list(
        self,
        camera: str | None = None,
        label: str | None = None,
        review: str | None = None,
        limit: int = 200,
        oldest_first: bool = False,
    ) -> list[dict]:
        where, args = [], []
        if camera:
            where.append("camera = ?")
            args.append(camera)
        if label:
            where.append("COALESCE(corrected_label, label) = ?")
            args.append(label)
        if review:
            where.append("review = ?")
            args.append(review)
        sql = "SELECT * FROM events" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY start_time {'ASC' if oldest_first else 'DESC'} LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [self._row(r) for r in rows]

    def labels(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT COALESCE(corrected_label, label) FROM events ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    def review(self, event_id: str, state: str | None = None, label: str | None = None) -> dict:
        """Set the review state (true / false alarm) and/or the corrected class; returns the event."""
        if state is not None and state not in REVIEW_STATES:
            raise ValueError(f"review must be one of {REVIEW_STATES}, got {state!r}")
        fields: dict = {"reviewed_at": time.time()}
        if state is not None:
            fields["review"] = state
        if label is not None:
            fields["corrected_label"] = label or None
        self.update(event_id, **fields)
        event = self.get(event_id)
        if event is None:
            raise KeyError(event_id)
        return event

    def open_events(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM events WHERE end_time IS NULL").fetchall()
        return [self._row(r) for r in rows]

    def with_clips(self) -> list[dict]:
        """Events whose clip or snapshot is still on disk, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE clip IS NOT NULL OR snapshot IS NOT NULL ORDER BY start_time"
            ).fetchall()
        return [self._row(r) for r in rows]

    # ------------------------------------------------------------------ outbox

    def enqueue(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                (topic, payload, qos, int(retain), time.time()),
            )
            return int(cur.lastrowid)

    def pending(self, limit: int = 100) -> list[OutboxMessage]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [OutboxMessage(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def delivered(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def outbox_size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
