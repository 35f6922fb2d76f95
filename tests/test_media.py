"""Tests for avarnet.media on real recordings and on odd or hostile files.

Real fixtures (../shared/fixtures/real, see its README):
- nasa_13013.mp4: pytorch/torchcodec test resources (BSD-3, LICENSE.torchcodec).
- mmaction2_test.avi, mmaction2_test_noaudio.mp4: open-mmlab/mmaction2
  tests/data/test.avi and test.mp4 (Apache-2.0, LICENSE.mmaction2).
"""

from __future__ import annotations

from pathlib import Path

import media_factory as mf
import numpy as np
import pytest

from avarnet import media
from avarnet.media import (
    MediaError,
    NoVideoStreamError,
    UnreadableMediaError,
    ZeroDurationError,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"
NASA = REAL / "nasa_13013.mp4"
AVI = REAL / "mmaction2_test.avi"
NOAUDIO = REAL / "mmaction2_test_noaudio.mp4"
SR = 16_000
AAC_PADDING = 1024  # the AAC encoder pads the last frame: decoded audio may run this much longer


def _real(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"fixture {path.name} not found under {REAL}")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


def _dominant_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(audio.size, 1.0 / sr)[np.argmax(spectrum)])


# ------------------------------------------------------------------ real fixtures


def test_probe_picks_largest_video_and_richest_audio_stream():
    # nasa_13013.mp4: videos 320x180 (#0) and 480x270 (#3), AAC 8 kHz (#1) and 16 kHz (#4),
    # subtitles (#2, #5).
    info = media.probe(_real(NASA))
    assert (info.video_stream, info.width, info.height) == (3, 480, 270)
    assert (info.audio_stream, info.audio_sample_rate, info.audio_channels) == (4, 16_000, 2)
    assert info.fps == pytest.approx(30000 / 1001)
    assert info.duration == pytest.approx(13.013, abs=0.01)
    assert info.num_frames == 390


def test_read_frames_decodes_the_chosen_stream_and_resizes():
    frames = list(media.read_frames(_real(NASA), [0.0, 6.5, 12.9]))
    assert [f.shape for f in frames] == [(270, 480, 3)] * 3
    assert all(f.dtype == np.uint8 for f in frames)
    small = list(media.read_frames(NASA, [0.0, 6.5, 12.9], shortest_edge=64))
    assert [f.shape for f in small] == [(64, 114, 3)] * 3  # 480 * 64 / 270 = 113.8
    # the resize keeps the picture: its mean colour matches the full frame's
    assert np.abs(small[1].mean((0, 1)) - frames[1].mean((0, 1))).max() < 6


def test_real_audio_is_16k_mono_float32_from_the_16k_stream():
    info = media.probe(_real(NASA))
    audio = media.load_audio(NASA, info=info)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == pytest.approx(13.056 * SR, abs=AAC_PADDING)  # the 16 kHz stream's length
    assert 0.01 < np.abs(audio).max() <= 1.0


def test_avi_with_mp3_is_resampled_from_44k_stereo():
    info = media.probe(_real(AVI))
    assert (info.width, info.height, info.fps) == (320, 240, 25.0)
    assert info.duration == pytest.approx(6.56)
    assert (info.audio_sample_rate, info.audio_channels) == (44_100, 2)
    audio = media.load_audio(AVI)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == pytest.approx(6.56 * SR, abs=0.05 * SR)
    assert np.abs(audio).max() > 0.05


def test_real_video_without_audio_is_valid():
    info = media.probe(_real(NOAUDIO))
    assert not info.has_audio
    assert (info.audio_stream, info.audio_sample_rate, info.audio_channels) == (None, 0, 0)
    assert (info.width, info.height, info.duration) == (340, 256, 10.0)
    assert list(media.iter_audio(NOAUDIO, info=info)) == []
    assert media.load_audio(NOAUDIO, info=info).shape == (0,)
    times = [0.5, 1.5, 9.5, 20.0]  # past the end: the last frame
    assert [f.shape for f in media.read_frames(NOAUDIO, times, info=info)] == [(256, 340, 3)] * 4


