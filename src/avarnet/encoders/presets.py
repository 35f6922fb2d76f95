"""Presets that reproduce a dataset's official features from raw video.

XD-Violence (Wu et al., ECCV 2020) releases, per video, I3D RGB features of 16-frame snippets at
24 fps in five crops (``<name>__0.npy`` the centre crop, ``__1`` .. ``__4`` the corners) and VGGish
audio features (``<name>__vggish.npy``), one vector per snippet; its ``gt.npy`` holds 16 frames per
snippet, 16 * floor((frames - 1) / 16) per video. :class:`XdvExtractor` cuts a user's own video the
same way, so features made with the user's I3D and VGGish ONNX files (``clip`` and ``logmel``
encoders) line up with the official lists and ground truth:

* snippet t holds frames 16t .. 16t + 15 of the video at 24 fps (nearest decoded frame), and a
  video of F frames has floor((F - 1) / 16) snippets (at least one);
* each snippet's frames are resized (shortest edge: the encoder's ``resize_shortest_edge``, 256
  for I3D) and cut into five crops of the encoder's ``image_size`` (224): centre, top-left,
  top-right, bottom-left, bottom-right; crop k is file ``__k``;
* each snippet's audio vector comes from the 0.96-s log-mel patch (VGGish: 96 frames of 10 ms,
  15 600 samples) ending at the snippet's end, zero-padded before the start of the track; a
  waveform encoder gets the same window and its frames are mean-pooled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import media
from .hf import AudioEncoder, EncoderLoadError, VideoEncoder

XDV_FPS = 24
XDV_SNIPPET_FRAMES = 16
XDV_AUDIO_SECONDS = 0.96  # one VGGish example
CROP_ORDER = ("centre", "top_left", "top_right", "bottom_left", "bottom_right")
AUDIO_SUFFIX = "vggish"


def xdv_snippets(n_frames: int) -> int:
    """Snippets of the official features for a video of ``n_frames`` frames at 24 fps."""
    return max(1, (n_frames - 1) // XDV_SNIPPET_FRAMES)


def xdv_gt_frames(n_frames: int) -> int:
    """Frames of the official ground truth (gt.npy) for such a video: 16 per snippet."""
    return XDV_SNIPPET_FRAMES * xdv_snippets(n_frames)


def five_crop_boxes(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the five crops in :data:`CROP_ORDER` (centre first)."""
    if min(height, width) < size:
        raise ValueError(f"a {height}x{width} frame is smaller than the {size}-pixel crops")
    bottom, right = height - size, width - size
    return [(bottom // 2, right // 2), (0, 0), (0, right), (bottom, 0), (bottom, right)]


@dataclass(frozen=True)
class XdvFeatures:
    """One video's features in the official layout."""

    video_crops: np.ndarray  # (5, T, Dv) float32, crop k = file __k
    audio: np.ndarray  # (T, Da) float32
    frames: int  # frames of the video at 24 fps
    has_audio: bool

    @property
    def snippets(self) -> int:
        return self.video_crops.shape[1]

    @property
    def gt_frames(self) -> int:
        return XDV_SNIPPET_FRAMES * self.snippets

    def write(self, folder: str | Path, name: str) -> list[Path]:
        """``<name>__0.npy`` .. ``<name>__4.npy`` and ``<name>__vggish.npy`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, crop in enumerate(self.video_crops):
            paths.append(folder / f"{name}__{k}.npy")
            np.save(paths[-1], crop.astype(np.float32))
        paths.append(folder / f"{name}__{AUDIO_SUFFIX}.npy")
        np.save(paths[-1], self.audio.astype(np.float32))
        return paths


class XdvExtractor:
    """XD-Violence features of raw videos (see the module docstring) from a ``clip`` encoder of 16
    frames (e.g. I3D as ONNX) and any audio encoder (e.g. VGGish as a ``logmel`` ONNX encoder)."""

    def __init__(self, video: VideoEncoder, audio: AudioEncoder) -> None:
        if video.kind != "clip" or video.clip_frames != XDV_SNIPPET_FRAMES:
            raise EncoderLoadError(
                f"video_backbone {video.source!r}: the XD-Violence preset takes a clip encoder of "
                f"{XDV_SNIPPET_FRAMES} frames (kind 'clip', input.frames {XDV_SNIPPET_FRAMES}), "
                f"got kind {video.kind!r} with {video.clip_frames} frame(s)"
            )
        self.video = video
        self.audio = audio
        self.audio_window = max(audio.receptive_field, round(XDV_AUDIO_SECONDS * audio.sample_rate))

    def frame_times(self, snippets: int) -> np.ndarray:
        """(T * 16,) times (s) of the snippets' frames: the centres of frames 0 .. 16T - 1."""
        return (np.arange(snippets * XDV_SNIPPET_FRAMES) + 0.5) / XDV_FPS

    def video_features(self, path: Path, info: media.MediaInfo, snippets: int) -> np.ndarray:
        times = np.minimum(self.frame_times(snippets), max(info.duration - 1e-3, 0.0))
        frames = np.stack(
            list(
                media.read_frames(path, times.tolist(), self.video.resize_shortest_edge, info=info)
            )
        )  # (T * 16, H, W, 3), shortest edge already resized
        enc, F = self.video, XDV_SNIPPET_FRAMES
        boxes = five_crop_boxes(frames.shape[1], frames.shape[2], enc.image_size)
        crops = []
        for box in boxes:
            vectors = []
            for start in range(0, len(frames), F):
                pixels = enc.preprocess(frames[start : start + F], box)
                vectors.append(enc.forward(pixels)[0])  # every frame holds its clip's vector
            crops.append(np.stack(vectors))
        return np.stack(crops).astype(np.float32)  # (5, T, Dv)

    def audio_features(self, path: Path, info: media.MediaInfo, snippets: int) -> np.ndarray:
        enc = self.audio
        out = np.zeros((snippets, enc.dim), np.float32)
        if not info.has_audio:
            return out
        samples = media.load_audio(path, enc.sample_rate, info=info)
        padded = np.concatenate([np.zeros(self.audio_window, np.float32), samples])
        snippet = XDV_SNIPPET_FRAMES / XDV_FPS
        windows = []
        for t in range(snippets):
            end = self.audio_window + round((t + 1) * snippet * enc.sample_rate)
            window = padded[max(0, end - self.audio_window) : end]
            windows.append(np.pad(window, (0, self.audio_window - len(window))))
        for t, frames in enumerate(enc.encode_batch(windows)):
            out[t] = frames.astype(np.float64).mean(axis=0)
        return out

    def __call__(self, path: str | Path) -> XdvFeatures:
        path = Path(path)
        info = media.probe(path)
        frames = max(1, round(info.duration * XDV_FPS))
        snippets = xdv_snippets(frames)
        return XdvFeatures(
            video_crops=self.video_features(path, info, snippets),
            audio=self.audio_features(path, info, snippets),
            frames=frames,
            has_audio=info.has_audio,
        )


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
LIST_NAMES = {"train": ("rgb.list", "audio.list"), "test": ("rgb_test.list", "audio_test.list")}


@dataclass
class XdvFolderResult:
    """What :func:`extract_xdv_folder` wrote."""

    written: int = 0
    lists: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (video, one-line reason)


def extract_xdv_folder(
    data: str | Path, out: str | Path, extractor: XdvExtractor
) -> XdvFolderResult:
    """Official-layout features of every video under ``data`` into ``out``, with the list files
    ``avarnet xdv import`` reads: ``data/train`` and ``data/test`` give ``rgb.list`` /
    ``audio.list`` and ``rgb_test.list`` / ``audio_test.list``; videos elsewhere go to the
    training lists. A video that cannot be read is recorded (one line) and the rest go on."""
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise EncoderLoadError(f"no such folder: {data}")
    videos = sorted(p for p in data.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise EncoderLoadError(f"no videos under {data} ({', '.join(VIDEO_SUFFIXES)})")
    result = XdvFolderResult()
    lines: dict[str, tuple[list[str], list[str]]] = {}
    for video in videos:
        rel = video.relative_to(data)
        split = "test" if rel.parts[0] == "test" and len(rel.parts) > 1 else "train"
        try:
            feats = extractor(video)
        except media.MediaError as e:
            result.failures.append((str(rel), str(e)))
            continue
        paths = feats.write(out / split, video.stem)
        rgb, audio = lines.setdefault(split, ([], []))
        rgb += [str(p.resolve()) for p in paths[:-1]]
        audio.append(str(paths[-1].resolve()))
        result.written += 1
    for split, (rgb, audio) in lines.items():
        for name, content in zip(LIST_NAMES[split], (rgb, audio), strict=True):
            (out / name).write_text("".join(f"{line}\n" for line in content))
            result.lists.append(out / name)
    return result


__all__ = [
    "CROP_ORDER",
    "XDV_FPS",
    "XDV_SNIPPET_FRAMES",
    "XdvExtractor",
    "XdvFeatures",
    "XdvFolderResult",
    "extract_xdv_folder",
    "five_crop_boxes",
    "xdv_gt_frames",
    "xdv_snippets",
]
