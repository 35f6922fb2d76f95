"""XD-Violence (Wu et al., ECCV 2020): labels from video names, ground truth, import into a feature store.

Two sources become the same kind of store (``info["dataset"] == "xd-violence"``):

* the official pre-extracted features (:func:`import_official`): I3D RGB snippets of 16 frames at
  24 fps in five crops (``<name>__0.npy`` ... ``<name>__4.npy``, ``__0`` the centre crop) and VGGish
  audio (``<name>__vggish.npy``), named by the list files ``rgb.list`` / ``audio.list`` /
  ``rgb_test.list`` / ``audio_test.list``, with the frame-level truth of the test videos either as
  the official flat ``gt.npy`` or rebuilt from ``annotations.txt``;
* a store that ``avarnet extract`` made from the raw videos (:func:`import_extracted`), laid out as
  ``DATA/train/<name>.mp4`` and ``DATA/test/<name>.mp4``.

Feature files hold ``video`` (T, Dv) (the centre crop), ``video_crops`` (K, T, Dv) when crops are
kept, ``audio`` (T, Da), ``audio_mask`` (T,) and, for test videos with known truth, ``frame_labels``
(N,) uint8: 1 on violent frames. Frame i belongs to snippet floor((i + 0.5) / (fps * segment_seconds)),
so with the official features (fps 24, 16-frame snippets) snippet t covers frames 16t .. 16t + 15.

Labels are encoded in the names: ``..._label_A`` is normal, otherwise up to three codes joined by
``-`` and padded with ``0`` (``_label_B2-G-0``). The first code is the video's class.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import NORMAL_CLASS, FeatureSpec
from ..errors import AvarnetError
from ..progress import progress_bar
from ..store import Entry, FeatureStore, video_id

log = logging.getLogger("avarnet")

# Class codes of the dataset (there is no B3) and the readable names we store.
XD_CODES: dict[str, str] = {
    "A": NORMAL_CLASS,
    "B1": "fighting",
    "B2": "shooting",
    "B4": "riot",
    "B5": "abuse",
    "B6": "car_accident",
    "G": "explosion",
}
XDV_CLASSES: tuple[str, ...] = tuple(
    XD_CODES.values()
)  # normal first, then the six violent classes
ANOMALY_CLASSES: tuple[str, ...] = XDV_CLASSES[1:]
NORMAL_CODE = "A"
PAD_CODE = "0"  # fills the unused code slots of a name
LABEL_MARK = "_label_"

XD_FPS = 24  # frame rate of the official features and annotations
FRAMES_PER_SNIPPET = 16  # I3D / VGGish snippet
SNIPPET_SECONDS = FRAMES_PER_SNIPPET / XD_FPS  # 0.667 s
NUM_CROPS = 5  # centre + four corners
CENTRE_CROP = 0
DEFAULT_VAL_FRACTION = 0.1  # of the training videos, held out for early stopping
DEFAULT_MAX_MISMATCH = 1  # snippets the visual and audio features may differ by

_CROP_FILE = re.compile(r"^(?P<name>.+)__(?P<crop>\d+)\.npy$")
_AUDIO_FILE = re.compile(r"^(?P<name>.+)__vggish\.npy$")
_VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
OFFICIAL_VIDEO_BACKBONE = "i3d-rgb (official XD-Violence features)"
OFFICIAL_AUDIO_BACKBONE = "vggish (official)"
SPLIT_FOLDERS = ("train", "test")


class XdvError(AvarnetError):
    """XD-Violence inputs are missing or inconsistent."""


class GroundTruthError(XdvError):
    """Frame-level ground truth does not line up with the test features."""


# -- labels ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class XdLabel:
    """Codes of one video in name order, without padding (``("A",)`` for normal videos)."""

    codes: tuple[str, ...]

    @property
    def label(self) -> str:
        """Readable class of the first code (the six-class recognition label, or ``normal``)."""
        return XD_CODES[self.codes[0]]

    @property
    def binary(self) -> int:
        """1 for violent videos, 0 for normal ones."""
        return int(self.codes[0] != NORMAL_CODE)

    @property
    def classes(self) -> list[str]:
        """Readable names of all codes (the multi-label target)."""
        return [XD_CODES[c] for c in self.codes]


def strip_video_suffix(name: str) -> str:
    """``name`` without a trailing video extension (some annotation lines carry ``.mp4``)."""
    for suffix in _VIDEO_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_label(name: str) -> XdLabel:
    """Codes encoded in an XD-Violence video name, e.g. ``..._label_B2-G-0`` -> ("B2", "G")."""
    name = strip_video_suffix(Path(name).name)
    if LABEL_MARK not in name:
        raise XdvError(f"{name!r} is not an XD-Violence name: it has no '{LABEL_MARK}<codes>' part")
    raw = name.rsplit(LABEL_MARK, 1)[1].split("-")
    codes = tuple(c for c in raw if c != PAD_CODE)
    unknown = [c for c in codes if c not in XD_CODES]
    if not codes or unknown:
        raise XdvError(f"{name!r}: unknown label codes {unknown or raw}; known: {sorted(XD_CODES)}")
    if NORMAL_CODE in codes and len(codes) > 1:
        raise XdvError(f"{name!r}: code A (normal) cannot be combined with violent codes")
    return XdLabel(codes)


def entry_extra(name: str, label: XdLabel) -> dict:
    """``Entry.extra`` of an XD-Violence video: codes, binary label, original name."""
    return {"codes": list(label.codes), "binary": label.binary, "name": name}


# -- list files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class XdVideo:
    """One video of a list pair: its crop files (centre crop first) and its audio file."""

    name: str
    crops: tuple[Path, ...]
    audio: Path
    split: str  # "train" | "test"


def _resolve(line: str, list_path: Path, features_root: Path | None) -> Path:
    """A listed path: as written, relative to the list's folder, or under ``features_root`` (by file name,
    or by its last folder and file name, e.g. ``RGB/<name>__0.npy``)."""
    p = Path(line)
    candidates = [p] if p.is_absolute() else [list_path.parent / p, p]
    if features_root is not None:
        candidates += [features_root / p.name, features_root / p.parent.name / p.name]
    for c in candidates:
        if c.exists():
            return c
    return candidates[-1]


def _read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or one clear error naming the first byte that is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise XdvError(
            f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    except OSError as e:
        raise XdvError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_list(path: str | Path, features_root: str | Path | None = None) -> list[Path]:
    """Paths named by a list file, one per non-empty line (see :func:`_resolve` for lookup)."""
    path = Path(path)
    if not path.is_file():
        raise XdvError(f"list file not found: {path}")
    root = Path(features_root) if features_root is not None else None
    lines = [ln.strip() for ln in _read_text(path, "list file").splitlines()]
    out = [_resolve(ln, path, root) for ln in lines if ln]
    if not out:
        raise XdvError(f"list file {path} is empty")
    return out


def _group_crops(paths: Sequence[Path], list_name: str) -> dict[str, dict[int, Path]]:
    """{video name: {crop index: path}} in order of first appearance."""
    groups: dict[str, dict[int, Path]] = {}
    for p in paths:
        m = _CROP_FILE.match(p.name)
        if m is None:
            raise XdvError(f"{list_name}: {p.name!r} is not a crop file '<name>__<k>.npy'")
        crops = groups.setdefault(m["name"], {})
        k = int(m["crop"])
        if k in crops:
            raise XdvError(f"{list_name}: crop {k} of {m['name']!r} is listed twice")
        crops[k] = p
    return groups


def _crop_paths(
    name: str, crops: dict[int, Path], keep_crops: bool, list_name: str
) -> tuple[Path, ...]:
    """Centre crop first; with ``keep_crops``, all of 0..K-1 (siblings of a lone ``__0`` are found on disk)."""
    if CENTRE_CROP not in crops:
        raise XdvError(f"{list_name}: {name!r} has no centre crop '{name}__{CENTRE_CROP}.npy'")
    centre = crops[CENTRE_CROP]
    if not keep_crops:
        return (centre,)
    if len(crops) == 1:
        siblings = [centre.with_name(f"{name}__{k}.npy") for k in range(NUM_CROPS)]
        return tuple(siblings) if all(s.exists() for s in siblings) else (centre,)
    expected = list(range(len(crops)))
    if sorted(crops) != expected:
        raise XdvError(f"{list_name}: {name!r} lists crops {sorted(crops)}; expected {expected}")
    return tuple(crops[k] for k in expected)


def _audio_names(paths: Sequence[Path], list_name: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        m = _AUDIO_FILE.match(p.name)
        if m is None:
            raise XdvError(f"{list_name}: {p.name!r} is not an audio file '<name>__vggish.npy'")
        if m["name"] in out:
            raise XdvError(f"{list_name}: {m['name']!r} is listed twice")
        out[m["name"]] = p
    return out


def pair_lists(
    rgb_list: str | Path,
    audio_list: str | Path,
    split: str,
    features_root: str | Path | None = None,
    keep_crops: bool = True,
) -> list[XdVideo]:
    """Videos of an RGB list and its audio list, in RGB-list order; names must match one to one."""
    rgb_name, audio_name = Path(rgb_list).name, Path(audio_list).name
    groups = _group_crops(read_list(rgb_list, features_root), rgb_name)
    audio = _audio_names(read_list(audio_list, features_root), audio_name)
    only_rgb = [n for n in groups if n not in audio]
    only_audio = [n for n in audio if n not in groups]
    if only_rgb or only_audio:
        raise XdvError(
            f"{rgb_name} and {audio_name} do not name the same videos: {len(groups)} vs {len(audio)} videos; "
            f"{len(only_rgb)} only in {rgb_name} (e.g. {only_rgb[:2]}), "
            f"{len(only_audio)} only in {audio_name} (e.g. {only_audio[:2]})"
        )
    return [
        XdVideo(name, _crop_paths(name, crops, keep_crops, rgb_name), audio[name], split)
        for name, crops in groups.items()
    ]


# -- annotations and ground truth --------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Violent frames [start, end) of one video (frame indices at 24 fps); code if the file names it."""

    start: int
    end: int
    code: str | None = None


