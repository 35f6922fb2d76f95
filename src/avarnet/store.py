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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from .config import FeatureSpec, spec_problem
from .errors import AvarnetError, NonFiniteError
from .io import TEMP_PREFIX, atomic_write, atomic_write_bytes, atomic_write_text

log = logging.getLogger("avarnet")

SPEC_FILE = "spec.json"
INDEX_FILE = "index.jsonl"
FAILURES_FILE = "failures.jsonl"
ENCODER_STATE_FILE = "encoder_state.safetensors"
FEATURES_DIR = "features"
ENTRY_KEY = "entry"  # safetensors metadata key holding the entry's JSON


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


__all__ = ["Entry", "FeatureStore", "StoreError", "atomic_write_bytes", "atomic_write_text", "video_id"]


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
        f.write(("\n" if torn else "") + json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
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

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, spec: FeatureSpec, info: dict[str, Any]) -> FeatureStore:
        """Open ``root`` for writing; a store already there must have the same feature spec."""
        root = Path(root)
        spec_path = root / SPEC_FILE
        if spec_path.exists():
            store = cls.open(root)
            store.remove_stale_temp_files()
            if store.spec.to_dict() != spec.to_dict():
                raise StoreError(
                    f"{root} holds features made with a different spec; use a new --out folder "
                    f"(existing: {store.spec.to_dict()}, requested: {spec.to_dict()})"
                )
            return store
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(spec_path, json.dumps({"spec": spec.to_dict(), "info": info}, indent=2, allow_nan=False))
        return cls(root, spec, info)

    @classmethod
    def open(cls, root: str | Path) -> FeatureStore:
        root = Path(root)
        try:
            doc = json.loads((root / SPEC_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{root} is not a feature store (no {SPEC_FILE}); run `avarnet extract` first") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{root / SPEC_FILE} is damaged: {e}") from None
        try:
            spec = FeatureSpec.from_dict(doc["spec"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"{root / SPEC_FILE} is not a feature spec: {type(e).__name__}: {e}") from None
        if spec_problem(spec):
            raise StoreError(f"{root / SPEC_FILE}: {spec_problem(spec)}")
        return cls(root, spec, doc.get("info") or {})

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files a killed writer left behind (call only with no other writer running)."""
        stale = list(self.root.rglob(f"{TEMP_PREFIX}*"))
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

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
        try:
            with safe_open(str(path), framework="numpy") as f:
                entry = Entry.from_dict(json.loads(f.metadata()[ENTRY_KEY]))
        except Exception:
            path.unlink(missing_ok=True)  # not ours or unreadable: redo it
            return False
        _append_jsonl(self.root / INDEX_FILE, entry.to_dict())
        self._entries[vid] = entry
        return True

    def feature_path(self, vid: str) -> Path:
        return self.root / FEATURES_DIR / f"{vid}.safetensors"

    def write(self, entry: Entry, tensors: dict[str, np.ndarray]) -> None:
        """Atomically write one video's tensors, then index it; non-finite features are refused."""
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        for name, a in arrays.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise NonFiniteError(f"{entry.source}: {name} features hold NaN or infinity; not stored")
        meta = {ENTRY_KEY: json.dumps(entry.to_dict(), allow_nan=False)}
        atomic_write(self.root / entry.file, lambda tmp: save_numpy(arrays, str(tmp), metadata=meta))
        _append_jsonl(self.root / INDEX_FILE, entry.to_dict())
        self._entries[entry.id] = entry

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

    def iter_load(self, entries: list[Entry]) -> Iterator[tuple[Entry, dict[str, np.ndarray]]]:
        for e in entries:
            yield e, self.load(e)

    # -- failures ----------------------------------------------------------------------------
    def record_failure(self, source: str, reason: str) -> None:
        _append_jsonl(self.root / FAILURES_FILE, {"path": source, "reason": reason})

    @property
    def failures(self) -> list[dict]:
        """Latest failure per path, minus paths that have since been extracted."""
        done = {e.source for e in self._entries.values()}
        latest = {r["path"]: r for r in _read_jsonl(self.root / FAILURES_FILE)}
        return [r for p, r in latest.items() if p not in done]

    # -- encoder state -----------------------------------------------------------------------
    def save_encoder_state(self, state: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.contiguous() for k, v in state.items()}
        atomic_write(self.root / ENCODER_STATE_FILE, lambda tmp: save_torch(tensors, str(tmp)))

    def load_encoder_state(self) -> dict[str, torch.Tensor] | None:
        path = self.root / ENCODER_STATE_FILE
        return load_torch(str(path)) if path.exists() else None
