"""Dataset layouts, splits, windows of L segments, torch Dataset + collate."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import MODALITIES, SPLITS
from .errors import AvarnetError
from .store import Entry, FeatureStore

log = logging.getLogger("avarnet")

# Containers we look at inside class folders (audio-only ones too: they are reported, not silently ignored).
MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .ts .flv .wmv .3gp .ogv .m4a .mp3 .wav .aac .ogg .flac".split()
)
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)  # train / val / test
IGNORE_INDEX = -100  # label of padded steps (torch cross-entropy's ignore_index)
# Training windows (TrainConfig.windows): "offline" as evaluate scores a clip, "live" as a stream
# scores each segment (the window ending at it, read at its last step)
WINDOWS = ("offline", "live")


class DatasetError(AvarnetError):
    """A dataset folder or split file is unusable."""


@dataclass(frozen=True)
class VideoItem:
    path: Path
    rel_path: str  # relative to the dataset root, POSIX style
    label: str
    split: str


def stratified_split(labels: Sequence[str], seed: int, fractions=DEFAULT_FRACTIONS) -> list[str]:
    """Deterministic per-class train/val/test assignment; every class with >= 3 items gets one of each."""
    rng = np.random.default_rng(seed)
    out = [""] * len(labels)
    for cls in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == cls]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        n = len(idx)
        n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        for rank, i in enumerate(idx):
            out[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def read_splits_csv(path: Path) -> dict[str, str]:
    """``path,split`` rows (paths relative to the dataset root) -> {rel_path: split}.

    A UTF-8 byte-order mark (spreadsheets write one) is ignored.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: not a UTF-8 CSV file ({e})") from None
    if not rows or not {"path", "split"} <= set(rows[0]):
        raise DatasetError(f"{path}: expected a header 'path,split'")
    bad = sorted({r["split"] for r in rows} - set(SPLITS))
    if bad:
        raise DatasetError(f"{path}: unknown split names {bad}; use {list(SPLITS)}")
    return {Path(r["path"] or "").as_posix(): r["split"] for r in rows}


@dataclass
class DatasetScan:
    """What :func:`scan_dataset` found: videos, classes, and folders or links it could not use."""

    items: list[VideoItem]
    classes: list[str]
    problems: list[tuple[str, str]]  # (path relative to the root, one-line reason)