def _parse_spans(tokens: list[str], where: str) -> list[Span]:
    """``s e s e ...`` or ``code s e code s e ...`` (annotations_multiclasses.txt)."""
    coded = bool(tokens) and not tokens[0].lstrip("-").isdigit()
    step = 3 if coded else 2
    if len(tokens) % step:
        raise XdvError(
            f"{where}: expected {'code start end' if coded else 'start end'} groups, got {tokens}"
        )
    spans = []
    for i in range(0, len(tokens), step):
        code = tokens[i] if coded else None
        try:
            s, e = int(tokens[i + step - 2]), int(tokens[i + step - 1])
        except ValueError:
            raise XdvError(
                f"{where}: frame numbers must be integers, got {tokens[i : i + step]}"
            ) from None
        if code is not None and code not in XD_CODES:
            raise XdvError(f"{where}: unknown code {code!r}")
        if not 0 <= s < e:
            raise XdvError(f"{where}: span [{s}, {e}) is empty or negative")
        spans.append(Span(s, e, code))
    return spans


def parse_annotations(path: str | Path) -> dict[str, list[Span]]:
    """{video name: violent spans} of ``annotations.txt`` (``name s1 e1 s2 e2 ...``, frames, end exclusive)."""
    path = Path(path)
    if not path.is_file():
        raise XdvError(f"annotation file not found: {path}")
    out: dict[str, list[Span]] = {}
    for n, line in enumerate(_read_text(path, "annotation file").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        name = strip_video_suffix(tokens[0])
        if name in out:
            raise XdvError(f"{path}:{n}: {name!r} is annotated twice")
        out[name] = _parse_spans(tokens[1:], f"{path}:{n}")
    return out


def official_frame_count(frames: int, per_snippet: int = FRAMES_PER_SNIPPET) -> int:
    """Frames the official truth of a video of ``frames`` frames covers: per_snippet *
    floor((frames - 1) / per_snippet), as the reference make_gt.py builds gt.npy (the snippets the
    reference loader keeps). A video too short for one such snippet keeps all its frames."""
    if frames < 1 or per_snippet < 1:
        raise XdvError(f"frame count {frames} and frames per snippet {per_snippet} must be >= 1")
    n = per_snippet * ((frames - 1) // per_snippet)
    return n if n > 0 else frames


def frame_truth(spans: Sequence[Span], n_frames: int) -> np.ndarray:
    """(n_frames,) uint8, 1 inside the spans (clipped to the video), as the official make_gt does."""
    y = np.zeros(n_frames, dtype=np.uint8)
    for s in spans:
        y[min(s.start, n_frames) : min(s.end, n_frames)] = 1
    return y


@dataclass(frozen=True)
class GtLayout:
    """Where each test video's frames sit in a flat ``gt.npy``: offsets, chunk lengths, frames kept."""

    offsets: tuple[int, ...]
    kept: tuple[int, ...]  # frames of the chunk that belong to the stored snippets (T * 16)
    convention: (
        str  # "trimmed" (official: after the audio/visual drop) | "visual" (visual snippet count)
    )


def gt_layout(
    gt_frames: int, trimmed: Sequence[int], visual: Sequence[int], gt_name: str = "gt.npy"
) -> GtLayout:
    """Per-video slices of a flat ground truth of ``gt_frames`` frames.

    ``trimmed`` (stored snippet counts, after dropping a trailing unmatched snippet) and ``visual``
    (snippet counts of the RGB files) are per test video, in test-list order. The official gt.npy
    has 16 frames per trimmed snippet; lists made for visual-only code have 16 per visual snippet.
    Any other length means the truth belongs to other features or another list order.
    """
    n = FRAMES_PER_SNIPPET
    kept = tuple(t * n for t in trimmed)
    if gt_frames == sum(kept):
        chunks, convention = kept, "trimmed"
    elif gt_frames == sum(visual) * n:
        chunks, convention = tuple(v * n for v in visual), "visual"
    else:
        raise GroundTruthError(
            f"{gt_name} has {gt_frames} frames, but the {len(trimmed)} test videos have {sum(trimmed)} snippets "
            f"x {n} = {sum(kept)} frames ({sum(visual) * n} counting visual snippets only): this ground truth "
            f"was made for other features or another test-list order, and frame AP computed with it would be wrong"
        )
    offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(chunks)[:-1]]))
    return GtLayout(offsets, kept, convention)


