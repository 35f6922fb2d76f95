"""Throughput and latency of every stage on this machine: decode, MobileViT, Wav2Vec2, temporal model, end to end.

:func:`run_bench` measures, on a generated surveillance-like clip (or a given video):

* decode: media seconds decoded and cut into segments per wall-clock second;
* MobileViT frames/s at batch 1 and 4 on the CPU (1 and 64 on a GPU) for each video variant;
* Wav2Vec2 audio-seconds/s the way a stream runs it (each 1-s segment with its left context)
  and the way ``extract`` runs it (10-s chunks);
* temporal-model windows/s at batch 1 and 256;
* end to end, through :func:`avarnet.stream.run_stream` on the clip, one row per combination of
  video variant, runtime (torch, ONNX Runtime), precision and causal audio look-back: GFLOP per
  segment, the compute floor (matmul GFLOP/s measured right before the row) and the real-time
  factor it allows, the real-time factor (media seconds per wall second) with batching, per-segment
  compute latency p50/p95 one segment at a time, the real-time factor as % of the floor, and the
  minimum cosine of the row's features to torch fp32, and the fraction of segments whose label
  (each segment scored from the window ending at it, as a stream scores it) is torch fp32's;
* how much the stream's features differ: per-segment vs chunked audio, and each faster precision
  vs fp32 (cosine similarity).

Precisions: fp32; bf16 (autocast; CPUs with bf16 instructions, GPUs); int8 (Wav2Vec2's linear
layers dynamically quantised, CPU); fp16 (GPU). Backbones use random weights (offline);
throughput does not depend on the weights' values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..config import (
    DEFAULT_AUDIO_BACKBONE,
    DEFAULT_AUDIO_CONTEXT_S,
    ONNX_PRECISIONS,
    RUNTIMES,
    VAAR_CLASSES,
    FeatureSpec,
    ModelConfig,
    TrainConfig,
)
from ..data import Normalizer
from ..encoders import AudioEncoder, VideoEncoder, resolve_device
from ..extract import Extractor, build_spec
from ..features import BATCH_SEGMENTS, CPU_FRAME_BATCH, SegmentEncoder
from ..inference import model_input, step_probabilities
from ..media import Segment, SegmentSource
from ..models import create_model
from ..report.html import pipe_table
from ..runtime import autocast_dtype, configure_cpu, cpu_has_bf16, quantize_audio_encoder
from ..stream import StreamOptions, run_stream
from ..synth import write_av

if TYPE_CHECKING:
    from ..export import OnnxBundle

log = logging.getLogger("avarnet")

MOBILEVIT_VARIANTS = (
    "apple/mobilevit-small",
    "apple/mobilevit-x-small",
    "apple/mobilevit-xx-small",
)
PAPER = {
    "gpu": "RTX 3090 Ti",
    "VAAR": {"fps": 9.13, "latency_ms": 65.69, "inference_ms": 184.93},
    "XD-Violence": {"fps": 4.0, "latency_ms": 112.23, "inference_ms": 429.87},
}
CPU_VIDEO_BATCHES = (1, CPU_FRAME_BATCH)
GPU_VIDEO_BATCHES = (1, 64)
AUDIO_BATCH_SECONDS = 10.0  # extract's chunk length
MODEL_BATCHES = (1, 256)
GPU_BATCH_SEGMENTS = 32  # segments encoded together end to end on a GPU (CPU: BATCH_SEGMENTS)
CALIBRATION_FRAMES = 32
MIN_TIMED_S = 2.0  # each throughput figure times at least this long (after one warm-up call)
AUDIO_CONTEXT_SECONDS = 1.0  # the component rows' per-segment Wav2Vec2 look-back
CLIP_SAMPLE_RATE = 48_000
AGREEMENT_SEGMENTS = 12  # segments whose features each row compares with torch fp32
# bf16 is measured only where the CPU has bf16 instructions (elsewhere it is slower than fp32)
DEFAULT_PRECISIONS = (
    ("fp32", "int8", "bf16") if cpu_has_bf16() else ("fp32", "int8")
)  # generated clips carry 48 kHz audio, like most cameras


@dataclass(frozen=True)
class BenchOptions:
    """What :func:`run_bench` measures."""

    seconds: float = 30.0  # length of the generated clip
    width: int = 640
    height: int = 360
    fps: float = 25.0
    video: Path | None = None  # benchmark this file instead of a generated clip
    threads: int = 0  # torch CPU threads (0: torch's default)
    device: str = "auto"  # GPU rows are added when this resolves to cuda
    video_backbones: tuple[str, ...] = MOBILEVIT_VARIANTS
    audio_backbone: str = DEFAULT_AUDIO_BACKBONE
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS  # CPU; a GPU adds fp32 and fp16
    runtimes: tuple[str, ...] = RUNTIMES
    audio_contexts: tuple[float, ...] = (DEFAULT_AUDIO_CONTEXT_S,)  # causal look-backs (s)
    cpu: bool = True  # False: GPU rows only (with device cuda)
    model: str = "mtcn"
    seq_len: int = 10
    seed: int = 0


# ----------------------------------------------------------------------------- the clip


def scene_frames(
    seconds: float, size: tuple[int, int], fps: float, seed: int = 0
) -> Iterator[np.ndarray]:
    """A street-like scene, generated frame by frame (memory does not grow with length).

    size is (width, height); yields (H, W, 3) uint8 RGB: a textured background with slow light
    drift, a few moving blocks, sensor noise.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (
        90
        + 40 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 23.0)[..., None]
        + rng.uniform(0, 60, (1, 1, 3))
    )
    noise = rng.normal(0, 4, (4, height, width, 3)).astype(np.float32)
    movers = rng.uniform(0, 1, (5, 4))  # x, y, speed, hue
    bw, bh = max(2, width // 8), max(2, height // 5)
    for i in range(max(1, round(seconds * fps))):
        t = i / fps
        frame = base * np.float32(1 + 0.05 * np.sin(0.3 * t)) + noise[i % 4]
        for x, y, speed, hue in movers:
            x0 = int((x * width + speed * 60 * t) % max(1, width - bw))
            y0 = int(y * (height - bh))
            frame[y0 : y0 + bh, x0 : x0 + bw] = (255 * hue, 120, 255 * (1 - hue))
        yield np.clip(frame, 0, 255).astype(np.uint8)


def scene_audio(seconds: float, sample_rate: int = CLIP_SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Ambient noise with a tone burst every few seconds: (S,) float32."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    t = np.arange(n, dtype=np.float32) / sample_rate
    audio = 0.02 * rng.standard_normal(n).astype(np.float32)
    audio += 0.2 * np.sin(2 * np.pi * 700 * t) * (np.sin(2 * np.pi * t / 7.0) > 0.8)
    return audio.astype(np.float32)


def write_scene_clip(
    path: Path, seconds: float, size: tuple[int, int] = (640, 360), fps: float = 25.0, seed: int = 0
) -> Path:
    """An H.264 + AAC clip of :func:`scene_frames` and :func:`scene_audio`, streamed to disk."""
    audio = scene_audio(seconds, CLIP_SAMPLE_RATE, seed)
    write_av(path, scene_frames(seconds, size, fps, seed), fps, audio, CLIP_SAMPLE_RATE)
    return path


# ----------------------------------------------------------------------------- timing


def _timed_rate(fn: Callable[[], object], units: float) -> float:
    """units / seconds per call: one warm-up call, then calls until MIN_TIMED_S have passed (median)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < MIN_TIMED_S:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return units / float(np.median(times))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def _autocast(device: torch.device, precision: str):
    dtype = autocast_dtype(precision, device)
    return (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (n, D) arrays."""
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


# ----------------------------------------------------------------------------- components


def _decode_rate(clip: Path, spec: FeatureSpec) -> tuple[dict, list[Segment]]:
    """Decoding and segment cutting alone: media seconds and segments per wall second."""
    t0 = time.perf_counter()
    source = SegmentSource(clip, spec)
    segments = list(source)
    wall = time.perf_counter() - t0
    media_s = source.media_end
    return {
        "media_seconds": round(media_s, 2),
        "media_seconds_per_second": round(media_s / wall, 1),
        "segments_per_second": round(len(segments) / wall, 1),
    }, segments


def _video_rows(encoder: VideoEncoder, frames: np.ndarray, precision: str) -> list[dict]:
    device = encoder.device
    batches = GPU_VIDEO_BATCHES if device.type == "cuda" else CPU_VIDEO_BATCHES
    pixels = encoder.preprocess(frames[:1]).to(device)
    with torch.inference_mode(), _autocast(device, precision):
        gflop = _gflop(lambda: encoder.model(pixel_values=pixels))
    rows = []
    for batch in batches:
        x = np.resize(frames, (batch, *frames.shape[1:]))

        def run(x=x, batch=batch):
            with _autocast(device, precision):
                encoder.encode(x, batch_size=batch)
            _sync(device)

        rate = _timed_rate(run, batch)
        rows.append(
            {
                "backbone": encoder.source,
                "device": device.type,
                "precision": precision,
                "batch": batch,
                "frames_per_second": round(rate, 1),
                "gflop_per_frame": round(gflop, 2),
                "gflop_per_second": round(rate * gflop, 1),
            }
        )
    return rows


def _audio_windows(segments: list[Segment], context_samples: int) -> list[np.ndarray]:
    """[context | segment] windows as the stream encodes them."""
    out, tail = [], np.zeros(0, np.float32)
    for seg in segments:
        window = np.concatenate([tail, seg.audio])
        out.append(window)
        tail = window[len(window) - context_samples :]
    return out


def _audio_rows(
    enc: AudioEncoder, segments: list[Segment], precision: str, seg_s: float
) -> list[dict]:
    device = enc.device
    windows = _audio_windows(segments, round(AUDIO_CONTEXT_SECONDS * enc.sample_rate))[1:9]
    chunk = np.concatenate([s.audio for s in segments])[
        : round(AUDIO_BATCH_SECONDS * enc.sample_rate)
    ]
    with _autocast(device, precision):
        gflop = _gflop(lambda: enc.encode_chunk(np.zeros(enc.sample_rate, np.float32)))

    def per_segment():
        with _autocast(device, precision):
            for w in windows:
                enc.encode_chunk(w)
        _sync(device)

    def chunked():
        with _autocast(device, precision):
            enc.encode_chunk(chunk)
        _sync(device)

    base = {
        "backbone": enc.source,
        "device": device.type,
        "precision": precision,
        # quantised linear layers escape torch's FLOP counter: int8 rows report no count
        "gflop_per_audio_second": None if precision == "int8" else round(gflop, 2),
    }
    return [
        base
        | {
            "mode": f"per segment (+{AUDIO_CONTEXT_SECONDS:g} s context)",
            "audio_seconds_per_second": round(_timed_rate(per_segment, len(windows) * seg_s), 2),
        },
        base
        | {
            "mode": f"{AUDIO_BATCH_SECONDS:g}-s chunks (extract)",
            "audio_seconds_per_second": round(
                _timed_rate(chunked, len(chunk) / enc.sample_rate), 2
            ),
        },
    ]


def _chunked_audio(extractor: Extractor, segments: list[Segment]) -> np.ndarray:
    """extract's audio features (T, Da) for the segments' audio track (10-s chunks, pooled)."""
    from ..extract import pool_audio_frames
    from ..media import chunk_samples

    enc, spec = extractor.audio, extractor.spec
    track = np.concatenate([s.audio for s in segments])
    size = chunk_samples(spec.audio_chunk_seconds, enc.sample_rate)
    T = len(segments)
    sums, counts = np.zeros((T, enc.dim)), np.zeros(T, np.int64)
    for offset in range(0, len(track), size):
        feats = enc.encode_chunk(track[offset : offset + size])
        pool_audio_frames(
            feats,
            enc.frame_times(len(feats), offset / enc.sample_rate),
            T,
            spec.segment_seconds,
            sums,
            counts,
        )
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _cosine_stats(a: np.ndarray, b: np.ndarray) -> dict:
    cos = _cosine(a, b)
    return {"mean": round(float(cos.mean()), 4), "min": round(float(cos.min()), 4)}


def _feature_agreement(
    enc: _Encoders, backbone: str, segments: list[Segment], precisions: tuple[str, ...]
) -> dict:
    """Cosine similarities: the stream's audio features vs extract's; each precision's features vs fp32."""
    cpu = torch.device("cpu")
    fp32 = enc.extractor(backbone, cpu)
    ref = SegmentEncoder(fp32).encode(segments)
    out = {"causal_vs_chunked_audio": _cosine_stats(ref["audio"], _chunked_audio(fp32, segments))}
    for precision in precisions:
        if precision == "fp32":
            continue
        ex = enc.extractor(backbone, cpu, int8=precision == "int8")
        feats = SegmentEncoder(ex, autocast_dtype=autocast_dtype(precision, cpu)).encode(segments)
        out[f"{precision}_vs_fp32_video"] = _cosine_stats(feats["video"], ref["video"])
        out[f"{precision}_vs_fp32_audio"] = _cosine_stats(feats["audio"], ref["audio"])
    return out


def _model_rows(model_name: str, input_dim: int, seq_len: int, device: torch.device) -> list[dict]:
    model = create_model(ModelConfig(name=model_name, input_dim=input_dim)).to(device).eval()
    rows = []
    for batch in MODEL_BATCHES:
        x = torch.randn(batch, seq_len, input_dim, device=device)
        mask = torch.ones(batch, seq_len, dtype=torch.bool, device=device)

        def run(x=x, mask=mask):
            with torch.inference_mode():
                model(x, mask)
            _sync(device)

        rows.append(
            {
                "model": model_name,
                "device": device.type,
                "batch": batch,
                "windows_per_second": round(_timed_rate(run, batch), 1),
            }
        )
    return rows


# ----------------------------------------------------------------------------- end to end


def bench_checkpoint(
    extractor: Extractor,
    model_name: str = "mtcn",
    seq_len: int = 10,
    seed: int = 0,
    audio_context_seconds: float = DEFAULT_AUDIO_CONTEXT_S,
) -> Checkpoint:
    """An untrained checkpoint for the extractor's features (identity normalisation): timing only.

    Its spec is causal with the given look-back, so a stream computes what it was "trained" on.
    """
    spec = extractor.spec.replace(audio_mode="causal", audio_context_seconds=audio_context_seconds)
    dim = spec.video_dim + spec.audio_dim
    cfg = ModelConfig(
        name=model_name, input_dim=dim, video_dim=spec.video_dim, audio_dim=spec.audio_dim
    )
    torch.manual_seed(seed)
    model = create_model(cfg).to(extractor.video.device).eval()
    norm = Normalizer(np.zeros(dim, np.float32), np.ones(dim, np.float32))
    return Checkpoint(
        model,
        cfg,
        TrainConfig(model=model_name, seq_len=seq_len),
        list(VAAR_CLASSES),
        spec,
        norm,
        None,
        {},
    )


# ----------------------------------------------------------------------------- the floor


FLOOR_SIZE = 1024  # square matmul that measures the compute floor
FLOOR_SECONDS = 1.0


def measure_floor(dtype: torch.dtype = torch.float32, seconds: float | None = None) -> float:
    """Matmul GFLOP/s this process reaches now (torch's threads): the compute floor of a row,
    timed for ``seconds`` (default FLOOR_SECONDS)."""
    seconds = FLOOR_SECONDS if seconds is None else seconds
    a = torch.randn(FLOOR_SIZE, FLOOR_SIZE).to(dtype)
    b = torch.randn(FLOOR_SIZE, FLOOR_SIZE).to(dtype)
    flop = 2 * FLOOR_SIZE**3
    with torch.inference_mode():
        torch.mm(a, b)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            count += 1
        wall = time.perf_counter() - start
    return count * flop / wall / 1e9


def segment_gflop(extractor: Extractor, ckpt: Checkpoint, audio_context_seconds: float) -> float:
    """GFLOP to score one segment (fp32 count): the video encoder on the segment's k frames, the
    audio encoder over the segment plus its look-back (through each encoder's own input path, so
    any kind counts: frame, clip, waveform, log-mel or spectrogram), one temporal-model window.
    Encoders that torch does not run (ONNX files) count 0."""
    spec, video, audio = extractor.spec, extractor.video, extractor.audio
    frames = np.zeros((spec.frames_per_segment, spec.image_size, spec.image_size, 3), np.uint8)
    samples = round((spec.segment_seconds + audio_context_seconds) * audio.sample_rate)
    window = torch.zeros(1, ckpt.train_config.seq_len, ckpt.model_config.input_dim)
    mask = torch.ones(1, ckpt.train_config.seq_len, dtype=torch.bool)
    with torch.inference_mode():
        total = _gflop(lambda: video.encode(frames))
        total += _gflop(lambda: audio.encode_chunk(np.zeros(samples, np.float32)))
        total += _gflop(lambda: ckpt.model(window.to(video.device), mask.to(video.device)))
    return total


def _end_to_end(
    clip: Path,
    ckpt: Checkpoint,
    extractor: Extractor,
    precision: str,
    runtime: str = "torch",
    model=None,
) -> dict:
    """RTF with batching, per-segment compute latency one segment at a time."""
    device = extractor.video.device
    dtype = autocast_dtype(precision, device) if runtime == "torch" else None
    batch = GPU_BATCH_SEGMENTS if device.type == "cuda" else BATCH_SEGMENTS
    context = ckpt.spec.audio_context_seconds
    common = {"autocast_dtype": dtype, "audio_context_seconds": context}
    batched = StreamOptions(batch_segments=batch, queue_segments=2 * batch, **common)
    batched_run = run_stream(clip, ckpt, extractor, lambda r: None, batched, model=model)
    single_options = StreamOptions(batch_segments=1, **common)
    single = run_stream(clip, ckpt, extractor, lambda r: None, single_options, model=model)
    lat = single.record()["compute_ms"]
    return {
        "realtime_factor": round(batched_run.realtime_factor, 2),
        "batch_segments": batch,
        "realtime_factor_batch1": round(single.realtime_factor, 2),
        "latency_p50_ms": lat["p50"],
        "latency_p95_ms": lat["p95"],
        "segments": batched_run.segments,
    }


def _labels(ckpt: Checkpoint, feats: dict[str, np.ndarray]) -> np.ndarray:
    """Per-segment labels as a stream gives them: each segment from the window ending at it."""
    x = model_input(ckpt, feats)
    return step_probabilities(ckpt.model, x, ckpt.train_config.seq_len, causal=True).argmax(1)


def _agreement(
    reference: dict[str, np.ndarray],
    extractor: Extractor,
    context: float,
    segments,
    dtype=None,
    ckpt: Checkpoint | None = None,
    reference_labels: np.ndarray | None = None,
) -> dict:
    feats = SegmentEncoder(extractor, context, dtype).encode(segments)
    out = {
        "cosine_video_min": round(float(_cosine(feats["video"], reference["video"]).min()), 4),
        "cosine_audio_min": round(float(_cosine(feats["audio"], reference["audio"]).min()), 4),
    }
    if ckpt is not None and reference_labels is not None:
        same = _labels(ckpt, feats) == reference_labels
        out["label_agreement"] = round(float(same.mean()), 4)
    return out


class _Encoders:
    """Random-weight encoders, built once each: MobileViT per (variant, device), Wav2Vec2 per (device, int8)."""

    def __init__(self, audio_backbone: str, seed: int, calibration_frames: np.ndarray) -> None:
        self.audio_backbone = audio_backbone
        self.seed = seed
        self.calibration_frames = calibration_frames
        self._video: dict[tuple[str, str], VideoEncoder] = {}
        self._audio: dict[tuple[str, bool], AudioEncoder] = {}

    def video(self, backbone: str, device: torch.device) -> VideoEncoder:
        key = (backbone, str(device))
        if key not in self._video:
            v = VideoEncoder.load(backbone, weights="random", seed=self.seed, device=str(device))
            v.calibrate(self.calibration_frames)
            self._video[key] = v
        return self._video[key]

    def audio(self, device: torch.device, int8: bool = False) -> AudioEncoder:
        key = (str(device), int8)
        if key not in self._audio:
            a = AudioEncoder.load(
                self.audio_backbone, weights="random", seed=self.seed, device=str(device)
            )
            if int8:
                quantize_audio_encoder(a)
            self._audio[key] = a
        return self._audio[key]

    def extractor(self, backbone: str, device: torch.device, int8: bool = False) -> Extractor:
        v, a = self.video(backbone, device), self.audio(device, int8)
        spec = build_spec(v, a, "random", self.seed, 1.0, 1).replace(random_init=v.describe())
        return Extractor(spec, v, a)


def _configs(
    options: BenchOptions, device: torch.device
) -> list[tuple[str, torch.device, str, str, float]]:
    """(video backbone, device, runtime, precision, audio look-back) of each end-to-end row."""
    cpu = torch.device("cpu")
    out = []
    if options.cpu:
        for b in options.video_backbones:
            for runtime in options.runtimes:
                for p in options.precisions:
                    if runtime == "onnx" and p not in ONNX_PRECISIONS:
                        continue  # ONNX Runtime's CPU kernels: fp32 and int8
                    out += [(b, cpu, runtime, p, c) for c in options.audio_contexts]
    if device.type == "cuda":
        out += [
            (b, device, "torch", p, c)
            for b in options.video_backbones
            for p in ("fp32", "fp16")
            for c in options.audio_contexts
        ]
    return out


@dataclass
class _Results:
    machine: dict
    clip: dict
    decode: dict = field(default_factory=dict)
    video: list = field(default_factory=list)
    audio: list = field(default_factory=list)
    temporal: list = field(default_factory=list)
    features: dict = field(default_factory=dict)
    end_to_end: list = field(default_factory=list)
    floor: dict = field(default_factory=dict)
    paper: dict = field(default_factory=lambda: PAPER)


def _machine(options: BenchOptions, device: torch.device) -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _clip(options: BenchOptions, workdir: Path) -> Path:
    if options.video is not None:
        return Path(options.video)
    path = (
        workdir
        / f"bench_{options.width}x{options.height}_{options.fps:g}fps_{options.seconds:g}s.mp4"
    )
    if not path.exists():
        write_scene_clip(
            path, options.seconds, (options.width, options.height), options.fps, options.seed
        )
    return path


def _component_rows(
    res: _Results, enc: _Encoders, options: BenchOptions, devices, segments, frames
) -> None:
    for dev in devices:
        precisions = ("fp32", "fp16") if dev.type == "cuda" else options.precisions
        for backbone in options.video_backbones:
            for precision in precisions:
                video_precision = "fp32" if precision == "int8" else precision
                if precision != "int8":
                    res.video += _video_rows(enc.video(backbone, dev), frames, video_precision)
        for precision in precisions:
            audio = enc.audio(dev, int8=precision == "int8")
            res.audio += _audio_rows(audio, segments, precision, 1.0)
        ex = enc.extractor(options.video_backbones[0], dev)
        res.temporal += _model_rows(
            options.model, ex.spec.video_dim + ex.spec.audio_dim, options.seq_len, dev
        )


def run_bench(
    options: BenchOptions, workdir: str | Path, progress: Callable[[str], None] | None = None
) -> dict:
    """Measure every stage (see the module docstring); returns a JSON-ready dict."""
    say = progress or (lambda msg: None)
    configure_cpu(options.threads)
    device = resolve_device(options.device)
    cpu = torch.device("cpu")
    if not options.cpu and device.type != "cuda":
        raise ValueError("GPU rows only (cpu=False) needs a CUDA device")
    for precision in options.precisions:
        autocast_dtype(precision, cpu)  # validates
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    clip = _clip(options, workdir)
    res = _Results(
        _machine(options, device),
        {
            "path": str(clip),
            "width": options.width,
            "height": options.height,
            "fps": options.fps,
            "seconds": options.seconds,
        },
    )
    say("decode")
    res.decode, segments = _decode_rate(clip, FeatureSpec())
    frames = np.concatenate([s.frames for s in segments[:16]])
    calib = np.concatenate(
        [s.frames for s in segments[:: max(1, len(segments) // CALIBRATION_FRAMES)]]
    )
    enc = _Encoders(options.audio_backbone, options.seed, calib)
    devices = ([cpu] if options.cpu else []) + ([device] if device.type == "cuda" else [])
    say("components")
    _component_rows(res, enc, options, devices, segments, frames)
    say("feature agreement")
    precisions = options.precisions if options.cpu else ("fp32",)
    res.features = _feature_agreement(enc, options.video_backbones[0], segments, precisions)
    res.floor = {"fp32_gflops": round(measure_floor(torch.float32), 1)}
    if cpu_has_bf16():
        res.floor["bf16_gflops"] = round(measure_floor(torch.bfloat16), 1)
    say(f"compute floor: {res.floor}")
    sample = segments[: min(len(segments), AGREEMENT_SEGMENTS)]
    references: dict[tuple[str, float], dict] = {}
    exports: dict[str, Path] = {}
    # ONNX sessions hold no state: one bundle per (backbone, precision) serves every look-back
    bundles: dict[tuple[str, str], OnnxBundle] = {}
    gflops: dict[tuple[str, str, float], float] = {}
    for backbone, dev, runtime, precision, context in _configs(options, device):
        name = (
            f"{Path(backbone).name} + {Path(options.audio_backbone).name}, {runtime} {precision},"
            f" look-back {context:g} s ({dev.type})"
        )
        say(f"end to end: {name}")
        ex = enc.extractor(backbone, dev, int8=precision == "int8" and runtime == "torch")
        ckpt = bench_checkpoint(ex, options.model, options.seq_len, options.seed, context)
        fp32 = enc.extractor(backbone, dev)
        if (backbone, context) not in references:
            references[(backbone, context)] = SegmentEncoder(fp32, context).encode(sample)
        key = (backbone, dev.type, context)
        if key not in gflops:  # the count depends on neither precision nor runtime
            fp32_ckpt = bench_checkpoint(fp32, options.model, options.seq_len)
            gflops[key] = segment_gflop(fp32, fp32_ckpt, context)
        gflop = gflops[key]
        model = None
        if runtime == "onnx":
            from ..export import export_checkpoint, load_onnx

            if backbone not in exports:
                exports[backbone] = workdir / f"onnx-{Path(backbone).name}"
                export_checkpoint(ckpt, exports[backbone], extractor=fp32)
            if (backbone, precision) not in bundles:
                bundles[(backbone, precision)] = load_onnx(
                    exports[backbone], precision, options.threads
                )
            bundle = bundles[(backbone, precision)]
            ex, model = bundle.extractor, bundle.model
            ckpt = dataclasses.replace(bundle.checkpoint, spec=ckpt.spec)
        dtype = autocast_dtype(precision, dev) if runtime == "torch" else None
        # the floor is measured again right before each row: on a shared machine the load moves
        floor_dtype = torch.bfloat16 if precision == "bf16" and cpu_has_bf16() else torch.float32
        floor = round(measure_floor(floor_dtype), 1)
        row = {
            "config": name,
            "video_backbone": backbone,
            "device": dev.type,
            "runtime": runtime,
            "precision": precision,
            "audio_context_s": context,
            "gflop_per_segment": round(gflop, 6),
            "floor_gflops": floor,
            "floor_dtype": str(floor_dtype).removeprefix("torch."),
            # no count (encoders torch does not run): no floor to compare with
            "floor_realtime_factor": (
                round(floor / gflop * ex.spec.segment_seconds, 2) if gflop > 0 else None
            ),
        }
        row |= _end_to_end(clip, ckpt, ex, precision, runtime, model)
        row["percent_of_floor"] = (
            round(100 * row["realtime_factor"] / row["floor_realtime_factor"], 1)
            if row["floor_realtime_factor"]
            else None
        )
        reference = references[(backbone, context)]
        torch_fp32 = bench_checkpoint(fp32, options.model, options.seq_len, options.seed, context)
        row |= _agreement(
            reference, ex, context, sample, dtype, ckpt, _labels(torch_fp32, reference)
        )
        res.end_to_end.append(row)
    res.machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    res.machine["options"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()
    }
    return asdict(res)


# ----------------------------------------------------------------------------- table


def _table(headers: list[str], rows: list[list]) -> str:
    return "\n".join(pipe_table(headers, rows))


def format_tables(result: dict) -> str:
    """Markdown tables of a :func:`run_bench` result."""
    m, c, d = result["machine"], result["clip"], result["decode"]
    parts = [
        f"Machine: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; load average {m['load_average_before'][0]:.1f} before, {m.get('load_average_after', [0])[0]:.1f} after",
        f"Clip: {c['width']}x{c['height']} @ {c['fps']:g} fps, {d['media_seconds']:.0f} s; "
        f"decode + segmenting: {d['media_seconds_per_second']}x real time ({d['segments_per_second']} segments/s)",
        "",
        _table(
            ["MobileViT", "device", "precision", "batch", "frames/s", "GFLOP/frame", "GFLOP/s"],
            [
                [
                    r["backbone"],
                    r["device"],
                    r["precision"],
                    r["batch"],
                    r["frames_per_second"],
                    r["gflop_per_frame"],
                    r["gflop_per_second"],
                ]
                for r in result["video"]
            ],
        ),
        "",
        _table(
            ["Wav2Vec2", "device", "precision", "mode", "audio s/s", "GFLOP/audio s"],
            [
                [
                    r["backbone"],
                    r["device"],
                    r["precision"],
                    r["mode"],
                    r["audio_seconds_per_second"],
                    r["gflop_per_audio_second"],
                ]
                for r in result["audio"]
            ],
        ),
        "",
        _table(
            ["temporal model", "device", "batch", "windows/s"],
            [
                [r["model"], r["device"], r["batch"], r["windows_per_second"]]
                for r in result["temporal"]
            ],
        ),
        "",
        _table(
            [
                "end to end",
                "GFLOP/segment",
                "floor GFLOP/s",
                "floor RTF",
                "RTF (batched)",
                "RTF (1 segment at a time)",
                "latency p50 ms",
                "latency p95 ms",
                "RTF % of floor",
                "cos video / audio vs torch fp32 (min)",
                "labels = torch fp32",
            ],
            [
                [
                    r["config"],
                    round(r["gflop_per_segment"], 2),
                    r["floor_gflops"],
                    "n/a" if r["floor_realtime_factor"] is None else r["floor_realtime_factor"],
                    r["realtime_factor"],
                    r["realtime_factor_batch1"],
                    r["latency_p50_ms"],
                    r["latency_p95_ms"],
                    "n/a" if r["percent_of_floor"] is None else r["percent_of_floor"],
                    f"{r['cosine_video_min']:.4f} / {r['cosine_audio_min']:.4f}",
                    "n/a" if r.get("label_agreement") is None else f"{r['label_agreement']:.4f}",
                ]
                for r in result["end_to_end"]
            ],
        ),
        "",
        "Compute floor: "
        + ", ".join(f"{k.split('_')[0]} matmul {v} GFLOP/s" for k, v in result["floor"].items())
        + f" ({FLOOR_SIZE}x{FLOOR_SIZE}, at the start); each row's floor is measured again right"
        " before it (bf16 rows: bf16 matmul; others fp32), floor RTF = floor GFLOP/s / GFLOP per"
        " segment x segment seconds.",
    ]
    parts.append("")
    for key, cos in result["features"].items():
        parts.append(
            f"Feature agreement ({key.replace('_', ' ')}): cosine mean {cos['mean']}, min {cos['min']}"
        )
    p = result["paper"]
    parts.append(
        f"Paper ({p['gpu']}): VAAR {p['VAAR']['fps']} FPS, latency {p['VAAR']['latency_ms']} ms; "
        f"XD-Violence {p['XD-Violence']['fps']} FPS, latency {p['XD-Violence']['latency_ms']} ms"
    )
    return "\n".join(parts)


__all__ = [
    "BenchOptions",
    "MOBILEVIT_VARIANTS",
    "bench_checkpoint",
    "format_tables",
    "run_bench",
    "scene_audio",
    "scene_frames",
    "write_scene_clip",
]