def _walk_class(root: Path, class_dir: Path, seen: set, problems: list) -> list[Path]:
    """Media files under one class folder; unreadable folders, loops and broken links are reported."""
    files: list[Path] = []

    def onerror(e: OSError) -> None:
        where = Path(e.filename) if e.filename else class_dir
        problems.append((_rel(root, where), f"cannot read folder ({e.strerror or e})"))

    for top, dirs, names in os.walk(class_dir, onerror=onerror, followlinks=True):
        here = Path(top)
        try:
            key = (here.stat().st_dev, here.stat().st_ino)
        except OSError as e:
            problems.append((_rel(root, here), f"cannot read folder ({e.strerror or e})"))
            dirs[:] = []
            continue
        if key in seen:
            problems.append(
                (_rel(root, here), "symbolic link loop (folder already scanned); skipped")
            )
            dirs[:] = []
            continue
        seen.add(key)
        dirs.sort()
        for name in names:
            f = here / name
            if name.startswith(".") or f.suffix.lower() not in MEDIA_EXTENSIONS:
                continue
            if f.is_file():
                files.append(f)
            elif f.is_symlink():
                problems.append((_rel(root, f), "broken symbolic link"))
    return files


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def scan_dataset(root: str | Path, seed: int = 0) -> DatasetScan:
    """Videos of a VAAR-style folder ``ROOT/<class>/<video>`` with their split, and what was skipped.

    Every class folder names a class, even one that cannot be read (it is reported instead).
    Folders are followed through symbolic links once; a directory named like a video is a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    found: list[tuple[str, str, Path]] = []
    problems: list[tuple[str, str]] = []
    seen: set = set()
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    damaged: set[str] = set()  # classes with a folder that could not be read
    for class_dir in class_dirs:
        before = len(problems)
        for f in sorted(_walk_class(root, class_dir, seen, problems)):
            found.append((f.relative_to(root).as_posix(), class_dir.name, f))
        if len(problems) > before:
            damaged.add(class_dir.name)
    if not found:
        detail = f" ({problems[0][0]}: {problems[0][1]})" if problems else ""
        raise DatasetError(f"no videos under {root}: expected {root}/<class>/<video>.mp4{detail}")
    classes = sorted({label for _, label, _ in found} | damaged)
    splits_file = root / "splits.csv"
    if splits_file.exists():
        table = read_splits_csv(splits_file)
        missing = [rel for rel, _, _ in found if rel not in table]
        if missing:
            raise DatasetError(
                f"{splits_file} has no split for {len(missing)} videos, e.g. {missing[0]}"
            )
        splits = [table[rel] for rel, _, _ in found]
    else:
        splits = stratified_split([label for _, label, _ in found], seed)
    items = [VideoItem(p, rel, label, s) for (rel, label, p), s in zip(found, splits, strict=True)]
    return DatasetScan(items, classes, problems)


def discover_dataset(root: str | Path, seed: int = 0) -> tuple[list[VideoItem], list[str]]:
    """(items, classes) of :func:`scan_dataset`; each skipped folder or link is logged on one line."""
    scan = scan_dataset(root, seed)
    for rel, reason in scan.problems:
        log.warning("%s: %s", rel, reason)
    return scan.items, scan.classes


# -- model inputs -----------------------------------------------------------------------------


def select_inputs(tensors: dict[str, np.ndarray], modality: str) -> np.ndarray:
    """Per-segment model input (T, D) of one video: fused = [video | audio], or one sense alone."""
    if modality == "fused":
        return np.concatenate([tensors["video"], tensors["audio"]], axis=1)
    if modality in ("audio", "video"):
        return tensors[modality]
    raise ValueError(f"unknown modality {modality!r}; use one of {MODALITIES}")


def input_dims(spec_video_dim: int, spec_audio_dim: int, modality: str) -> tuple[int, int]:
    """(video part, audio part) widths of the model input for a modality."""
    return {
        "fused": (spec_video_dim, spec_audio_dim),
        "video": (spec_video_dim, 0),
        "audio": (0, spec_audio_dim),
    }[modality]


@dataclass
class Normalizer:
    """Per-feature z-score from training statistics; missing audio stays exactly zero afterwards."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)

    @classmethod
    def fit(cls, arrays: Sequence[np.ndarray]) -> Normalizer:
        x = np.concatenate(arrays, axis=0).astype(np.float64)
        return cls(x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32))

    @classmethod
    def fit_stream(cls, arrays: Iterable[np.ndarray]) -> Normalizer:
        """:meth:`fit` in one pass holding one array at a time (Chan et al.'s pairwise merge, float64)."""
        n, mean, m2 = 0, None, None
        for a in arrays:
            x = np.asarray(a, dtype=np.float64)
            if not len(x):
                continue
            nb, mb = len(x), x.mean(0)
            m2b = ((x - mb) ** 2).sum(0)
            if mean is None:
                n, mean, m2 = nb, mb, m2b
                continue
            delta, total = mb - mean, n + nb
            mean = mean + delta * (nb / total)
            m2 = m2 + m2b + delta**2 * (n * nb / total)
            n = total
        if mean is None:
            raise ValueError("cannot fit a normaliser on no data")
        std = np.sqrt(m2 / n)
        return cls(mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32))

    def __call__(self, x: np.ndarray, blank: np.ndarray | None = None) -> np.ndarray:
        """Normalise (T, D); ``blank`` (T, D) bool marks entries to keep at zero (a missing sense)."""
        y = ((x - self.mean) / self.std).astype(np.float32)
        if blank is not None:
            y[blank] = 0.0
        return y


@dataclass
class Clip:
    """One video ready for the temporal model."""

    entry: Entry
    x: np.ndarray  # (T, D) normalised
    label: int
    step_labels: np.ndarray | None = None  # (T,) per-segment class index, if known