def _check_truth(y: np.ndarray, name: str, label: XdLabel, gt_name: str) -> None:
    if not np.isin(y, (0, 1)).all():
        raise GroundTruthError(f"{gt_name}: values for {name!r} are not 0/1")
    if label.binary == 0 and y.any():
        raise GroundTruthError(
            f"{gt_name} marks {int(y.sum())} violent frames inside the normal video {name!r}: the ground truth "
            "and the test list are not aligned (different video order?)"
        )


# -- import of the official features -----------------------------------------------------------


@dataclass
class ImportResult:
    """What an import did."""

    written: int = 0
    skipped: int = 0  # already in the store (resumed run)
    trimmed: int = 0  # videos whose visual and audio snippet counts differed (longer one cut)
    splits: dict[str, int] = field(default_factory=dict)
    frame_level: bool = False
    gt_convention: str | None = None


@dataclass(frozen=True)
class _Planned:
    """A video with its snippet counts, from the .npy headers only."""

    video: XdVideo
    visual: int  # T of the RGB files
    audio: int  # T of the VGGish file
    dims: tuple[int, int]  # (Dv, Da)

    @property
    def T(self) -> int:
        return min(self.visual, self.audio)


def _npy_shape(path: Path) -> tuple[int, ...]:
    """Shape of a .npy file from its header (no data read)."""
    if not path.is_file():
        raise XdvError(f"feature file not found: {path}")
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except Exception as e:
        raise XdvError(f"cannot read {path}: {e}") from None


