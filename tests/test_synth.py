"""Tests for avarnet.synth: determinism, the two-sense class structure, real files."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from avarnet import media, synth
from avarnet.config import NORMAL_CLASS, VAAR_CLASSES

SIZE = (64, 48)  # (width, height): tiny renders keep the tests fast
FPS = 8.0
SR = 16_000


def _render(label: str, seed: int = 0, index: int = 0, duration: float = 2.0):
    return synth.render_clip(label, synth.clip_rng(seed, label, index), duration, FPS, SIZE, SR)


# ------------------------------------------------------------------ class structure


def test_every_pattern_is_shared_by_exactly_two_classes():
    pairs = [synth.class_patterns(label) for label in VAAR_CLASSES]
    assert len(set(pairs)) == len(VAAR_CLASSES)  # the (look, sound) pair identifies the class
    assert Counter(v for v, _ in pairs) == {v: 2 for v in synth.VISUAL_PATTERNS}
    assert Counter(a for _, a in pairs) == {a: 2 for a in synth.SOUND_PATTERNS}
    for k, (visual, sound) in enumerate(pairs):
        assert visual == synth.VISUAL_PATTERNS[k // 2]
        assert sound == synth.SOUND_PATTERNS[((k + 1) // 2) % 5]


def test_classes_sharing_a_pattern_render_it_identically():
    # With the same generator, classes sharing a look give the same pixels, and classes
    # sharing a sound the same samples: one sense alone cannot tell them apart.
    def render(label):
        return synth.render_clip(label, np.random.default_rng(7), 2.0, FPS, SIZE, SR)

    abuse, baby_cry, brawling = render("abuse"), render("baby_cry"), render("brawling")
    np.testing.assert_array_equal(abuse[0], baby_cry[0])  # both 'figure'
    np.testing.assert_array_equal(baby_cry[1], brawling[1])  # both 'cry'
    assert not np.array_equal(abuse[1], baby_cry[1])  # impacts vs cry
    assert not np.array_equal(baby_cry[0], brawling[0])  # figure vs scuffle


def _visual_features(frame: np.ndarray) -> np.ndarray:
    x = frame.astype(np.float32) / 255.0
    hi, lo = x.max(-1), x.min(-1)
    saturation = ((hi - lo) / (hi + 1e-3)).mean()
    edges = np.abs(np.diff(x, axis=1)).mean()
    dark, bright = (hi < 0.2).mean(), (lo > 0.85).mean()
    return np.array([*x.mean((0, 1)), *x.std((0, 1)), dark, bright, saturation, 10 * edges])


def _sound_features(audio: np.ndarray) -> np.ndarray:
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1.0 / SR)
    bands = [(20, 250), (250, 800), (800, 1500), (1500, 3000), (3000, 8000)]
    energy = np.array([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in bands])
    return np.log(energy / energy.sum() + 1e-9)


def _leave_one_out_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Nearest class centroid, each sample held out of the centroids in turn."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    names = sorted(set(y))
    hits = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        centroids = np.stack([x[keep & (y == n)].mean(0) for n in names])
        hits += names[int(np.argmin(((centroids - x[i]) ** 2).sum(1)))] == y[i]
    return hits / len(y)


def test_patterns_are_separable_by_coarse_cues():
    # The event always covers the middle 20 % of a clip (it lasts >= 60 % of it), so
    # crude colour statistics and band energies there must tell the patterns apart.
    looks, sounds, look_y, sound_y = [], [], [], []
    for label in VAAR_CLASSES:
        visual, sound = synth.class_patterns(label)
        for i in range(5):
            frames, audio = _render(label, seed=1, index=i, duration=3.0)
            looks.append(_visual_features(frames[len(frames) // 2]))
            sounds.append(_sound_features(audio[int(0.4 * audio.size) : int(0.6 * audio.size)]))
            look_y.append(visual)
            sound_y.append(sound)
    assert _leave_one_out_accuracy(np.array(looks), np.array(look_y)) >= 0.85
    assert _leave_one_out_accuracy(np.array(sounds), np.array(sound_y)) >= 0.85


def test_clips_vary_within_a_class():
    a, b = _render("crash", index=0), _render("crash", index=1)
    assert not np.array_equal(a[0], b[0])
    assert np.abs(a[0][0].astype(float) - b[0][0].astype(float)).mean() > 5  # other scene
    peaks = [np.abs(_render("crash", index=i)[1]).max() for i in range(6)]
    assert max(peaks) - min(peaks) > 0.1  # loudness varies


# ------------------------------------------------------------------------ render


def test_render_clip_shapes_and_ranges():
    frames, audio = _render("explosion", duration=2.5)
    assert frames.shape == (20, 48, 64, 3) and frames.dtype == np.uint8
    assert audio.shape == (int(2.5 * SR),) and audio.dtype == np.float32
    assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.2


def test_render_clip_is_deterministic_per_seed():
    first, again = _render("pain", seed=3), _render("pain", seed=3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    other = _render("pain", seed=4)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown class"):
        _render("picnic")
    with pytest.raises(ValueError, match="even"):
        synth.render_clip("crash", np.random.default_rng(0), 1.0, FPS, (63, 48), SR)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def test_untrimmed_events_follow_the_given_windows():
    events = [("explosion", 1.0, 2.5), ("police_siren", 4.0, 5.0)]
    frames, audio = synth.render_untrimmed(np.random.default_rng(0), 6.0, FPS, SIZE, SR, events)
    assert frames.shape == (48, 48, 64, 3) and audio.shape == (6 * SR,)
    labels = synth.frame_labels(events, len(frames), FPS)
    normal = VAAR_CLASSES.index(NORMAL_CLASS)
    assert labels[0] == normal and labels[int(1.0 * FPS)] == VAAR_CLASSES.index("explosion")
    assert labels[int(2.5 * FPS)] == normal  # end is exclusive
    assert labels[int(4.5 * FPS)] == VAAR_CLASSES.index("police_siren")
    assert (labels != normal).sum() == int(1.5 * FPS) + int(1.0 * FPS)

    # Between events the footage is the quiet background scene.
    quiet = frames[labels == normal].astype(np.float32)
    change = np.abs(quiet - quiet[0]).mean(axis=(1, 2, 3))
    assert change.max() < 15
    flare = frames[int(1.75 * FPS)].astype(np.float32)  # mid-explosion: a bright glow
    assert flare.mean() > quiet.mean() + 20
    windows = [(0.0, 0.9), (1.2, 2.3), (2.7, 3.8), (4.2, 4.8)]  # quiet, event, quiet, event
    rms = [_rms(audio[int(a * SR) : int(b * SR)]) for a, b in windows]
    assert min(rms[1], rms[3]) > 3 * max(rms[0], rms[2])


def test_untrimmed_rejects_events_outside_the_footage():
    with pytest.raises(ValueError, match="outside"):
        synth.render_untrimmed(np.random.default_rng(0), 2.0, FPS, SIZE, SR, [("crash", 1.0, 3.0)])


# ------------------------------------------------------------------------- files


def test_write_av_round_trip(tmp_path):
    frames, audio = _render("vandalism", duration=2.0)
    path = tmp_path / "clip.mp4"
    synth.write_av(path, frames, FPS, audio, SR)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind
    info = media.probe(path)
    assert (info.width, info.height, info.fps, info.num_frames) == (64, 48, FPS, 16)
    assert info.duration == pytest.approx(2.0)
    assert (info.audio_sample_rate, info.audio_channels) == (SR, 1)
    decoded = list(media.read_frames(path, [0.0, 1.0], info=info))
    assert np.abs(decoded[1].astype(float) - frames[8].astype(float)).mean() < 8  # lossy, close
    sound = media.load_audio(path, info=info)[: audio.size]
    assert sound.size == audio.size
    assert np.corrcoef(sound, audio)[0, 1] > 0.9


def test_write_av_stereo_audio_only_and_iterators(tmp_path):
    stereo = np.stack([np.zeros(SR, np.float32), np.full(SR, 0.2, np.float32)])
    path = tmp_path / "stereo.mp4"
    frames = (np.full((48, 64, 3), 100, np.uint8) for _ in range(8))
    synth.write_av(path, frames, 8.0, stereo, SR)
    info = media.probe(path)
    assert info.audio_channels == 2 and info.num_frames == 8
    audio_only = tmp_path / "sound.m4a"
    synth.write_av(audio_only, None, 8.0, stereo[1], SR)
    with pytest.raises(media.NoVideoStreamError):
        media.probe(audio_only)


def test_write_av_rejects_bad_input(tmp_path):
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="even"):
        synth.write_av(path, np.zeros((2, 47, 64, 3), np.uint8), 8.0, None)
    with pytest.raises(ValueError):
        synth.write_av(path, None, 8.0, None)
    with pytest.raises(ValueError, match="no frames"):
        synth.write_av(path, np.zeros((0, 48, 64, 3), np.uint8), 8.0, None)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_synthesize_dataset_layout_and_stability(tmp_path):
    kwargs = dict(duration=(1.0, 2.0), fps=FPS, size=SIZE, classes=("crash", "normal"))
    paths = synth.synthesize_dataset(
        tmp_path / "a", clips_per_class=2, seed=5, progress=False, **kwargs
    )
    names = sorted(p.relative_to(tmp_path / "a").as_posix() for p in paths)
    assert names == [
        "crash/crash_000.mp4",
        "crash/crash_001.mp4",
        "normal/normal_000.mp4",
        "normal/normal_001.mp4",
    ]
    infos = {p.relative_to(tmp_path / "a").as_posix(): media.probe(p) for p in paths}
    for info in infos.values():
        assert 1.0 <= info.duration <= 2.0 and info.has_audio
        assert (info.width, info.height, info.audio_sample_rate) == (64, 48, SR)
        samples = media.load_audio(info.path, info=info).size
        assert samples >= round(info.duration * SR)
    # clip i of a class does not depend on how many clips are made
    fewer = synth.synthesize_dataset(
        tmp_path / "b", clips_per_class=1, seed=5, progress=False, **kwargs
    )
    for path in fewer:
        same = infos[path.relative_to(tmp_path / "b").as_posix()]
        info = media.probe(path)
        assert info.duration == same.duration
        ours = next(media.read_frames(path, [0.5], info=info)).astype(float)
        theirs = next(media.read_frames(same.path, [0.5], info=same)).astype(float)
        assert np.abs(ours - theirs).mean() < 1.0