# ----------------------------------------------------------------- hostile inputs

HOSTILE = [
    (mf.empty_file, UnreadableMediaError),
    (mf.text_as_mp4, UnreadableMediaError),
    (mf.random_bytes_mp4, UnreadableMediaError),
    (mf.truncated_mp4, UnreadableMediaError),
    (mf.audio_only, NoVideoStreamError),
    (mf.zero_length_video, ZeroDurationError),
]


@pytest.mark.parametrize(("make", "error"), HOSTILE, ids=[m.__name__ for m, _ in HOSTILE])
def test_hostile_inputs_raise_typed_errors_naming_the_file(files, make, error):
    path = make(files)
    for call in (
        lambda: media.probe(path),
        lambda: list(media.read_frames(path, [0.0])),
        lambda: list(media.iter_audio(path)),
        lambda: media.load_audio(path),
    ):
        with pytest.raises(error) as excinfo:
            call()
        assert isinstance(excinfo.value, MediaError)
        message = str(excinfo.value)
        assert str(path) in message and "\n" not in message


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableMediaError, match="no such file"):
        media.probe(tmp_path / "nope.mp4")


def test_broken_tail_repeats_the_last_good_frame(files):
    path = mf.truncated_tail_mp4(files)  # 4 s at 10 fps, only the first part survives
    info = media.probe(path)
    times = [0.0, 0.5, 1.0, 2.9, 3.5, 3.9]
    frames = list(media.read_frames(path, times, info=info))
    assert len(frames) == len(times)
    indices = [mf.frame_index(f) for f in frames]
    assert indices[:3] == [0, 5, 10]
    last_good = indices[-1]
    assert 10 <= last_good < 29  # decoding stopped before t = 2.9 s
    assert all(np.array_equal(f, frames[-1]) for f in frames[3:])


# ------------------------------------------------------------------------- frames


def test_frames_are_the_nearest_in_time(files):
    path = mf.clip(files / "indexed.mp4", seconds=2.5, fps=10.0)  # frame i at i / 10 s
    times = [0.0, 0.04, 0.06, 0.26, 1.0, 2.44, 7.0]
    frames = list(media.read_frames(path, times))
    assert len(frames) == len(times)
    assert [mf.frame_index(f) for f in frames] == [0, 0, 1, 3, 10, 24, 24]
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)


def test_late_start_and_repeated_timestamps(files):
    path = mf.clip(files / "late.mp4", seconds=2.8, fps=10.0)
    times = [-1.0, 2.0, 2.0, 2.5, 2.71]  # before the start: the first frame
    assert [mf.frame_index(f) for f in media.read_frames(path, times)] == [0, 20, 20, 25, 27]
    times = [media.SEEK_MIN_SECONDS, 2.5]  # decoding starts after a seek
    assert [mf.frame_index(f) for f in media.read_frames(path, times)] == [20, 25]


def test_timestamps_must_be_sorted(files):
    path = mf.short_clip(files)
    with pytest.raises(ValueError, match="sorted"):
        media.read_frames(path, [0.3, 0.1])
    assert list(media.read_frames(path, [])) == []


@pytest.mark.parametrize(
    ("size", "edge", "shape"),
    [
        ((64, 48), 24, (24, 32, 3)),  # landscape, shrink
        ((48, 64), 24, (32, 24, 3)),  # portrait: the width is the shorter side
        ((64, 48), 96, (96, 128, 3)),  # enlarge
    ],
)
def test_resize_keeps_aspect(files, size, edge, shape):
    path = mf.clip(files / f"resize_{size[0]}x{size[1]}.mp4", seconds=1.0, size=size)
    frames = list(media.read_frames(path, [0.0, 0.5], shortest_edge=edge))
    assert [f.shape for f in frames] == [shape, shape]
    assert [mf.frame_index(f) for f in frames] == [0, 5]