def _plan(video: XdVideo, max_mismatch: int) -> _Planned:
    vs, aus = _npy_shape(video.crops[0]), _npy_shape(video.audio)
    for p in video.crops[1:]:
        if not p.is_file():
            raise XdvError(f"feature file not found: {p} (crop of {video.name!r})")
    if len(vs) != 2 or len(aus) != 2:
        raise XdvError(
            f"{video.name!r}: expected 2-d features (T, D), got visual {vs} and audio {aus}"
        )
    if abs(vs[0] - aus[0]) > max_mismatch:
        raise XdvError(
            f"{video.name!r}: visual features have {vs[0]} snippets and audio {aus[0]}; more than "
            f"{max_mismatch} apart, so they do not describe the same video"
        )
    if min(vs[0], aus[0]) < 1:
        raise XdvError(f"{video.name!r} has no snippets")
    return _Planned(video, vs[0], aus[0], (vs[1], aus[1]))


def _is_val(name: str, seed: int, fraction: float) -> bool:
    """Deterministic held-out draw from the name (independent of list order and size)."""
    h = int(hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()[:12], 16)
    return h / float(1 << 48) < fraction


def _official_spec(video_dim: int, audio_dim: int) -> FeatureSpec:
    return FeatureSpec(
        video_backbone=OFFICIAL_VIDEO_BACKBONE,
        audio_backbone=OFFICIAL_AUDIO_BACKBONE,
        weights="pretrained",
        segment_seconds=SNIPPET_SECONDS,
        frames_per_segment=FRAMES_PER_SNIPPET,
        video_dim=video_dim,
        audio_dim=audio_dim,
        image_size=224,  # I3D input crop
        resize_shortest_edge=256,
        flip_channel_order=False,
    )


