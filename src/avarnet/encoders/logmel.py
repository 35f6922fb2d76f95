"""The VGGish / YAMNet log-mel front end: waveform -> log-mel spectrogram -> fixed-size patches.

A port of VGGish's ``mel_features`` (the AudioSet release): frames of ``window_seconds`` every
``hop_seconds`` (no padding), a periodic Hann window, the magnitude of an FFT of the next power of
two, a triangular HTK-mel filterbank of ``mel_bands`` bands between ``fmin`` and ``fmax`` (the DC bin
unused), ``log(mel + log_offset)``, then patches of ``patch_frames`` frames every
``patch_hop_frames``. VGGish: 16 kHz, 25 ms / 10 ms, 64 bands 125-7500 Hz, offset 0.01, 96-frame
patches every 96 frames (0.96 s); YAMNet takes the same patches every 48 frames with offset 0.001.

Patch p of a window covers samples [p * patch_hop_samples, p * patch_hop_samples +
patch_receptive_field), so an encoder of patches places its outputs in time exactly as a
waveform encoder with that hop and receptive field does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

MEL_BREAK_HZ = 700.0
MEL_HIGH_Q = 1127.0


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return MEL_HIGH_Q * np.log(1.0 + np.asarray(hz, dtype=np.float64) / MEL_BREAK_HZ)


def frame_signal(data: np.ndarray, window: int, hop: int) -> np.ndarray:
    """(N, ...) -> (1 + (N - window) // hop, window, ...) views; (0, window, ...) when N < window."""
    count = 1 + (data.shape[0] - window) // hop if data.shape[0] >= window else 0
    if count == 0:
        return np.zeros((0, window) + data.shape[1:], dtype=data.dtype)
    shape = (count, window) + data.shape[1:]
    strides = (data.strides[0] * hop,) + data.strides
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides, writeable=False)


def mel_matrix(
    bands: int, spectrogram_bins: int, rate: int, fmin: float, fmax: float
) -> np.ndarray:
    """(spectrogram_bins, bands) triangular HTK-mel weights; the DC bin gets none (as VGGish)."""
    freqs = np.linspace(0.0, rate / 2.0, spectrogram_bins)
    mels = hertz_to_mel(freqs)
    edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), bands + 2)
    weights = np.empty((spectrogram_bins, bands))
    for i in range(bands):
        low, centre, high = edges[i : i + 3]
        rising = (mels - low) / (centre - low)
        falling = (high - mels) / (high - centre)
        weights[:, i] = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


@dataclass(frozen=True)
class LogMelFrontEnd:
    """Log-mel patches of a mono waveform (defaults: VGGish's)."""

    sample_rate: int = 16_000
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    mel_bands: int = 64
    fmin: float = 125.0
    fmax: float = 7500.0
    log_offset: float = 0.01
    patch_frames: int = 96
    patch_hop_frames: int = 96

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_seconds))

    @property
    def hop_samples(self) -> int:
        return int(round(self.sample_rate * self.hop_seconds))

    @property
    def fft_length(self) -> int:
        return 2 ** int(np.ceil(np.log2(self.window_samples)))

    @property
    def patch_hop_samples(self) -> int:
        """Samples between the starts of consecutive patches (VGGish: 15360, 0.96 s)."""
        return self.patch_hop_frames * self.hop_samples

    @property
    def patch_receptive_field(self) -> int:
        """Samples one patch sees (VGGish: 15600)."""
        return self.window_samples + (self.patch_frames - 1) * self.hop_samples

    @cached_property
    def window(self) -> np.ndarray:
        n = self.window_samples
        return 0.5 - 0.5 * np.cos(2 * np.pi / n * np.arange(n))  # periodic Hann

    @cached_property
    def filterbank(self) -> np.ndarray:
        bins = self.fft_length // 2 + 1
        return mel_matrix(self.mel_bands, bins, self.sample_rate, self.fmin, self.fmax)

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """Mono samples (S,) -> log-mel spectrogram (frames, mel_bands) float64."""
        frames = frame_signal(
            np.asarray(samples, np.float64), self.window_samples, self.hop_samples
        )
        spectrum = np.abs(np.fft.rfft(frames * self.window, self.fft_length))
        return np.log(spectrum @ self.filterbank + self.log_offset)

    def patches(self, samples: np.ndarray) -> np.ndarray:
        """Mono samples (S,) -> patches (P, patch_frames, mel_bands) float32, P = 1 +
        (S - patch_receptive_field) // patch_hop_samples (0 when S is shorter than one patch)."""
        spec = self.log_mel(samples)
        return frame_signal(spec, self.patch_frames, self.patch_hop_frames).astype(np.float32)

    def num_patches(self, num_samples: int) -> int:
        if num_samples < self.patch_receptive_field:
            return 0
        return 1 + (num_samples - self.patch_receptive_field) // self.patch_hop_samples


__all__ = ["LogMelFrontEnd", "frame_signal", "hertz_to_mel", "mel_matrix"]
