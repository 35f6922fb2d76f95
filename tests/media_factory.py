"""Hostile and odd media files for tests, written into a given folder.

Every clip made here encodes its frame index in its brightness (flat grey
level ``frame_level(i)``), so a test can tell which frame a decoder returned
with ``frame_index``; audio is a sine of known frequency.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from avarnet.synth import write_av

LEVEL_BASE = 24  # grey level of frame 0
LEVEL_STEP = 8  # grey levels between consecutive frames (H.264 keeps flat greys within ~2)
LEVEL_FRAMES = (255 - LEVEL_BASE) // LEVEL_STEP + 1  # frames before the levels wrap around
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.5


def frame_level(index: int) -> int:
    """Grey level of frame ``index`` (wraps every LEVEL_FRAMES frames)."""
    return LEVEL_BASE + LEVEL_STEP * (index % LEVEL_FRAMES)


def frame_index(frame: np.ndarray) -> int:
    """Frame index (modulo LEVEL_FRAMES) recovered from a decoded (H, W, 3) frame."""
    return round((float(frame.mean()) - LEVEL_BASE) / LEVEL_STEP)


def indexed_frames(n: int, width: int = 64, height: int = 48) -> Iterator[np.ndarray]:
    """n flat grey RGB uint8 frames (height, width, 3); frame i has level frame_level(i)."""
    for i in range(n):
        yield np.full((height, width, 3), frame_level(i), np.uint8)


def tone(seconds: float, sample_rate: int, channels: int = 1, hz: float = TONE_HZ) -> np.ndarray:
    """Sine of ``hz``, amplitude TONE_AMPLITUDE: (S,) for mono, (C, S) otherwise."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = (TONE_AMPLITUDE * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return wave if channels == 1 else np.tile(wave, (channels, 1))


def clip(
    path: Path,
    seconds: float = 2.0,
    fps: float = 10.0,
    size: tuple[int, int] = (64, 48),
    sample_rate: int | None = 16_000,
    channels: int = 1,
    faststart: bool = False,
) -> Path:
    """An indexed clip of ``seconds`` at ``fps``, size (width, height); no audio if rate is None."""
    n = max(1, round(seconds * fps))
    audio = tone(n / fps, sample_rate, channels) if sample_rate else None
    frames = indexed_frames(n, *size)
    write_av(path, frames, fps, audio, sample_rate or 16_000, faststart=faststart)
    return path


def empty_file(folder: Path) -> Path:
    path = folder / "empty.mp4"
    path.write_bytes(b"")
    return path


def text_as_mp4(folder: Path) -> Path:
    path = folder / "notes.mp4"
    path.write_text("This is a text file with a video extension.\n" * 50)
    return path


def random_bytes_mp4(folder: Path) -> Path:
    path = folder / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 64 * 1024, np.uint8).tobytes())
    return path


def truncated_mp4(folder: Path) -> Path:
    """A valid mp4 (index at the end) cut in half: the index is lost."""
    path = clip(folder / "truncated.mp4", seconds=3.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_tail_mp4(folder: Path) -> Path:
    """An mp4 with its index at the front, cut at 60 %: it opens, its tail is missing."""
    path = clip(folder / "broken_tail.mp4", seconds=4.0, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def audio_only(folder: Path) -> Path:
    path = folder / "audio_only.m4a"
    write_av(path, None, 10.0, tone(1.0, 16_000), 16_000)
    return path


def video_no_audio(folder: Path) -> Path:
    return clip(folder / "silent.mp4", seconds=2.0, sample_rate=None)


def zero_length_video(folder: Path) -> Path:
    """A fragmented mp4 whose video track is declared but holds no frame."""
    path = folder / "zero_length.mp4"
    options = {"movflags": "frag_keyframe+empty_moov"}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


def short_clip(folder: Path) -> Path:
    return clip(folder / "short.mp4", seconds=0.5)


def one_fps_clip(folder: Path) -> Path:
    return clip(folder / "one_fps.mp4", seconds=4.0, fps=1.0)


def hd_stereo_clip(folder: Path) -> Path:
    return clip(
        folder / "hd_stereo.mp4", seconds=2.0, size=(1280, 720), sample_rate=48_000, channels=2
    )


def unicode_name_clip(folder: Path) -> Path:
    return clip(folder / "clip with spaces – ünïcödé 日本.mp4", seconds=1.0)