def _check_dims(plans: Sequence[_Planned]) -> tuple[int, int]:
    """(Dv, Da) shared by every video (from the headers)."""
    first = plans[0]
    for p in plans:
        if p.dims != first.dims:
            raise XdvError(
                f"feature widths differ: {p.video.name!r} has (visual, audio) = {p.dims}, "
                f"{first.video.name!r} has {first.dims}"
            )
    return first.dims


def _load_official(p: _Planned, dv: int, da: int) -> dict[str, np.ndarray]:
    """Tensors of one video, cut to the shorter sense (the official code drops the extra trailing snippet)."""
    T = p.T
    crops = []
    for path in p.video.crops:
        arr = np.load(path, mmap_mode="r")
        if arr.shape != (p.visual, dv):
            raise XdvError(
                f"{path}: shape {arr.shape}, expected {(p.visual, dv)} like its centre crop"
            )
        crops.append(np.asarray(arr[:T], dtype=np.float32))
    audio = np.load(p.video.audio, mmap_mode="r")
    if audio.shape[1] != da:
        raise XdvError(f"{p.video.audio}: {audio.shape[1]}-d audio features, expected {da}")
    out = {
        "video": crops[0],
        "audio": np.asarray(audio[:T], dtype=np.float32),
        "audio_mask": np.ones(T, dtype=bool),
    }
    if len(crops) > 1:
        out["video_crops"] = np.stack(crops)  # (K, T, Dv)
    return out


def _load_gt(path: Path) -> np.ndarray:
    """The flat frame truth of a gt.npy, memory-mapped (read in per-video slices)."""
    if not path.is_file():
        raise XdvError(f"ground truth not found: {path}")
    try:
        return np.load(path, mmap_mode="r").reshape(-1)
    except Exception as e:
        raise XdvError(f"cannot read {path} as a numeric .npy array: {e}") from None


class _Truth:
    """Frame truth of the test videos from a gt.npy or an annotation file (or none)."""

    def __init__(self, tests: Sequence[_Planned], gt: Path | None, annotations: Path | None):
        if gt is not None and annotations is not None:
            raise XdvError(
                "give the ground truth either as gt.npy or as an annotation file, not both"
            )
        self.gt_name = gt.name if gt else (annotations.name if annotations else "")
        self.layout: GtLayout | None = None
        self.flat: np.ndarray | None = None
        self.spans: dict[str, list[Span]] | None = None
        self.index = {p.video.name: i for i, p in enumerate(tests)}
        if gt is not None:
            self.flat = _load_gt(gt)
            self.layout = gt_layout(
                len(self.flat), [p.T for p in tests], [p.visual for p in tests], gt.name
            )
        elif annotations is not None:
            self.spans = parse_annotations(annotations)
            self._check_annotated(tests)

    @property
    def available(self) -> bool:
        return self.flat is not None or self.spans is not None

    def _check_annotated(self, tests: Sequence[_Planned]) -> None:
        missing = [
            p.video.name
            for p in tests
            if parse_label(p.video.name).binary and p.video.name not in self.spans
        ]
        if missing:
            raise GroundTruthError(
                f"{self.gt_name} has no line for {len(missing)} violent test videos, e.g. {missing[:2]}"
            )
        normal = [n for n in self.spans if n in self.index and parse_label(n).binary == 0]
        if normal:
            raise GroundTruthError(
                f"{self.gt_name} annotates normal test videos, e.g. {normal[:2]}"
            )

    def frames(self, p: _Planned) -> np.ndarray:
        """(T * 16,) uint8 truth of one test video."""
        label = parse_label(p.video.name)
        if self.flat is not None:
            i = self.index[p.video.name]
            off, keep = self.layout.offsets[i], self.layout.kept[i]
            y = np.asarray(self.flat[off : off + keep])
            _check_truth(y, p.video.name, label, self.gt_name)
            return y.astype(np.uint8)
        return frame_truth(self.spans.get(p.video.name, []), p.T * FRAMES_PER_SNIPPET)

    def validate(self, tests: Sequence[_Planned]) -> None:
        """Check every test video's slice before anything is written (reads the gt in bounded slices)."""
        if self.flat is not None:
            for p in tests:
                self.frames(p)


