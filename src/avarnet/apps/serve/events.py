"""The event database (SQLite): events with their scores and review state, and the MQTT outbox.

Both survive restarts. One connection shared by the server's threads, serialised by a lock;
WAL journal so the review page reads while cameras write.

* **Scores** live in their own table, one row per segment: :meth:`EventStore.append_score` costs
  the same after a week-long event as after its first segment.
* **Disk full / I/O errors** never reach the caller of a write: the write is kept, in order, in a
  bounded in-memory queue and replayed at the next write or :meth:`EventStore.retry`;
  :attr:`EventStore.degraded` says why while writes wait. Reads do not see writes still waiting.
* **A damaged database** (not a database, malformed) is renamed ``events.db.damaged-<unix time>``
  with one warning, and a fresh one is started.
* **One server per storage folder**: the store takes an exclusive lock (``events.db.lock``, an
  ``flock`` the system drops when the process dies); a second one gets :class:`StorageLockedError`.
  Readers that never write events (exports, tests) pass ``lock=False``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ...errors import AvarnetError

try:  # POSIX; elsewhere the storage folder is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("avarnet")

REVIEW_STATES = ("unreviewed", "true", "false")  # true alarm / false alarm

REPLAY_LIMIT = 50_000  # writes kept in memory while the database cannot be written
SCORE_REPLAY_LIMIT = (
    REPLAY_LIMIT // 2
)  # beyond this, new scores are dropped to keep room for events
REPLAY_BATCH = 500  # writes replayed per transaction
RETRY_EVERY_S = 0.5  # a write retries the waiting ones at most this often (retry() always does)

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
    scores TEXT NOT NULL DEFAULT '[]',  -- unused since scores have their own table (older files)
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
CREATE TABLE IF NOT EXISTS scores (  -- [epoch s, score] of an event's segments, pre-roll to end
    event_id TEXT NOT NULL,
    t REAL NOT NULL,
    score REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scores_event ON scores(event_id);
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

# SQLite result codes (primary) that mean "the environment refused the write", not a defect:
# BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL
_ENVIRONMENT_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
_ENVIRONMENT_TEXT = (
    "disk is full",
    "disk i/o error",
    "readonly",
    "database is locked",
    "unable to open",
    "out of memory",
)
# ... and those that mean the file is not (or no longer) a usable database: CORRUPT, NOTADB
_DAMAGED_CODES = frozenset({11, 26})
_DAMAGED_TEXT = ("not a database", "malformed", "file is encrypted")


class StoreError(AvarnetError):
    """The event database cannot be opened."""


class StorageLockedError(StoreError):
    """Another process (a running server) holds the storage folder."""


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _code(e: sqlite3.Error) -> int | None:
    code = getattr(e, "sqlite_errorcode", None)  # Python >= 3.11
    return None if code is None else code & 0xFF


def is_environment_error(e: sqlite3.Error) -> bool:
    """Disk full, I/O error, read-only file, ...: a write that may work later."""
    code = _code(e)
    if code is not None:
        return code in _ENVIRONMENT_CODES
    text = str(e).lower()
    return any(t in text for t in _ENVIRONMENT_TEXT)


def is_damaged_error(e: sqlite3.Error) -> bool:
    code = _code(e)
    if code is not None and code in _DAMAGED_CODES:
        return True
    text = str(e).lower()
    return any(t in text for t in _DAMAGED_TEXT)


@dataclass(frozen=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: str
    qos: int
    retain: bool


@dataclass
class _Write:
    """One write: statements run in one transaction, in order with every other write."""

    statements: list[tuple[str, tuple]]
    kind: str = "event"  # "event" | "score" | "outbox" | "delivered"
    seq: int | None = None  # for "delivered": the outbox row it deletes


class EventStore:
    """Events, their scores and the outbox in one SQLite file."""

    def __init__(self, path: str | Path, lock: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._queue: deque[_Write] = deque()
        self._queued_scores = 0
        self._queued_enqueues = 0
        self._deleted: set[int] = set()  # outbox rows delivered, their DELETE still waiting
        self._failure: str | None = None
        self._last_attempt = 0.0
        self.dropped_writes = 0  # writes lost because the queue was full
        self.replayed_writes = 0
        if lock:
            self._take_lock()
        try:
            self._db = self._open(repair=lock)
        except BaseException:
            self._release_lock()
            raise

    # ------------------------------------------------------------------ opening

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _take_lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot create the lock file {self.lock_path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise StorageLockedError(
                f"storage folder {self.path.parent} is in use by another avarnet server{who}; "
                "give each server its own storage path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({ok})")
            db.executescript(SCHEMA)
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _open(self, repair: bool) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            if not is_damaged_error(e):
                raise StoreError(f"cannot open the event database {self.path}: {e}") from e
            if not repair:
                raise StoreError(f"the event database {self.path} is damaged: {e}") from e
            reason = str(e)
        kept = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        try:
            self.path.replace(kept)
            for suffix in ("-wal", "-journal"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.replace(kept.with_name(kept.name + suffix))
            self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(
                f"the event database {self.path} is damaged ({reason}) and cannot be moved "
                f"aside: {e.strerror}"
            ) from e
        log.warning(
            "event database %s is damaged (%s); kept as %s, starting a fresh one",
            self.path,
            reason,
            kept.name,
        )
        try:
            return self._connect()
        except sqlite3.Error as e:
            raise StoreError(f"cannot create the event database {self.path}: {e}") from e

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Scores kept as JSON in the events table (older files) move to the scores table."""
        rows = db.execute("SELECT id, scores FROM events WHERE scores != '[]'").fetchall()
        if not rows:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for event_id, text in rows:
                try:
                    pairs = json.loads(text)
                except ValueError:
                    pairs = []
                db.executemany(
                    "INSERT INTO scores (event_id, t, score) VALUES (?, ?, ?)",
                    [(event_id, float(t), float(s)) for t, s in pairs],
                )
                db.execute("UPDATE events SET scores = '[]' WHERE id = ?", (event_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            if self._queue:
                self.retry()
            if self._queue:
                log.warning(
                    "event database: %d write(s) could not be saved (%s)",
                    len(self._queue),
                    self._failure,
                )
            self._db.close()
            self._release_lock()

    # ------------------------------------------------------------------ writing

    @property
    def degraded(self) -> str | None:
        """Why writes are waiting in memory (None when the database takes them)."""
        with self._lock:
            if not self._queue:
                return None
            lost = f", {self.dropped_writes} lost" if self.dropped_writes else ""
            return f"{self._failure}; {len(self._queue)} write(s) waiting{lost}"

    @property
    def queued_writes(self) -> int:
        return len(self._queue)

    def stats(self) -> dict:
        with self._lock:
            return {
                "degraded": self.degraded,
                "queued_writes": len(self._queue),
                "dropped_writes": self.dropped_writes,
                "replayed_writes": self.replayed_writes,
            }

    def retry(self) -> bool:
        """Replay the writes waiting in memory; True when none is left."""
        with self._lock:
            self._replay()
            return not self._queue

    def _run(self, writes: list[_Write]) -> int | None:
        """Run ``writes`` in one transaction; the last row id inserted."""
        cur = None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for w in writes:
                for sql, args in w.statements:
                    cur = self._db.execute(sql, args)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return None if cur is None else cur.lastrowid

    def _applied(self, writes: list[_Write]) -> None:
        for w in writes:
            if w.kind == "score":
                self._queued_scores -= 1
            elif w.kind == "outbox":
                self._queued_enqueues -= 1
            elif w.kind == "delivered":
                self._deleted.discard(w.seq)

    def _replay(self) -> None:
        """Write what waits, oldest first, until done or the database refuses again."""
        self._last_attempt = time.monotonic()
        replayed = 0
        while self._queue:
            batch = [self._queue[i] for i in range(min(REPLAY_BATCH, len(self._queue)))]
            try:
                self._run(batch)
            except sqlite3.Error as e:
                if is_environment_error(e):
                    self._failure = self._reason(e)
                    break
                self._replay_one_by_one(len(batch))
                continue
            for _ in batch:
                self._queue.popleft()
            self._applied(batch)
            replayed += len(batch)
        self.replayed_writes += replayed
        if not self._queue and self._failure is not None:
            log.warning("event database: writes work again (%d saved late)", replayed)
            self._failure = None

    def _replay_one_by_one(self, n: int) -> None:
        """A batch failed for a reason other than the environment: write its writes alone and
        drop the one(s) the database rejects (a defect, reported)."""
        for _ in range(n):
            w = self._queue[0]
            try:
                self._run([w])
            except sqlite3.Error as e:
                if is_environment_error(e):
                    self._failure = self._reason(e)
                    return
                log.error("event database: a delayed write was rejected (%s); dropped", e)
                self.dropped_writes += 1
            self._queue.popleft()
            self._applied([w])

    @staticmethod
    def _reason(e: sqlite3.Error) -> str:
        return f"event database cannot be written: {' '.join(str(e).split())}"

    def _keep(self, w: _Write) -> None:
        if w.kind == "score" and self._queued_scores >= SCORE_REPLAY_LIMIT:
            self._lost(1)
            return
        if len(self._queue) >= REPLAY_LIMIT:
            old = self._queue.popleft()
            self._applied([old])
            self._lost(1)
        self._queue.append(w)
        if w.kind == "score":
            self._queued_scores += 1
        elif w.kind == "outbox":
            self._queued_enqueues += 1
        elif w.kind == "delivered":
            self._deleted.add(w.seq)

    def _lost(self, n: int) -> None:
        if not self.dropped_writes:
            log.warning(
                "event database: more than %d writes waiting; dropping the oldest", REPLAY_LIMIT
            )
        self.dropped_writes += n

    def _write(self, w: _Write) -> int | None:
        """Write now (returns the last row id) or keep it for later (returns None)."""
        with self._lock:
            if self._queue:
                if time.monotonic() - self._last_attempt >= RETRY_EVERY_S:
                    self._replay()
                if self._queue:
                    self._keep(w)
                    return None
            try:
                row = self._run([w])
            except sqlite3.Error as e:
                if not is_environment_error(e):
                    raise
                first = self._failure is None
                self._failure = self._reason(e)
                self._last_attempt = time.monotonic()
                if first:
                    log.warning("%s; keeping writes in memory until it works again", self._failure)
                self._keep(w)
                return None
            return row

    # ------------------------------------------------------------------ events

    @staticmethod
    def _score_rows(event_id: str, scores) -> list[tuple]:
        return [(event_id, float(t), float(s)) for t, s in scores]

    def insert(self, event: dict) -> None:
        cols = [c for c in EVENT_COLUMNS if c in event and c != "scores"]
        values = tuple(_finite(event[c]) for c in cols)
        statements = [
            (
                f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                values,
            )
        ]
        for row in self._score_rows(event["id"], event.get("scores") or []):
            statements.append(("INSERT INTO scores (event_id, t, score) VALUES (?, ?, ?)", row))
        self._write(_Write(statements))

    def update(self, event_id: str, **fields) -> None:
        """Set fields of an event. ``scores`` (the whole list) replaces the stored scores: use
        :meth:`append_score` for one more segment."""
        if not fields:
            return
        bad = set(fields) - set(EVENT_COLUMNS)
        if bad:
            raise ValueError(f"unknown event fields: {sorted(bad)}")
        statements: list[tuple[str, tuple]] = []
        scores = fields.pop("scores", None)
        if fields:
            values = tuple(_finite(v) for v in fields.values())
            statements.append(
                (
                    f"UPDATE events SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                    (*values, event_id),
                )
            )
        if scores is not None:
            statements.append(("DELETE FROM scores WHERE event_id = ?", (event_id,)))
            for row in self._score_rows(event_id, scores):
                statements.append(("INSERT INTO scores (event_id, t, score) VALUES (?, ?, ?)", row))
        self._write(_Write(statements))

    def append_score(self, event_id: str, t: float, score: float) -> None:
        """One more segment's score for an event (constant cost, however long the event)."""
        self._write(
            _Write(
                [
                    (
                        "INSERT INTO scores (event_id, t, score) VALUES (?, ?, ?)",
                        (event_id, float(t), float(score)),
                    )
                ],
                kind="score",
            )
        )

    def scores(self, event_id: str) -> list[list[float]]:
        """``[[epoch s, score], ...]`` of an event, in the order they were recorded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT t, score FROM scores WHERE event_id = ? ORDER BY rowid", (event_id,)
            ).fetchall()
        return [[r[0], r[1]] for r in rows]

    def _rows(self, rows: list[sqlite3.Row]) -> list[dict]:
        out = []
        for row in rows:
            d = dict(row)
            legacy = json.loads(d["scores"]) if d["scores"] not in (None, "", "[]") else []
            d["scores"] = legacy + self.scores(d["id"])
            d["clip_pruned"] = bool(d["clip_pruned"])
            d["final_label"] = d["corrected_label"] or d["label"]
            out.append(d)
        return out

    def get(self, event_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
            return None if row is None else self._rows([row])[0]

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
            return self._rows(rows)

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
            return self._rows(rows)

    def with_clips(self) -> list[dict]:
        """Events whose clip or snapshot is still on disk, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE clip IS NOT NULL OR snapshot IS NOT NULL ORDER BY start_time"
            ).fetchall()
            return self._rows(rows)

    # ------------------------------------------------------------------ outbox

    def enqueue(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> int | None:
        """Add a message to the outbox; its sequence number, or None while writes wait."""
        row = self._write(
            _Write(
                [
                    (
                        "INSERT INTO outbox (topic, payload, qos, retain, created) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (topic, payload, qos, int(retain), time.time()),
                    )
                ],
                kind="outbox",
            )
        )
        return None if row is None else int(row)

    def pending(self, limit: int = 100) -> list[OutboxMessage]:
        """The oldest messages of the outbox (written to the database, not yet delivered)."""
        with self._lock:
            skip = sorted(self._deleted)
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox ORDER BY seq LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
        done = set(skip)
        out = [OutboxMessage(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows if r[0] not in done]
        return out[:limit]

    def delivered(self, seq: int) -> None:
        self._write(
            _Write([("DELETE FROM outbox WHERE seq = ?", (seq,))], kind="delivered", seq=seq)
        )

    def outbox_size(self) -> int:
        """Messages not delivered yet, those waiting in memory included."""
        with self._lock:
            n = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            return n + self._queued_enqueues - len(self._deleted)
