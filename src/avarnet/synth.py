"""Procedural audio-visual clips for the ten VAAR classes (demo and test data).

Every clip is a background scene (sky, ground, a few buildings, sensor noise,
ambient noise and mains hum) with one synchronised audio-visual event lasting
60-90 % of the clip. Events are built from five visual and five sound patterns,
coarse and strong on purpose, so that even randomly initialised encoders see
them: large areas of distinct colour, brightness, texture and motion; distinct
spectra (noise bands, harmonic tones, sweeps) and pulsing rates.

Class k of ``VAAR_CLASSES`` shows visual pattern ``k // 2`` and plays sound
pattern ``((k + 1) // 2) % 5``. Each visual pattern is therefore shared by
exactly two classes that differ only in sound, and each sound pattern by two
classes that differ only in look: one sense alone can reach about 50 %
accuracy, both together up to 100 %.

=====  ============  ==============  =============
k      class         visual          sound
=====  ============  ==============  =============
0      abuse         V0 figure       A0 impacts
1      baby_cry      V0 figure       A1 cry
2      brawling      V1 scuffle      A1 cry
3      crash         V1 scuffle      A2 rumble
4      explosion     V2 flare        A2 rumble
5      intruder      V2 flare        A3 murmur
6      normal        V3 crowd        A3 murmur
7      pain          V3 crowd        A4 siren
8      police_siren  V4 strobe       A4 siren
9      vandalism     V4 strobe       A0 impacts
=====  ============  ==============  =============

Visual patterns: *figure* a large dark silhouette swaying and looming;
*scuffle* two saturated striped blocks (green, magenta) clashing at 2-3.5 Hz;
*flare* a flickering white-yellow glow that blows out a large area; *crowd*
40-70 small colourful walkers; *strobe* the whole frame tinted red and blue in
turn at 1.5-3 Hz under a light bar. Sound patterns: *impacts* decaying bursts
of 0.8-6 kHz noise at 1.5-3 per second with a low thump; *cry* a harmonic wail
(f0 350-500 Hz, vibrato) in 0.5-0.9 s bouts; *rumble* 30-250 Hz noise with a
loud onset; *murmur* 250-1500 Hz noise with a syllabic 2-6 Hz envelope;
*siren* a tone sweeping around 900-1100 Hz.

Everything is deterministic per seed: clip i of class c is rendered from
``SeedSequence(seed, spawn_key=(c, i))``, so it does not depend on how many
clips are made.
"""

from __future__ import annotations

import colorsys
import itertools
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avarnet.config import NORMAL_CLASS, SAMPLE_RATE, VAAR_CLASSES
from avarnet.io import atomic_write
from avarnet.progress import progress_bar

VISUAL_PATTERNS: tuple[str, ...] = ("figure", "scuffle", "flare", "crowd", "strobe")
SOUND_PATTERNS: tuple[str, ...] = ("impacts", "cry", "rumble", "murmur", "siren")

EVENT_FRACTION = (0.6, 0.9)  # share of the clip the event lasts
LOUDNESS = (0.3, 0.9)  # peak amplitude of the event sound
VISUAL_FADE_S = 0.25  # event fade in/out, video
AUDIO_FADE_S = 0.1  # event fade in/out, audio
AMBIENT_RMS = (0.008, 0.03)  # background noise level
SENSOR_NOISE_STD = 3.0  # per-pixel noise, 0-255 scale
NOISE_BANK = 4  # sensor-noise frames cycled through (rendering speed)
X264_OPTIONS = {"preset": "ultrafast", "crf": "23"}  # ~0.1 s per 10 s clip at 320x240

Event = tuple[str, float, float]  # (class, start s, end s)


