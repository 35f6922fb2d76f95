"""Feature store on disk: one safetensors file per video plus an append-only index.

Layout of a store folder::

    spec.json            FeatureSpec (how the features were made) + dataset info
    index.jsonl          one JSON object per finished video (label, split, duration, fps, has_audio, T, file)
    failures.jsonl       one JSON object per input that could not be processed (path, reason)
    encoder_state.safetensors   BatchNorm statistics of a random-weight video encoder (weights == "random")
    features/<class>/<name>.safetensors   tensors "video" (T, Dv), "audio" (T, Da), "audio_mask" (T,)

Every feature file is written to a temporary name and renamed, so a file in ``features/`` is always
complete. The index is appended line by line (flushed and fsynced); a torn last line from a killed
run is ignored, and a feature file without an index line is re-indexed from its own metadata.

Several writers (processes on one machine, or on many machines over a shared filesystem with
working ``flock``) may fill one store at once (docs/scale.md):

    .lock                 flock'ed exclusively around every index / failures append and file commit
    .writers/<id>.lock    flock'ed by each live writer for its whole life (a lockable one is dead)
    .claims/<hash>.lock   flock'ed by the writer extracting that video (a killed writer's claim frees itself)

A video is committed only if the index does not already hold it (checked under ``.lock`` after
reading the lines other writers appended), so it is indexed once. Temporary files are removed only
by a writer that finds no other live writer, so a live writer's in-flight files are never deleted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy

from .config import FeatureSpec, spec_problem
from .errors import AvarnetError, NonFiniteError
from .io import TEMP_PREFIX, atomic_write, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import torch

log = logging.getLogger("avarnet")

SPEC_FILE = "spec.json"
INDEX_FILE = "index.jsonl"
FAILURES_FILE = "failures.jsonl"
ENCODER_STATE_FILE = "encoder_state.safetensors"
FEATURES_DIR = "features"
ENTRY_KEY = "entry"  # safetensors metadata key holding the entry's JSON
LOCK_FILE = ".lock"
WRITERS_DIR = ".writers"
CLAIMS_DIR = ".claims"
TEMP_GLOB = f"{TEMP_PREFIX}*"

Item = TypeVar("Item")


class StoreError(AvarnetError):
    """A feature store is missing, incompatible or damaged."""


@dataclass(frozen=True)
class Entry:
    """One video of the store; ``file`` is relative to the store root."""

    id: str
    file: str
    label: str
    split: str
    source: str
    duration: float
    fps: float
    has_audio: bool
    T: int
    extra: dict | None = None  # dataset-specific fields (e.g. multi-label codes)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if d["extra"] is None:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


__all__ = [
    "ClaimQueue",
    "Claimed",
    "Entry",
    "FeatureStore",
    "StoreError",
    "VideoClaim",
    "atomic_write_bytes",
    "atomic_write_text",
    "video_id",
]


def video_id(rel_path: str) -> str:
    """Stable, filesystem-safe id for a video given its path relative to the dataset root."""
    stem = Path(rel_path).with_suffix("").as_posix()
    safe = re.sub(r"[^A-Za-z0-9._/-]+", "_", stem).strip("_") or "video"
    digest = hashlib.sha1(rel_path.encode("utf-8")).hexdigest()[:8]
    return f"{safe}-{digest}"


def _append_jsonl(path: Path, record: dict) -> None:
    """Append one record; a torn last line left by a killed writer is closed off first."""
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(
            ("\n" if torn else "") + json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        )
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file, read as bytes line by line.

    A torn last line (a killed writer; it may end inside a multi-byte UTF-8 character) is skipped
    with a warning, as is any other line that is not one JSON object.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    out = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
            continue
        torn = number == len(lines) and not data.endswith(b"\n")
        what = "torn last line (an interrupted write)" if torn else f"unreadable line {number}"
        log.warning("%s: skipped a %s", path, what)
    return out


class FeatureStore:
    """A folder of per-video features. Use :meth:`create` to start one, :meth:`open` to read one."""

    def __init__(self, root: Path, spec: FeatureSpec, info: dict[str, Any]):
        self.root = Path(root)
        self.spec = spec
        self.info = info  # dataset-level info: classes, data root, split seed, ...
        self._entries: dict[str, Entry] = {}
        for rec in _read_jsonl(self.root / INDEX_FILE):
            e = Entry.from_dict(rec)
            self._entries[e.id] = e
        self._index_offset = 0  # bytes of index.jsonl already read by refresh()
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._thread_lock = threading.RLock()
        self._writer: WriterRegistration | None = None

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, spec: FeatureSpec, info: dict[str, Any]) -> FeatureStore:
        """Open ``root`` for writing; a store already there must have the same feature spec."""
        root = Path(root)
        spec_path = root / SPEC_FILE
        if spec_path.exists():
            store = cls.open(root)
            if store.spec.to_dict() != spec.to_dict():
                raise StoreError(
                    f"{root} holds features made with a different spec; use a new output folder "
                    f"(existing: {store.spec.to_dict()}, requested: {spec.to_dict()})"
                )
            return store
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            spec_path, json.dumps({"spec": spec.to_dict(), "info": info}, indent=2, allow_nan=False)
        )
        return cls(root, spec, info)

    @classmethod
    def open(cls, root: str | Path) -> FeatureStore:
        root = Path(root)
        try:
            doc = json.loads((root / SPEC_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(
                f"{root} is not a feature store (no {SPEC_FILE}); run `avarnet extract` first"
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{root / SPEC_FILE} is damaged: {e}") from None
        try:
            spec = FeatureSpec.from_dict(doc["spec"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreError(
                f"{root / SPEC_FILE} is not a feature spec: {type(e).__name__}: {e}"
            ) from None
        if spec_problem(spec):
            raise StoreError(f"{root / SPEC_FILE}: {spec_problem(spec)}")
        return cls(root, spec, doc.get("info") or {})

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files killed writers left behind; returns how many.

        Does nothing while another writer is alive (its in-flight files look the same), so it is
        safe to call at any time; the last writer to start alone cleans up.
        """
        with self.lock():
            own = self._writer.path if self._writer is not None else None
            live = 0
            for path in sorted((self.root / WRITERS_DIR).glob("*.lock")):
                if path == own:
                    continue
                if _is_held(path):
                    live += 1
                else:
                    path.unlink(missing_ok=True)  # a dead writer's registration
            if live:
                return 0
            stale = [p for p in self.root.rglob(TEMP_GLOB) if WRITERS_DIR not in p.parts]
            for p in stale:
                p.unlink(missing_ok=True)
            return len(stale)

    # -- concurrent writers --------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's exclusive lock (re-entrant in this object; other processes wait)."""
        with self._thread_lock:
            if self._lock_depth == 0:
                fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # closing releases the flock
                    self._lock_fd = None

    def register_writer(self) -> WriterRegistration:
        """Mark this process as a live writer of the store (idempotent); cleans up if alone."""
        if self._writer is None:
            with self.lock():
                self._writer = WriterRegistration.create(self.root / WRITERS_DIR)
                removed = self.remove_stale_temp_files()
            if removed:
                log.info(
                    "%s: removed %d temporary files left by killed writers", self.root, removed
                )
        return self._writer

    def close_writer(self) -> None:
        """End this writer's registration (also happens when the process exits)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def refresh(self) -> int:
        """Read index lines other writers appended since the last call; returns how many were new."""
        path = self.root / INDEX_FILE
        try:
            with open(path, "rb") as f:
                f.seek(self._index_offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1  # an unfinished last line is read once it is complete
        new = 0
        for raw in data[:end].split(b"\n"):
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(rec, dict) and "id" in rec:
                e = Entry.from_dict(rec)
                new += e.id not in self._entries
                self._entries[e.id] = e
        self._index_offset += end
        return new

    def claim(self, vid: str, wait: bool = False) -> VideoClaim | None:
        """Claim a video for extraction: None when another live writer holds it (``wait``: block).

        A claim is an flock: it is released by :meth:`VideoClaim.release` or when its process dies.
        Check :meth:`is_done` after claiming: another writer may have finished the video meanwhile.
        """
        self.register_writer()
        digest = hashlib.sha1(vid.encode("utf-8")).hexdigest()[:24]
        return VideoClaim.acquire(self.root / CLAIMS_DIR / f"{digest}.lock", wait)

    def check_classes(self, classes: list[str]) -> None:
        """Refuse to add videos of classes this store was not made for (its classes are fixed)."""
        known = self.info.get("classes")
        new = sorted(set(classes) - set(known)) if known is not None else []
        if new:
            raise StoreError(
                f"{self.root} was made for classes {known}; the dataset now also has {new}: "
                "extract into a new store folder"
            )

    def update_info(self, **fields: Any) -> None:
        self.info.update(fields)
        doc = {"spec": self.spec.to_dict(), "info": self.info}
        atomic_write_text(self.root / SPEC_FILE, json.dumps(doc, indent=2, allow_nan=False))

    # -- entries -----------------------------------------------------------------------------
    @property
    def entries(self) -> list[Entry]:
        return sorted(self._entries.values(), key=lambda e: e.id)

    def split(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.split == name]

    @property
    def classes(self) -> list[str]:
        return list(self.info.get("classes") or sorted({e.label for e in self.entries}))

    def is_done(self, vid: str) -> bool:
        """True when the video's feature file is complete; re-indexes a file a killed run left unindexed."""
        if vid in self._entries:
            return (self.root / self._entries[vid].file).exists()
        path = self.feature_path(vid)
        if not path.exists():
            return False
        self.register_writer()
        with self.lock():
            self.refresh()  # another writer may have indexed it meanwhile
            if vid in self._entries:
                return (self.root / self._entries[vid].file).exists()
            try:
                with safe_open(str(path), framework="numpy") as f:
                    entry = Entry.from_dict(json.loads(f.metadata()[ENTRY_KEY]))
            except Exception:
                path.unlink(missing_ok=True)  # not ours or unreadable: redo it
                return False
            _append_jsonl(self.root / INDEX_FILE, entry.to_dict())
            self._entries[vid] = entry
        return True

    def is_done_now(self, vid: str) -> bool:
        """:meth:`is_done` after reading what other writers indexed since the last look."""
        if vid not in self._entries:
            with self.lock():
                self.refresh()
        return self.is_done(vid)

    def feature_path(self, vid: str) -> Path:
        return self.root / FEATURES_DIR / f"{vid}.safetensors"

    def write(self, entry: Entry, tensors: dict[str, np.ndarray]) -> bool:
        """Atomically write one video's tensors, then index it; False if another writer already had.

        Non-finite features are refused (:class:`NonFiniteError`). The check, the file's rename and
        the index line happen under the store lock, so a video is indexed once however many
        writers finish it.
        """
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        for name, a in arrays.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise NonFiniteError(
                    f"{entry.source}: {name} features hold NaN or infinity; not stored"
                )
        self.register_writer()
        with self.lock():
            self.refresh()
            if entry.id in self._entries and (self.root / self._entries[entry.id].file).exists():
                return False
            meta = {ENTRY_KEY: json.dumps(entry.to_dict(), allow_nan=False)}
            atomic_write(
                self.root / entry.file, lambda tmp: save_numpy(arrays, str(tmp), metadata=meta)
            )
            _append_jsonl(self.root / INDEX_FILE, entry.to_dict())
            self._entries[entry.id] = entry
        return True

    def load(self, entry: Entry) -> dict[str, np.ndarray]:
        """All tensors of one video as numpy arrays (video (T, Dv), audio (T, Da), audio_mask (T,), ...)."""
        path = self.root / entry.file
        try:
            with safe_open(str(path), framework="numpy") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except FileNotFoundError:
            raise StoreError(f"feature file missing: {path}") from None
        except Exception as e:
            raise StoreError(f"cannot read feature file {path}: {e}") from None

    def load_rows(
        self,
        entry: Entry,
        start: int,
        stop: int,
        keys: tuple[str, ...] = ("video", "audio", "audio_mask"),
    ) -> dict[str, np.ndarray]:
        """Segments ``start:stop`` of the time-major tensors ``keys`` of one video, reading nothing else."""
        path = self.root / entry.file
        try:
            with safe_open(str(path), framework="numpy") as f:
                out = {}
                for k in (k for k in keys if k in f.keys()):
                    part = f.get_slice(k)
                    out[k] = part[start : min(stop, part.get_shape()[0])]
                return out
        except FileNotFoundError:
            raise StoreError(f"feature file missing: {path}") from None
        except Exception as e:
            raise StoreError(f"cannot read feature file {path}: {e}") from None

    def iter_load(self, entries: list[Entry]) -> Iterator[tuple[Entry, dict[str, np.ndarray]]]:
        for e in entries:
            yield e, self.load(e)

    # -- failures ----------------------------------------------------------------------------
    def record_failure(self, source: str, reason: str) -> None:
        self.register_writer()
        with self.lock():
            _append_jsonl(self.root / FAILURES_FILE, {"path": source, "reason": reason})

    @property
    def failures(self) -> list[dict]:
        """Latest failure per path, minus paths that have since been extracted."""
        done = {e.source for e in self._entries.values()}
        latest = {r["path"]: r for r in _read_jsonl(self.root / FAILURES_FILE)}
        return [r for p, r in latest.items() if p not in done]

    # -- encoder state -----------------------------------------------------------------------
    # (torch only here: decoding and writing processes that open a store never import it)
    def save_encoder_state(self, state: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file as save_torch

        tensors = {k: v.contiguous() for k, v in state.items()}
        atomic_write(self.root / ENCODER_STATE_FILE, lambda tmp: save_torch(tensors, str(tmp)))

    def load_encoder_state(self) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file as load_torch

        path = self.root / ENCODER_STATE_FILE
        return load_torch(str(path)) if path.exists() else None


@contextmanager
def store_lock(root: str | Path) -> Iterator[None]:
    """The lock of the store at ``root`` (created if need be), e.g. while the store itself is created."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_held(path: Path) -> bool:
    """True when another open file holds an flock on ``path`` (its writer is alive)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class WriterRegistration:
    """A live writer: an exclusively flock'ed file under ``.writers/`` for the writer's lifetime."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def create(cls, folder: Path) -> WriterRegistration:
        folder.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9.-]+", "_", socket.gethostname())[:40] or "host"
        path = folder / f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class VideoClaim:
    """An flock on ``.claims/<hash>.lock`` held while one writer extracts one video."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, wait: bool) -> VideoClaim | None:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, fd)
            os.close(fd)  # its holder released and removed it meanwhile: claim the new file

    def release(self) -> None:
        """Remove the claim file, then unlock (a waiter that opened the old file retries)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> VideoClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def source_id(item: Any) -> str:
    """The store id of a dataset item with a ``rel_path`` (:func:`video_id` of it)."""
    return video_id(item.rel_path)


@dataclass(frozen=True)
class Claimed(Generic[Item]):
    """A video handed out by :class:`ClaimQueue`, with this writer's claim on it."""

    item: Item
    vid: str
    claim: VideoClaim

    def release(self) -> None:
        self.claim.release()


class ClaimQueue(Generic[Item]):
    """The videos still to extract into ``store``, each handed out with this writer's claim on it.

    ``vid``: an item's store id (by default :func:`video_id` of its ``rel_path``). Videos already in
    the store are passed to ``on_skip``. A video another live writer has claimed is put aside and
    looked at again later; :meth:`next` with ``block=True`` waits for such a claim, which callers
    do only while they hold no claim of their own (so two writers never wait on each other).
    """

    def __init__(
        self,
        store: FeatureStore,
        items: Iterable[Item],
        vid: Callable[[Item], str] = source_id,
        on_skip: Callable[[Item], None] = lambda item: None,
    ):
        self.store, self.vid, self.on_skip = store, vid, on_skip
        self.todo: deque[Item] = deque(items)
        self.deferred: deque[Item] = deque()

    @property
    def empty(self) -> bool:
        return not self.todo and not self.deferred

    def _take(self, item: Item, vid: str, claim: VideoClaim) -> Claimed[Item] | None:
        if self.store.is_done_now(vid):  # another writer finished it before we claimed it
            claim.release()
            self.on_skip(item)
            return None
        return Claimed(item, vid, claim)

    def next(self, block: bool = False) -> Claimed[Item] | None:
        """The next claimed video, or None when none can be claimed now (or none is left)."""
        while self.todo:
            item = self.todo.popleft()
            vid = self.vid(item)
            if self.store.is_done(vid):
                self.on_skip(item)
                continue
            claim = self.store.claim(vid)
            if claim is None:
                self.deferred.append(item)
                continue
            taken = self._take(item, vid, claim)
            if taken is not None:
                return taken
        while self.deferred:
            item = self.deferred[0]
            vid = self.vid(item)
            if self.store.is_done_now(vid):
                self.deferred.popleft()
                self.on_skip(item)
                continue
            claim = self.store.claim(vid, wait=block)
            if claim is None:
                return None
            self.deferred.popleft()
            taken = self._take(item, vid, claim)
            if taken is not None:
                return taken
        return None