def _plan_all(videos: Sequence[XdVideo], max_mismatch: int, progress: bool) -> list[_Planned]:
    bar = progress_bar(
        videos, desc="xdv check", unit="video", disable=not progress, dynamic_ncols=True
    )
    return [_plan(v, max_mismatch) for v in bar]


def _official_entry(store: FeatureStore, p: _Planned, split: str, has_truth: bool) -> Entry:
    label = parse_label(p.video.name)
    vid = video_id(f"{p.video.split}/{p.video.name}")
    extra = entry_extra(p.video.name, label) | {
        "crops": len(p.video.crops),
        "trimmed": p.visual != p.audio,
    }
    if has_truth:
        extra["frame_level"] = True
    return Entry(
        id=vid,
        file=str(store.feature_path(vid).relative_to(store.root)),
        label=label.label,
        split=split,
        source=str(p.video.crops[0]),
        duration=p.T * SNIPPET_SECONDS,
        fps=float(XD_FPS),
        has_audio=True,
        T=p.T,
        extra=extra,
    )


def _split_of(video: XdVideo, seed: int, val_fraction: float) -> str:
    if video.split == "train" and _is_val(video.name, seed, val_fraction):
        return "val"
    return video.split


def _read_official_lists(
    rgb_list, audio_list, test_rgb_list, test_audio_list, features_root, keep_crops: bool
) -> tuple[list[XdVideo], list[XdVideo]]:
    """(training videos, test videos) of the two list pairs, checked for overlap."""
    if (test_rgb_list is None) != (test_audio_list is None):
        raise XdvError("give both test lists (visual and audio), or neither")
    videos = pair_lists(rgb_list, audio_list, "train", features_root, keep_crops)
    tests = []
    if test_rgb_list is not None:
        tests = pair_lists(test_rgb_list, test_audio_list, "test", features_root, keep_crops)
    _check_disjoint(videos, tests)
    return videos, tests


def _official_info(truth_available: bool, val_fraction: float, seed: int, sources: dict) -> dict:
    """Dataset info of an imported store (spec.json)."""
    return {
        "dataset": "xd-violence",
        "source": "official-features",
        "classes": list(XDV_CLASSES),
        "frame_level": truth_available,
        "frames_per_snippet": FRAMES_PER_SNIPPET,
        "fps": XD_FPS,
        "val_fraction": val_fraction,
        "split_seed": seed,
        "lists": {k: str(v) for k, v in sources.items() if v is not None},
    }