def missing_mask(tensors: dict[str, np.ndarray], modality: str) -> np.ndarray | None:
    """(T, D) True where the input has no signal (segments without audio)."""
    if modality == "video" or "audio_mask" not in tensors:
        return None
    no_audio = ~tensors["audio_mask"].astype(bool)  # (T,)
    T, Da = tensors["audio"].shape
    Dv = tensors["video"].shape[1] if modality == "fused" else 0
    blank = np.zeros((T, Dv + Da), dtype=bool)
    blank[no_audio, Dv:] = True
    return blank


def load_clips(
    store: FeatureStore,
    entries: Sequence[Entry],
    modality: str,
    classes: Sequence[str],
    norm: Normalizer | None,
) -> list[Clip]:
    """Model inputs for the given entries (normalised when ``norm`` is given)."""
    index = {c: i for i, c in enumerate(classes)}
    clips = []
    for entry, tensors in store.iter_load(list(entries)):
        if entry.label not in index:
            raise DatasetError(
                f"{store.root}: {entry.source} has class {entry.label!r}, not one of {list(classes)}"
            )
        x = select_inputs(tensors, modality)
        if norm is not None:
            x = norm(x, missing_mask(tensors, modality))
        clips.append(Clip(entry, x, index[entry.label]))
    return clips


def window_starts(T: int, L: int, stride: int) -> list[int]:
    """Start indices of windows of L segments covering 0..T-1 (the last window ends at T)."""
    if T <= L:
        return [0]
    starts = list(range(0, T - L + 1, max(1, stride)))
    if starts[-1] != T - L:
        starts.append(T - L)
    return starts


def live_windows(T: int, L: int) -> list[tuple[int, int]]:
    """(start, length) of the window that scores each segment t of a live stream: segments
    max(0, t-L+1) .. t, so the first L-1 windows are shorter than L."""
    return [(max(0, t - L + 1), min(L, t + 1)) for t in range(T)]


def training_windows(
    T: int, L: int, stride: int, windows: str = "offline"
) -> list[tuple[int, int]]:
    """(start, length) of the training windows of a clip of T segments.

    ``offline``: windows of L segments every ``stride`` (:func:`window_starts`), every step
    supervised. ``live``: :func:`live_windows`, one per segment, supervised at the last step only
    (``stride`` does not apply: each live decision is one window).
    """
    if windows == "live":
        return live_windows(T, L)
    if windows != "offline":
        raise ValueError(f"unknown training windows {windows!r}; use one of {WINDOWS}")
    return [(s, min(L, T - s)) for s in window_starts(T, L, stride)]


def window_labels(labels: int | np.ndarray, n: int, seq_len: int, live: bool) -> np.ndarray:
    """(L,) targets of a window of n real steps: ``labels`` (one class or (n,) per step) on the
    real steps, or on the last one only for a live window; IGNORE_INDEX elsewhere."""
    y = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    if live:
        y[n - 1] = labels[n - 1] if isinstance(labels, np.ndarray) else labels
    else:
        y[:n] = labels
    return y