def class_patterns(label: str) -> tuple[str, str]:
    """(visual pattern, sound pattern) of a class, following the table above."""
    k = _class_index(label)
    return VISUAL_PATTERNS[k // 2], SOUND_PATTERNS[((k + 1) // 2) % len(SOUND_PATTERNS)]


def _class_index(label: str) -> int:
    if label not in VAAR_CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {list(VAAR_CLASSES)}")
    return VAAR_CLASSES.index(label)


# ------------------------------------------------------------------ writing files


def write_av(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray] | None,
    fps: float,
    audio: np.ndarray | None,
    sample_rate: int = SAMPLE_RATE,
    *,
    faststart: bool = False,
) -> None:
    """Write an .mp4: H.264 (yuv420p) from RGB uint8 frames and AAC from float audio.

    frames: (N, H, W, 3) uint8 or an iterable of (H, W, 3); H and W must be even.
    audio: float32 in [-1, 1], (S,) mono or (C, S). Either may be None, not both.
    ``faststart`` puts the index at the front of the file. The file appears
    atomically (written under a temporary name, then renamed).
    """
    if frames is None and audio is None:
        raise ValueError("write_av needs frames, audio or both")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    options = {"movflags": "+faststart"} if faststart else {}

    def write(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4", options=options) as container:
            _mux(container, frames, fps, _as_channels(audio), sample_rate)

    atomic_write(path, write)


_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _layout(audio: np.ndarray) -> str:
    return _LAYOUTS[audio.shape[0]]


def _as_channels(audio: np.ndarray | None) -> np.ndarray | None:
    """(C, S) float32 clipped to [-1, 1]."""
    if audio is None:
        return None
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] > 8:
        raise ValueError(f"audio must be (S,) or (C, S), got shape {audio.shape}")
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0))


def _mux(container, frames, fps: float, audio: np.ndarray | None, sample_rate: int) -> None:
    """Encode video and audio interleaved in time order."""
    rate = Fraction(fps).limit_denominator(1001)
    first, rest = _peek_frames(frames)
    vstream = _add_video_stream(container, rate, first.shape) if first is not None else None
    astream = None
    if audio is not None:
        astream = container.add_stream("aac", rate=sample_rate, layout=_layout(audio))
    container.start_encoding()  # writes the header even when no packet follows
    sent = 0  # audio samples encoded so far
    if vstream is not None:
        for i, frame in enumerate(rest):
            _encode_video(container, vstream, frame, i, first.shape)
            if astream is not None:
                upto = min(audio.shape[1], round((i + 1) / rate * sample_rate))
                sent = _encode_audio(container, astream, audio, sent, upto, sample_rate)
        container.mux(vstream.encode(None))
    if astream is not None:
        _encode_audio(container, astream, audio, sent, audio.shape[1], sample_rate)
        container.mux(astream.encode(None))


def _peek_frames(frames) -> tuple[np.ndarray | None, Iterator[np.ndarray]]:
    """The first frame (None without video) and an iterator over all frames."""
    if frames is None:
        return None, iter(())
    if isinstance(frames, np.ndarray) and (frames.ndim != 4 or frames.shape[-1] != 3):
        raise ValueError(f"frames must be (N, H, W, 3), got shape {frames.shape}")
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write (pass frames=None for an audio-only file)")
    first = np.asarray(first)
    return first, itertools.chain([first], it)


def _add_video_stream(container, rate: Fraction, shape: tuple[int, ...]):
    height, width = shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even width and height, got {width}x{height}")
    stream = container.add_stream("libx264", rate=rate, options=dict(X264_OPTIONS))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = 1 / rate
    return stream


def _encode_video(container, stream, frame: np.ndarray, index: int, shape) -> None:
    frame = np.asarray(frame)
    if frame.shape != tuple(shape) or frame.dtype != np.uint8:
        raise ValueError(
            f"frame {index}: expected uint8 {tuple(shape)}, got {frame.dtype} {frame.shape}"
        )
    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    video_frame.pts = index
    video_frame.time_base = stream.codec_context.time_base
    container.mux(stream.encode(video_frame))


def _encode_audio(container, stream, audio: np.ndarray, start: int, end: int, rate: int) -> int:
    """Encode samples [start, end) of (C, S) audio; returns end."""
    if end <= start:
        return start
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(audio[:, start:end]), format="fltp", layout=_layout(audio)
    )
    frame.sample_rate = rate
    frame.pts = start
    frame.time_base = Fraction(1, rate)
    container.mux(stream.encode(frame))
    return end