def _write_official(
    store: FeatureStore,
    plans: Sequence[_Planned],
    truth: _Truth,
    seed: int,
    val_fraction: float,
    progress: bool,
) -> ImportResult:
    """Read and write one video at a time; videos already in the store are skipped."""
    dv, da = store.spec.video_dim, store.spec.audio_dim
    result = ImportResult(frame_level=truth.available)
    result.gt_convention = truth.layout.convention if truth.layout else None
    for p in progress_bar(
        plans, desc="xdv import", unit="video", disable=not progress, dynamic_ncols=True
    ):
        split = _split_of(p.video, seed, val_fraction)
        result.splits[split] = result.splits.get(split, 0) + 1
        result.trimmed += int(p.visual != p.audio)
        has_truth = p.video.split == "test" and truth.available
        entry = _official_entry(store, p, split, has_truth)
        if store.is_done(entry.id):
            result.skipped += 1
            continue
        tensors = _load_official(p, dv, da)
        if has_truth:
            tensors["frame_labels"] = truth.frames(p)
        store.write(entry, tensors)
        result.written += 1
    return result


def import_official(
    out: str | Path,
    rgb_list: str | Path,
    audio_list: str | Path,
    test_rgb_list: str | Path | None = None,
    test_audio_list: str | Path | None = None,
    gt: str | Path | None = None,
    annotations: str | Path | None = None,
    features_root: str | Path | None = None,
    keep_crops: bool = True,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    max_mismatch: int = DEFAULT_MAX_MISMATCH,
    progress: bool = True,
) -> ImportResult:
    """Stream the official XD-Violence features into a feature store at ``out``.

    Everything is checked from the .npy headers first (missing files, list mismatches, dimensions,
    ground-truth length and alignment), then one video at a time is read and written, so memory
    does not grow with the list. Finished videos are skipped, so an interrupted import resumes.
    """
    if (gt is not None or annotations is not None) and test_rgb_list is None:
        raise XdvError("ground truth needs the test lists (visual and audio)")
    lists = (rgb_list, audio_list, test_rgb_list, test_audio_list)
    videos, tests = _read_official_lists(*lists, features_root, keep_crops)
    plans = _plan_all(videos + tests, max_mismatch, progress)
    test_plans = plans[len(videos) :]
    truth = _Truth(test_plans, Path(gt) if gt else None, Path(annotations) if annotations else None)
    truth.validate(test_plans)
    if test_plans and not truth.available:
        log.warning("no ground truth given: test videos are imported without frame-level labels")
    sources = dict(zip(("rgb", "audio", "test_rgb", "test_audio"), lists, strict=True))
    info = _official_info(
        truth.available, val_fraction, seed, sources | {"gt": gt, "annotations": annotations}
    )
    store = FeatureStore.create(out, _official_spec(*_check_dims(plans)), info)
    return _write_official(store, plans, truth, seed, val_fraction, progress)


def _check_disjoint(train: Sequence[XdVideo], test: Sequence[XdVideo]) -> None:
    both = {v.name for v in train} & {v.name for v in test}
    if both:
        raise XdvError(
            f"{len(both)} videos are in both the training and the test lists, e.g. {sorted(both)[:2]}"
        )


# -- import of a store made by `avarnet extract` -----------------------------------------------


def _extracted_split(entry: Entry) -> str:
    """train/test from the dataset folder the video sat in (DATA/train, DATA/test), else the store's split."""
    top = Path(entry.source).parts[0].lower() if Path(entry.source).parts else ""
    if top in SPLIT_FOLDERS:
        return top
    return "test" if entry.split == "test" else "train"


def extracted_frame_count(entry: Entry, segment_seconds: float) -> int:
    """Frames of the truth grid of an extracted video: the official
    :func:`official_frame_count` of its round(duration * fps) frames, with the store's snippet
    length in frames (16 for 0.666667 s snippets at 24 fps)."""
    frames = max(1, round(entry.duration * entry.fps))
    return official_frame_count(frames, max(1, round(entry.fps * segment_seconds)))


def _extracted_truth(
    entry: Entry, spans: dict[str, list[Span]], name: str, label: XdLabel, segment_seconds: float
) -> np.ndarray:
    """Truth over the video's own frames, on the official grid (:func:`extracted_frame_count`)."""
    if label.binary and name not in spans:
        raise GroundTruthError(
            f"no annotation line for the violent test video {name!r} ({entry.source})"
        )
    return frame_truth(spans.get(name, []), extracted_frame_count(entry, segment_seconds))


def _extracted_info(src: str | Path, has_truth: bool, val_fraction: float, seed: int) -> dict:
    return {
        "dataset": "xd-violence",
        "source": "extracted",
        "extracted_from": str(Path(src).resolve()),
        "classes": list(XDV_CLASSES),
        "frame_level": has_truth,
        "val_fraction": val_fraction,
        "split_seed": seed,
    }


