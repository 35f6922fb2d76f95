"""Frames for figures, decoded from the original videos named in a feature store's index."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avarnet.media import MediaError, read_frames
from avarnet.store import Entry, FeatureStore

THUMB_EDGE = 96  # pixels on the shorter side of a thumbnail


def video_path(store: FeatureStore, entry: Entry) -> Path | None:
    """The original video of an entry: its source, absolute or relative to the store's data root."""
    if not entry.source:
        return None
    src = Path(entry.source)
    if src.is_absolute():
        return src
    root = store.info.get("data_root")
    return Path(root) / src if root else None


def grab_frames(
    path: Path | None, times: Sequence[float], edge: int = THUMB_EDGE
) -> tuple[list[np.ndarray] | None, str | None]:
    """(RGB frames at ``times`` (seconds, any order), None) or (None, why they could not be read)."""
    if path is None:
        return None, "the store does not record where this video is"
    if not Path(path).is_file():
        return None, f"video not found: {path}"
    order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
    try:
        got = list(read_frames(path, [float(times[i]) for i in order], shortest_edge=edge))
    except (MediaError, OSError, ValueError) as e:
        return None, f"cannot decode {path}: {e}"
    frames: list[np.ndarray] = [np.empty(0)] * len(times)
    for k, i in enumerate(order):
        frames[i] = got[k]
    return frames, None