def test_one_fps_clip(files):
    path = mf.one_fps_clip(files)
    info = media.probe(path)
    assert (info.fps, info.duration, info.num_frames) == (1.0, 4.0, 4)
    times = [0.0, 0.4, 0.6, 2.2, 3.9]
    assert [mf.frame_index(f) for f in media.read_frames(path, times, info=info)] == [0, 0, 1, 2, 3]


def test_short_clip(files):
    path = mf.short_clip(files)
    info = media.probe(path)
    assert info.duration == pytest.approx(0.5) and info.num_frames == 5
    assert len(list(media.read_frames(path, np.arange(0.0, 1.0, 0.1)))) == 10


def test_unicode_file_name(files):
    path = mf.unicode_name_clip(files)
    assert " " in path.name and not path.name.isascii()
    info = media.probe(path)
    assert info.path == str(path) and info.duration == pytest.approx(1.0)
    assert [mf.frame_index(f) for f in media.read_frames(path, [0.5])] == [5]
    assert media.load_audio(path).size >= SR


# -------------------------------------------------------------------------- audio


def test_hd_stereo_48k_becomes_16k_mono(files):
    path = mf.hd_stereo_clip(files)
    info = media.probe(path)
    assert (info.width, info.height) == (1280, 720)
    assert (info.audio_sample_rate, info.audio_channels) == (48_000, 2)
    audio = media.load_audio(path, info=info)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 2 * SR <= audio.size <= 2 * SR + AAC_PADDING
    assert _dominant_hz(audio, SR) == pytest.approx(mf.TONE_HZ, abs=2)
    # the channels are averaged: two equal channels keep the tone's amplitude
    assert np.abs(audio[SR // 2 : SR]).max() == pytest.approx(mf.TONE_AMPLITUDE, abs=0.05)
    frames = list(media.read_frames(path, [1.0], shortest_edge=36, info=info))
    assert frames[0].shape == (36, 64, 3)


def test_audio_chunks_have_fixed_hop_aligned_size(files):
    path = mf.clip(files / "chunks.mp4", seconds=3.0)
    whole = media.load_audio(path)
    assert whole.size >= 3 * SR
    chunks = list(media.iter_audio(path, chunk_seconds=1.01))
    size = media.chunk_samples(1.01)
    assert size == 16_000  # round(1.01 * 16000) = 16160, down to a multiple of 320
    assert all(c.shape == (size,) and c.dtype == np.float32 for c in chunks[:-1])
    assert 0 < chunks[-1].size <= size
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_chunk_samples():
    assert media.chunk_samples(10.0) == 160_000
    assert media.chunk_samples(0.5) == 8_000
    assert media.chunk_samples(0.001) == media.WAV2VEC2_HOP  # never below one hop
    assert media.chunk_samples(1.0, 8_000) == 8_000


def test_other_sample_rates(files):
    path = mf.clip(files / "rate.mp4", seconds=2.0)
    audio = media.load_audio(path, sample_rate=8_000)
    assert audio.size == pytest.approx(2 * 8_000, abs=AAC_PADDING)
    assert _dominant_hz(audio, 8_000) == pytest.approx(mf.TONE_HZ, abs=2)


def test_video_without_audio_is_valid(files):
    path = mf.video_no_audio(files)
    info = media.probe(path)
    assert not info.has_audio and info.audio_stream is None
    assert list(media.iter_audio(path)) == []
    assert media.load_audio(path).dtype == np.float32
    assert len(list(media.read_frames(path, [0.0, 1.0]))) == 2


def test_bad_arguments(files):
    path = mf.short_clip(files)
    with pytest.raises(ValueError):
        media.read_frames(path, [0.0], shortest_edge=0)
    with pytest.raises(ValueError):
        media.iter_audio(path, chunk_seconds=0)