def _relabelled(e: Entry, seed: int, val_fraction: float, spans: dict | None) -> tuple[Entry, bool]:
    """The XD-Violence entry of an extracted one, and whether it gets frame truth."""
    name = strip_video_suffix(Path(e.source).name)
    label = parse_label(name)
    split = _extracted_split(e)
    final = "val" if split == "train" and _is_val(name, seed, val_fraction) else split
    has_truth = split == "test" and spans is not None
    extra = entry_extra(name, label) | ({"frame_level": True} if has_truth else {})
    return Entry(
        e.id, e.file, label.label, final, e.source, e.duration, e.fps, e.has_audio, e.T, extra
    ), has_truth


def import_extracted(
    src: str | Path,
    out: str | Path,
    annotations: str | Path | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    progress: bool = True,
) -> ImportResult:
    """Relabel a store that ``avarnet extract`` made from XD-Violence videos into an XD-Violence store.

    Labels come from the video names, the split from the folder (``DATA/train``, ``DATA/test``), the
    frame truth of the test videos from ``annotations`` (frame numbers of the video itself) over
    the official grid of :func:`extracted_frame_count`.
    Extract with ``--segment-seconds 0.666667`` to match the official 16-frame snippets at 24 fps.
    """
    source = FeatureStore.open(src)
    if source.info.get("dataset") == "xd-violence":
        raise XdvError(f"{src} is already an XD-Violence store")
    spans = parse_annotations(annotations) if annotations is not None else None
    planned = [
        _relabelled(e, seed, val_fraction, spans) for e in source.entries
    ]  # names checked first
    store = FeatureStore.create(
        out, source.spec, _extracted_info(src, spans is not None, val_fraction, seed)
    )
    state = source.load_encoder_state()
    if state is not None:
        store.save_encoder_state(state)
    result = ImportResult(frame_level=spans is not None)
    pairs = zip(source.entries, planned, strict=True)
    for old, (new, has_truth) in progress_bar(
        list(pairs), desc="xdv import", unit="video", disable=not progress
    ):
        result.splits[new.split] = result.splits.get(new.split, 0) + 1
        if store.is_done(new.id):
            result.skipped += 1
            continue
        tensors = source.load(old)
        if has_truth:
            tensors["frame_labels"] = _extracted_truth(
                old,
                spans,
                new.extra["name"],
                parse_label(new.extra["name"]),
                source.spec.segment_seconds,
            )
        store.write(new, tensors)
        result.written += 1
    return result


# -- derived stores ----------------------------------------------------------------------------


def recognition_store(src: str | Path, out: str | Path, progress: bool = True) -> ImportResult:
    """The six-class recognition task: violent videos only, class = first code, centre crop + audio.

    Train and evaluate it with ``avarnet train`` / ``avarnet evaluate`` like any of our datasets.
    """
    source = FeatureStore.open(src)
    if source.info.get("dataset") != "xd-violence":
        raise XdvError(f"{src} is not an XD-Violence store (run `avarnet xdv import` first)")
    info = {k: v for k, v in source.info.items() if k not in ("frame_level",)}
    info |= {
        "classes": list(ANOMALY_CLASSES),
        "task": "recognition",
        "frame_level": False,
        "derived_from": str(src),
    }
    store = FeatureStore.create(out, source.spec, info)
    state = source.load_encoder_state()
    if state is not None:
        store.save_encoder_state(state)
    result = ImportResult()
    violent = [e for e in source.entries if e.label != NORMAL_CLASS]
    for e in progress_bar(violent, desc="xdv recognition", unit="video", disable=not progress):
        result.splits[e.split] = result.splits.get(e.split, 0) + 1
        if store.is_done(e.id):
            result.skipped += 1
            continue
        tensors = source.load(e)
        extra = {k: v for k, v in (e.extra or {}).items() if k != "frame_level"}
        store.write(
            Entry(**(e.__dict__ | {"extra": extra})),
            {k: tensors[k] for k in ("video", "audio", "audio_mask")},
        )
        result.written += 1
    return result