# ------------------------------------------------------------------ colours, noise


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] to an RGB float32 colour on the 0-255 scale."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """(n,) float32 Gaussian noise band-limited to [lo, hi] Hz, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spectrum[(freqs < lo) | (freqs > hi)] = 0.0
    return _unit_rms(np.fft.irfft(spectrum, n))


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
    return (x / rms if rms > 0 else x).astype(np.float32)


def _unit_peak(x: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return (x / peak if peak > 0 else x).astype(np.float32)


def _fade(n: int, fade: int) -> np.ndarray:
    """(n,) envelope rising over ``fade`` samples (raised cosine), flat, falling at the end."""
    env = np.ones(n, np.float32)
    fade = min(fade, n // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade, dtype=np.float32))
        env[:fade] = ramp
        env[n - fade :] = ramp[::-1]
    return env


# ----------------------------------------------------------------------- the scene


class _Scene:
    """Background shared by all classes: sky, ground, buildings, light drift, sensor noise."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.horizon = int(height * rng.uniform(0.35, 0.55))
        base = np.empty((height, width, 3), np.float32)
        top = _hsv(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.6, 0.85))
        bottom = _hsv(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.5, 0.75))
        ramp = np.linspace(0.0, 1.0, self.horizon, dtype=np.float32)[:, None, None]
        base[: self.horizon] = top * (1 - ramp) + bottom * ramp
        base[self.horizon :] = _hsv(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.25, 0.45))
        self._buildings(rng, base)
        base += self._texture(rng)
        self.base = base
        self.drift = (rng.uniform(0.02, 0.06), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi))
        self.noise = rng.normal(0.0, SENSOR_NOISE_STD, (NOISE_BANK, height, width, 3)).astype(
            np.float32
        )

    def _buildings(self, rng: np.random.Generator, base: np.ndarray) -> None:
        for _ in range(int(rng.integers(3, 7))):
            w = int(self.width * rng.uniform(0.08, 0.2))
            h = int(self.height * rng.uniform(0.1, 0.35))
            x = int(rng.uniform(0, self.width - w))
            colour = _hsv(rng.uniform(), rng.uniform(0.05, 0.25), rng.uniform(0.25, 0.6))
            base[max(0, self.horizon - h) : self.horizon, x : x + w] = colour

    def _texture(self, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 1) blocky low-frequency grain, +-6 on the 0-255 scale."""
        cell = 8
        coarse = rng.uniform(-6.0, 6.0, (self.height // cell + 1, self.width // cell + 1, 1))
        grain = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)
        return grain[: self.height, : self.width].astype(np.float32)

    def frame(self, index: int, t: float) -> np.ndarray:
        """(H, W, 3) float32 on the 0-255 scale: the scene at time t (s)."""
        amp, freq, phase = self.drift
        gain = np.float32(1.0 + amp * np.sin(2 * np.pi * freq * t + phase))
        return self.base * gain + self.noise[index % NOISE_BANK]


def _paste(canvas: np.ndarray, patch: np.ndarray, x: float, y: float, alpha: float) -> None:
    """Blend ``patch`` (h, w, 3) into ``canvas`` with its top-left at (x, y), clipped."""
    h, w = patch.shape[:2]
    x0, y0 = round(x), round(y)
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(canvas.shape[1], x0 + w), min(canvas.shape[0], y0 + h)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    src = patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    region = canvas[cy0:cy1, cx0:cx1]
    region += alpha * (src - region)


# ---------------------------------------------------------------- visual patterns


class _Figure:
    """V0: a large dark silhouette (head and body) that sways and looms closer."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, horizon: int) -> None:
        self.size = rng.uniform(0.5, 0.65) * height
        self.cx = rng.uniform(0.3, 0.7) * width
        self.foot = rng.uniform(0.88, 0.98) * height
        self.sway = (rng.uniform(0.03, 0.08) * width, rng.uniform(0.3, 0.7), rng.uniform(0, 6.3))
        self.colour = _hsv(rng.uniform(), rng.uniform(0.2, 0.5), rng.uniform(0.04, 0.15))
        self.yy = np.arange(height, dtype=np.float32)[:, None]
        self.xx = np.arange(width, dtype=np.float32)[None, :]

    def draw(self, canvas: np.ndarray, t: float, alpha: float) -> None:
        amp, freq, phase = self.sway
        cx = self.cx + amp * np.sin(2 * np.pi * freq * t + phase)
        size = self.size * (1.0 + 0.15 * min(t / 4.0, 1.0))
        head_r, body_y = 0.11 * size, self.foot - 0.4 * size
        head_y = self.foot - size + head_r
        dx = self.xx - cx
        head = dx**2 + (self.yy - head_y) ** 2 <= head_r**2
        body = (dx / (0.22 * size)) ** 2 + ((self.yy - body_y) / (0.42 * size)) ** 2 <= 1.0
        mask = head | body  # (H, W)
        canvas[mask] += alpha * (self.colour - canvas[mask])


class _Scuffle:
    """V1: two saturated striped blocks (green, magenta) clashing together quickly."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, horizon: int) -> None:
        self.width, self.height = width, height
        bw, bh = int(rng.uniform(0.16, 0.22) * width), int(rng.uniform(0.4, 0.55) * height)
        period = rng.uniform(6.0, 12.0)
        self.left = self._striped(bw, bh, period, rng.uniform(0.28, 0.38), rng, +1)
        self.right = self._striped(bw, bh, period, rng.uniform(0.78, 0.88), rng, -1)
        self.cx = rng.uniform(0.4, 0.6) * width
        self.cy = rng.uniform(0.45, 0.6) * height
        self.freq, self.phase = rng.uniform(2.0, 3.5), rng.uniform(0, 6.3)

    @staticmethod
    def _striped(w: int, h: int, period: float, hue: float, rng, slope: int) -> np.ndarray:
        colour = _hsv(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = (((xx + slope * yy) / (period / 2)).astype(int) % 2).astype(np.float32)
        return colour * (0.25 + 0.75 * stripes[..., None])  # (h, w, 3)

    def draw(self, canvas: np.ndarray, t: float, alpha: float) -> None:
        bh, bw = self.left.shape[:2]
        swing = abs(np.sin(2 * np.pi * self.freq * t + self.phase))
        gap = bw * (0.05 + 0.6 * swing)
        bob = 0.03 * self.height * np.sin(4 * np.pi * self.freq * t)
        y = self.cy - bh / 2
        _paste(canvas, self.left, self.cx - gap / 2 - bw, y + bob, alpha)
        _paste(canvas, self.right, self.cx + gap / 2, y - bob, alpha)


class _Flare:
    """V2: a flickering white-yellow glow that blows out a large part of the frame."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, horizon: int) -> None:
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.25, 0.6) * height
        sigma = rng.uniform(0.2, 0.32) * width
        yy = np.arange(height, dtype=np.float32)[:, None]
        xx = np.arange(width, dtype=np.float32)[None, :]
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))  # (H, W)
        colour = _hsv(rng.uniform(0.08, 0.15), rng.uniform(0.15, 0.45), 1.0)
        self.glow = (blob[..., None] * colour * 1.4).astype(np.float32)  # (H, W, 3)
        self.flicker = (rng.uniform(5.0, 9.0), rng.uniform(1.0, 3.0), rng.uniform(0, 6.3))

    def draw(self, canvas: np.ndarray, t: float, alpha: float) -> None:
        fast, slow, phase = self.flicker
        wobble = np.sin(2 * np.pi * fast * t) * np.sin(2 * np.pi * slow * t + phase)
        canvas += self.glow * np.float32(alpha * (0.85 + 0.3 * wobble))


class _Crowd:
    """V3: 40-70 small colourful walkers crossing the ground at different speeds."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, horizon: int) -> None:
        self.width = width
        self.walkers = []
        for _ in range(int(rng.integers(40, 71))):
            foot = rng.uniform(horizon + 0.05 * height, 0.98 * height)
            depth = 0.6 + 0.8 * (foot - horizon) / max(1.0, height - horizon)  # nearer: bigger
            h = max(4, int(rng.uniform(0.06, 0.09) * height * depth))
            w = max(2, int(0.4 * h))
            patch = np.empty((h, w, 3), np.float32)
            patch[:] = _hsv(rng.uniform(), rng.uniform(0.5, 0.9), rng.uniform(0.55, 1.0))
            patch[: max(1, h // 4)] = _hsv(rng.uniform(0.02, 0.1), 0.4, rng.uniform(0.5, 0.9))
            speed = rng.choice([-1.0, 1.0]) * rng.uniform(15.0, 45.0) * depth
            self.walkers.append((patch, rng.uniform(0, width), foot - h, speed))

    def draw(self, canvas: np.ndarray, t: float, alpha: float) -> None:
        for patch, x0, top, speed in self.walkers:
            w = patch.shape[1]
            x = (x0 + speed * t) % (self.width + w) - w
            _paste(canvas, patch, x, top, alpha)


class _Strobe:
    """V4: the whole frame tinted red and blue in turn under a bright light bar."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, horizon: int) -> None:
        self.red = np.array([rng.uniform(200, 255), rng.uniform(0, 40), rng.uniform(0, 40)])
        self.blue = np.array([rng.uniform(0, 40), rng.uniform(30, 80), rng.uniform(200, 255)])
        self.rate, self.phase = rng.uniform(1.5, 3.0), rng.uniform(0.0, 1.0)
        self.strength = rng.uniform(0.45, 0.65)
        bw, bh = int(rng.uniform(0.2, 0.35) * width), max(2, int(rng.uniform(0.05, 0.08) * height))
        self.bar = (rng.uniform(0.1, 0.9) * width - bw / 2, rng.uniform(0.05, 0.25) * height)
        self.bar_shape = (bh, bw)

    def draw(self, canvas: np.ndarray, t: float, alpha: float) -> None:
        red_on = (t * self.rate + self.phase) % 1.0 < 0.5
        colour = (self.red if red_on else self.blue).astype(np.float32)
        k = np.float32(alpha * self.strength)
        canvas += k * (colour - canvas)
        bar = np.empty((*self.bar_shape, 3), np.float32)
        bar[:] = 0.5 * (colour + 255.0)
        _paste(canvas, bar, self.bar[0], self.bar[1], alpha)


_VISUALS = {
    "figure": _Figure,
    "scuffle": _Scuffle,
    "flare": _Flare,
    "crowd": _Crowd,
    "strobe": _Strobe,
}


# ----------------------------------------------------------------- sound patterns


def _impacts(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A0: decaying bursts of bright noise with a low thump, 1.5-3 per second."""
    rate, tau = rng.uniform(1.5, 3.0), rng.uniform(0.03, 0.07)
    kernel_len = int(5 * tau * sr)
    decay = np.exp(-np.arange(kernel_len) / (tau * sr)).astype(np.float32)
    env = np.zeros(n + kernel_len, np.float32)
    t = rng.uniform(0.0, 0.2)
    while t * sr < n:
        start = int(t * sr)
        env[start : start + kernel_len] += decay * rng.uniform(0.6, 1.0)
        t += rng.uniform(0.7, 1.3) / rate
    env = env[:n]
    thump = np.sin(2 * np.pi * rng.uniform(60.0, 110.0) * np.arange(n) / sr)
    return _unit_peak(env * (_band_noise(rng, n, sr, 800.0, 6000.0) + 1.5 * thump))


def _cry(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A1: a harmonic wail (f0 350-500 Hz, vibrato) in 0.5-0.9 s bouts."""
    t = np.arange(n) / sr
    f0 = rng.uniform(350.0, 500.0)
    vibrato = 1.0 + rng.uniform(0.02, 0.04) * np.sin(2 * np.pi * rng.uniform(4.0, 6.0) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / sr
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    bouts = np.zeros(n, np.float32)
    start = rng.uniform(0.0, 0.2)
    while start * sr < n:
        length = rng.uniform(0.5, 0.9)
        a, b = int(start * sr), min(n, int((start + length) * sr))
        bouts[a:b] = _fade(b - a, int(0.08 * sr))
        start += length + rng.uniform(0.2, 0.4)
    return _unit_peak(tone * bouts)


def _rumble(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A2: deep 30-250 Hz noise with a loud onset decaying to a sustained roar."""
    t = np.arange(n) / sr
    decay = rng.uniform(0.8, 2.0)
    env = 0.45 + 0.55 * np.exp(-t / decay)
    env *= 1.0 + 0.25 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t)
    return _unit_peak(_band_noise(rng, n, sr, 30.0, 250.0) * env)


def _murmur(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A3: voice-band noise (250-1500 Hz) with a syllabic 2-6 Hz envelope."""
    syllables = _band_noise(rng, n, sr, 2.0, 6.0)
    env = np.clip(0.5 + 0.5 * syllables, 0.05, 1.5)
    return _unit_peak(_band_noise(rng, n, sr, 250.0, 1500.0) * env)


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A4: a tone sweeping up and down around 900-1100 Hz every 1-2.5 s."""
    t = np.arange(n) / sr
    centre, depth = rng.uniform(900.0, 1100.0), rng.uniform(250.0, 400.0)
    freq = centre + depth * np.sin(2 * np.pi * rng.uniform(0.4, 1.0) * t + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return _unit_peak(np.sin(phase) + 0.3 * np.sin(2 * phase))


_SOUNDS = {
    "impacts": _impacts,
    "cry": _cry,
    "rumble": _rumble,
    "murmur": _murmur,
    "siren": _siren,
}


def _ambience(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """(n,) background: pinkish noise plus a faint mains hum (50 or 60 Hz)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    noise = _unit_rms(np.fft.irfft(spectrum, n)) * rng.uniform(*AMBIENT_RMS)
    mains = rng.choice([50.0, 60.0])
    t = np.arange(n) / sr
    hum = rng.uniform(0.0, 0.01) * (
        np.sin(2 * np.pi * mains * t) + 0.5 * np.sin(4 * np.pi * mains * t)
    )
    return (noise + hum).astype(np.float32)


# ---------------------------------------------------------------------- rendering


class _EventTrack:
    """One event: its visual drawer, its sound, and its [start, end) window in seconds."""

    def __init__(
        self,
        look_rng: np.random.Generator,
        sound_rng: np.random.Generator,
        label: str,
        start: float,
        end: float,
        scene: _Scene,
        sr: int,
    ) -> None:
        visual, sound = class_patterns(label)
        self.start, self.end = start, end
        self.visual = _VISUALS[visual](look_rng, scene.width, scene.height, scene.horizon)
        n = max(1, round((end - start) * sr))
        loudness = sound_rng.uniform(*LOUDNESS)
        self.sound = _SOUNDS[sound](sound_rng, n, sr) * _fade(n, int(AUDIO_FADE_S * sr)) * loudness

    def alpha(self, t: float) -> float:
        """Visual strength at time t: 0 outside the event, fades in and out."""
        if not self.start <= t < self.end:
            return 0.0
        fade = min(VISUAL_FADE_S, (self.end - self.start) / 2)
        return float(min(1.0, (t - self.start) / fade, (self.end - t) / fade)) if fade > 0 else 1.0


def _render(
    rng: np.random.Generator,
    num_frames: int,
    fps: float,
    size: tuple[int, int],
    sample_rate: int,
    events: Sequence[Event],
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (N, H, W, 3) uint8 and mono audio (S,) float32, S = N / fps * sample_rate."""
    width, height = size
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"size must be positive and even (H.264), got {size}")
    # Separate streams for scene, ambience and each event's look and sound: classes that
    # share a pattern render it identically from the same generator.
    scene_rng, ambience_rng, *event_rngs = rng.spawn(2 + 2 * len(events))
    scene = _Scene(scene_rng, width, height)
    tracks = [
        _EventTrack(event_rngs[2 * k], event_rngs[2 * k + 1], label, s, e, scene, sample_rate)
        for k, (label, s, e) in enumerate(events)
    ]
    num_samples = round(num_frames / fps * sample_rate)
    audio = _ambience(ambience_rng, num_samples, sample_rate)
    for track in tracks:
        a = min(num_samples, round(track.start * sample_rate))
        b = min(num_samples, a + track.sound.size)
        audio[a:b] += track.sound[: b - a]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        t = i / fps
        canvas = scene.frame(i, t)
        for track in tracks:
            alpha = track.alpha(t)
            if alpha > 0:
                track.visual.draw(canvas, t - track.start, alpha)
        np.clip(canvas, 0.0, 255.0, out=canvas)
        frames[i] = canvas
    return frames, np.clip(audio, -1.0, 1.0)


def render_clip(
    label: str,
    rng: np.random.Generator,
    duration: float,
    fps: float,
    size: tuple[int, int],
    sample_rate: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One clip of class ``label``: frames (N, H, W, 3) uint8 RGB and audio (S,) float32.

    size is (width, height). N = round(duration * fps); S = N / fps * sample_rate,
    so both tracks have the same length. The event lasts 60-90 % of the clip.
    """
    _class_index(label)
    num_frames = max(1, round(duration * fps))
    length = num_frames / fps
    event_len = rng.uniform(*EVENT_FRACTION) * length
    start = rng.uniform(0.0, length - event_len)
    return _render(rng, num_frames, fps, size, sample_rate, [(label, start, start + event_len)])


def render_untrimmed(
    rng: np.random.Generator,
    duration: float,
    fps: float,
    size: tuple[int, int],
    sample_rate: int,
    events: list[Event],
) -> tuple[np.ndarray, np.ndarray]:
    """Long background footage with events ``(class, start s, end s)`` over [start, end).

    Returns frames (N, H, W, 3) uint8 and audio (S,) float32 like ``render_clip``;
    the frame-level truth is ``frame_labels(events, N, fps)``. Memory is
    N * H * W * 3 bytes, so keep long renders small.
    """
    num_frames = max(1, round(duration * fps))
    for label, start, end in events:
        _class_index(label)
        if not 0.0 <= start < end <= num_frames / fps + 1e-9:
            raise ValueError(f"event {label!r} [{start}, {end}) is outside [0, {duration}]")
    return _render(rng, num_frames, fps, size, sample_rate, events)


def frame_labels(
    events: Sequence[Event], num_frames: int, fps: float, classes: Sequence[str] = VAAR_CLASSES
) -> np.ndarray:
    """(N,) int64 class index per frame (frame i at i / fps); ``normal`` outside events."""
    labels = np.full(num_frames, list(classes).index(NORMAL_CLASS), np.int64)
    times = np.arange(num_frames) / fps
    for label, start, end in events:
        labels[(times >= start) & (times < end)] = list(classes).index(label)
    return labels


def clip_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """Generator of clip ``index`` of class ``label``: independent of how many clips are made."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_class_index(label), index))
    )


def synthesize_dataset(
    out: str | Path,
    clips_per_class: int = 20,
    seed: int = 0,
    duration: tuple[float, float] = (8.0, 12.0),
    fps: float = 12.0,
    size: tuple[int, int] = (320, 240),
    sample_rate: int = SAMPLE_RATE,
    classes: Sequence[str] = VAAR_CLASSES,
    progress: bool = True,
) -> list[Path]:
    """Write ``OUT/<class>/<class>_<i:03d>.mp4`` (H.264 + AAC); returns the paths written.

    Clip durations are uniform in ``duration`` seconds; size is (width, height).
    """
    out = Path(out)
    jobs = [(label, i) for label in classes for i in range(clips_per_class)]
    paths = []
    for label, i in progress_bar(jobs, desc="synth", unit="clip", disable=not progress):
        rng = clip_rng(seed, label, i)
        frames, audio = render_clip(label, rng, rng.uniform(*duration), fps, size, sample_rate)
        path = out / label / f"{label}_{i:03d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_av(path, frames, fps, audio, sample_rate)
        paths.append(path)
    return paths