class WindowDataset(Dataset):
    """Windows of L consecutive segments drawn from each clip; shorter clips are padded and masked.

    ``windows``: ``offline`` (every ``stride`` segments) or ``live`` (one window per segment,
    ending at it, supervised at its last step), see :func:`training_windows`.
    """

    def __init__(self, clips: Sequence[Clip], seq_len: int, stride: int, windows: str = "offline"):
        self.clips = list(clips)
        self.seq_len = seq_len
        self.live = windows == "live"
        self.index = [
            (c, s, n)
            for c, clip in enumerate(self.clips)
            for s, n in training_windows(len(clip.x), seq_len, stride, windows)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, s, n = self.index[i]
        clip = self.clips[c]
        x = clip.x[s : s + n]  # (n, D), n <= L
        xs = np.zeros((self.seq_len, x.shape[1]), dtype=np.float32)
        xs[:n] = x
        labels = clip.step_labels[s : s + n] if clip.step_labels is not None else clip.label
        y = window_labels(labels, n, self.seq_len, self.live)
        mask = np.zeros(self.seq_len, dtype=bool)
        mask[:n] = True
        return {
            "x": torch.from_numpy(xs),
            "mask": torch.from_numpy(mask),
            "y": torch.from_numpy(y),
            "clip": c,
        }


def window_item(
    x: np.ndarray, seq_len: int, label: int | np.ndarray, clip: int, live: bool = False
) -> dict[str, torch.Tensor]:
    """One window (l, D), l <= L, padded to L: x (L, D), mask (L,), y (L,) with IGNORE_INDEX on
    padding (and, for a ``live`` window, on every step but the last)."""
    n = len(x)
    xs = np.zeros((seq_len, x.shape[1]), dtype=np.float32)
    xs[:n] = x
    y = window_labels(label, n, seq_len, live)
    mask = np.zeros(seq_len, dtype=bool)
    mask[:n] = True
    return {
        "x": torch.from_numpy(xs),
        "mask": torch.from_numpy(mask),
        "y": torch.from_numpy(y),
        "clip": clip,
    }


class StreamingWindowDataset(Dataset):
    """:class:`WindowDataset` that reads each window from the store when asked for it.

    Holds only the window index (two int arrays) and the entries, so memory does not grow with
    the store; a window is read with a slice of its feature file and normalised as
    :func:`load_clips` would, so the items equal WindowDataset's over ``load_clips`` exactly.
    """

    def __init__(
        self,
        store: FeatureStore,
        entries: Sequence[Entry],
        modality: str,
        classes: Sequence[str],
        norm: Normalizer | None,
        seq_len: int,
        stride: int,
        windows: str = "offline",
    ):
        self.store, self.entries, self.modality, self.norm, self.seq_len = (
            store,
            list(entries),
            modality,
            norm,
            seq_len,
        )
        self.live = windows == "live"
        index = {c: i for i, c in enumerate(classes)}
        for e in self.entries:
            if e.label not in index:
                raise DatasetError(
                    f"{store.root}: {e.source} has class {e.label!r}, not one of {list(classes)}"
                )
        self.labels = np.array([index[e.label] for e in self.entries], dtype=np.int64)
        spans = [
            np.asarray(training_windows(e.T, seq_len, stride, windows), dtype=np.int64).reshape(
                -1, 2
            )
            for e in self.entries
        ]
        self.clip = np.repeat(np.arange(len(self.entries), dtype=np.int64), [len(w) for w in spans])
        both = np.concatenate(spans) if spans else np.zeros((0, 2), np.int64)
        self.start, self.length = both[:, 0].copy(), both[:, 1].copy()

    def __len__(self) -> int:
        return len(self.clip)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, s, n = int(self.clip[i]), int(self.start[i]), int(self.length[i])
        tensors = self.store.load_rows(self.entries[c], s, s + n)
        x = select_inputs(tensors, self.modality)
        if self.norm is not None:
            x = self.norm(x, missing_mask(tensors, self.modality))
        return window_item(x, self.seq_len, int(self.labels[c]), c, self.live)


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    """One collate for windows and whole videos: sequences padded to the longest, others stacked.

    ``x`` (l, D) -> (B, L, D); ``mask`` (B, L) True at real steps (taken from the items when they
    carry one); any other tensor whose first dimension is the item's length (per-step labels or
    targets) -> (B, L, ...) zero-padded; numbers -> (B,).
    """
    lengths = [len(b["x"]) for b in batch]
    L = max(lengths)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, 0) * (t.dim() - 1) + (0, L - len(t))) if len(t) < L else t

    out = {"x": torch.stack([pad(b["x"]) for b in batch])}
    if "mask" in batch[0]:
        out["mask"] = torch.stack([pad(b["mask"]) for b in batch])
    else:
        out["mask"] = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    for key in batch[0]:
        if key in out:
            continue
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor) and values[0].dim() and len(values[0]) == lengths[0]:
            out[key] = torch.stack([pad(v) for v in values])
        else:
            out[key] = torch.tensor(values)
    return out


def drop_modality(
    x: torch.Tensor, video_dim: int, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Blank one sense (video part x[..., :video_dim] or audio part) in each window with probability p.

    x: (B, L, D) fused input. Returns a new tensor.
    """
    if p <= 0:
        return x
    B = x.shape[0]
    drop = torch.rand(B, generator=generator) < p  # (B,)
    which_audio = torch.rand(B, generator=generator) < 0.5  # (B,)
    x = x.clone()
    x[drop & ~which_audio, :, :video_dim] = 0.0
    x[drop & which_audio, :, video_dim:] = 0.0
    return x
