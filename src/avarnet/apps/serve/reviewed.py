"""Reviewed events' clips as a class-per-folder dataset (``avarnet export-reviewed``).

``OUT/<class>/<camera>-<event id>.mp4``: true alarms under their (corrected) class, false alarms
under ``normal``. The folder mirrors the reviews exactly: exporting again after a review changed
moves the clip to its new class, and an event no longer reviewed loses its copy. Files in ``OUT``
that are not an event's export are left alone.

Nothing read from the event database becomes part of a path unchecked: a class must be one the
configured checkpoints know (or ``normal``) and a plain folder name, and camera, event and clip
names must be plain file names, so no record can write outside ``OUT`` or read outside the
storage folder. Copies go through a new temporary file of a random name (never through a file
or link already there) and are renamed into place.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ... import io
from ...checkpoint import class_name_problem, read_classes
from ...config import NORMAL_CLASS
from .config import ServeConfig
from .events import EventStore

log = logging.getLogger("avarnet")

CLIP_SUFFIX = ".mp4"
# camera names (config), event ids ("<epoch>.<micro>-<hex>") and clip files: no separator, no
# leading dot, nothing a shell or a file system treats specially
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


@dataclass
class ExportResult:
    """What :func:`export_reviewed` did."""

    out: Path
    classes: dict[str, int] = field(default_factory=dict)  # clips in the export per class
    skipped: int = 0  # reviewed events without a clip on disk (nor an earlier export)
    unknown: list[str] = field(default_factory=list)  # event ids whose class no checkpoint knows
    invalid: list[str] = field(default_factory=list)  # event ids whose camera or id is not plain
    removed: int = 0  # stale copies removed (a changed or withdrawn review)


def known_classes(config: ServeConfig) -> set[str]:
    """Every class of the configured cameras' checkpoints, and ``normal``."""
    classes = {NORMAL_CLASS}
    for path in config.checkpoints():
        if path.is_dir():  # an export folder (runtime onnx)
            from ...export import MANIFEST, check_manifest, read_manifest

            classes.update(check_manifest(read_manifest(path), path / MANIFEST).checkpoint.classes)
        else:
            classes.update(read_classes(path))
    return classes


def _plain(name) -> bool:
    return isinstance(name, str) and bool(PLAIN_NAME.match(name)) and ".." not in name


def export_name(event: dict) -> str | None:
    """The file name of an event's exported clip, or None when its camera or id is not plain."""
    if not (_plain(event.get("camera")) and _plain(event.get("id"))):
        return None
    return f"{event['camera']}-{event['id']}{CLIP_SUFFIX}"


def _existing(out: Path, names: set[str]) -> dict[str, list[Path]]:
    """Exported clips already in ``out`` (``out/<class>/<name>``, real files), by name."""
    found: dict[str, list[Path]] = {}
    if not out.is_dir():
        return found
    for folder in out.iterdir():
        if folder.is_symlink() or not folder.is_dir() or folder.name.startswith("."):
            continue
        for path in folder.iterdir():
            if path.name in names and not path.is_symlink() and path.is_file():
                found.setdefault(path.name, []).append(path)
    return found


def export_reviewed(config: ServeConfig, out: Path) -> ExportResult:
    """Mirror the reviewed events' clips into ``out`` (see the module docstring)."""
    out = Path(out)
    classes = known_classes(config)
    clips = config.storage.path / "clips"
    store = EventStore(config.storage.db, lock=False)  # a reader: a running server may hold it
    try:
        events = store.list(limit=10**9, oldest_first=True)
    finally:
        store.close()
    names = {n for n in map(export_name, events) if n}
    existing = _existing(out, names)
    result = ExportResult(out)
    wanted: set[Path] = set()
    for e in events:
        name = export_name(e)
        if e["review"] not in ("true", "false"):
            continue  # unreviewed: any earlier copy is stale (removed below)
        label = NORMAL_CLASS if e["review"] == "false" else e["final_label"]
        if name is None:
            result.invalid.append(repr(e["id"]))
            continue
        if class_name_problem(label) or label not in classes:  # a str first: it is hashed
            result.unknown.append(str(e["id"]))
            if not class_name_problem(label):  # e.g. its checkpoint left the config: a copy
                wanted.add(out / label / name)  # exported earlier stays (nothing is written)
            continue
        target = out / label / name
        source = clips / e["clip"] if _plain(e["clip"]) else None
        if source is not None and not source.is_symlink() and source.is_file():
            io.atomic_copy(source, target)
        else:  # the clip is gone (retention): an earlier export keeps it, under its class now
            copies = existing.get(name, [])
            if target not in copies:
                if not copies:
                    result.skipped += 1
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                copies[0].replace(target)
        wanted.add(target)
        result.classes[label] = result.classes.get(label, 0) + 1
    for paths in existing.values():
        for path in paths:
            if path not in wanted and path.exists():
                path.unlink()
                result.removed += 1
    if result.unknown:
        log.warning(
            "export-reviewed: %d reviewed event(s) skipped: their class is none of the "
            "configured checkpoints' classes (e.g. event %s)",
            len(result.unknown),
            result.unknown[0],
        )
    if result.invalid:
        log.warning(
            "export-reviewed: %d reviewed event(s) skipped: camera or event id is not a plain "
            "name (e.g. event %s)",
            len(result.invalid),
            result.invalid[0][:80],
        )
    return result
