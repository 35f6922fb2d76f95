"""Weak training at XD-Violence's size: seconds per epoch, peak memory, ratio to the compute floor.

Writes a synthetic feature store in the layout ``avarnet xdv import`` produces from the official
features (per video: the centre crop ``video`` (T, 1024), ``video_crops`` (5, T, 1024), VGGish
``audio`` (T, 128), one safetensors file each), at the size of XD-Violence's training set: 3,954
videos, each crop a training sample (19,770 samples; a seeded 10 % of the videos validates, as
``xdv import`` holds out by default, so about 17,850 train), up to 200 snippets. Lengths follow a
log-normal with a median of 246 snippets (XD-Violence's 217 h over 4,754 videos at 2/3 s a
snippet), cut to 200 (the training subsampling length), so about 60 % of the samples are 200 long.
The store is written one video at a time and read back memory-mapped by the training loop, so the
~16 GB of features never sit in this process's memory; it is kept (``--out``) and reused by later
runs.

It then runs the default weak training (``WeakConfig()``: ``refine``, MTCN, all five crops,
batch 32, on CPU in as many processes as ``avarnet xdv train`` chooses, ``--processes`` to set
them; CPU seconds are those of every process) for one epoch of each stage and prints, per stage, seconds per epoch and the compute
floor: the forward + backward FLOPs of the epoch's real snippets (counted with
``torch.utils.flop_counter`` on the model itself), divided by the fp32 matmul rate measured in the
same process with the same threads, before and after the training. On a shared machine the ratio,
not the seconds, is what carries over; the load average is printed too. The FLOPs are those of the
model as ``nn.Conv1d`` computes it (every tap, padding included), whichever path trains, so the
floor is the same for both.

MTCN trains on CPU with its convolutions as matmuls (``avarnet.models.mtcn.conv_steps``);
``--reference-convs`` trains with ``nn.Conv1d`` instead (the path inference runs), and
``--ab-steps N`` then times N training steps of each path on the trained model, interleaved (each
batch once per path, the order alternating), on random batches shaped like the epoch's (lengths
drawn from the store, batched as ``LengthBatches`` does): the same-run comparison of the two.

    python benchmarks/bench_weak_scale.py --out /tmp/xdv_scale            # full size
    python benchmarks/bench_weak_scale.py --out /tmp/xdv_scale_s --videos 200 --ab-steps 20  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from avarnet.apps.xdv import (
    FRAMES_PER_SNIPPET,
    NUM_CROPS,
    OFFICIAL_AUDIO_BACKBONE,
    OFFICIAL_VIDEO_BACKBONE,
    SNIPPET_SECONDS,
    XD_FPS,
    XDV_CLASSES,
)
from avarnet.config import FeatureSpec
from avarnet.models.mtcn import reference_convs
from avarnet.store import Entry, FeatureStore, video_id

DV, DA = 1024, 128
TRAIN_VIDEOS = 3954  # XD-Violence's training list
MEDIAN_SNIPPETS = 246  # 217 h / 4,754 videos / (2/3 s)
MAX_SNIPPETS = 200


def spec() -> FeatureSpec:
    return FeatureSpec(
        video_backbone=OFFICIAL_VIDEO_BACKBONE, audio_backbone=OFFICIAL_AUDIO_BACKBONE,
        weights="pretrained", segment_seconds=SNIPPET_SECONDS,
        frames_per_segment=FRAMES_PER_SNIPPET, video_dim=DV, audio_dim=DA, image_size=224,
        resize_shortest_edge=256, flip_channel_order=False,
    )  # fmt: skip


def lengths(n: int, seed: int, max_len: int = MAX_SNIPPETS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = np.exp(rng.normal(np.log(MEDIAN_SNIPPETS), 0.8, n))
    return np.clip(raw.astype(np.int64), 8, max_len)


def generate(root: Path, videos: int, seed: int = 0, val_fraction: float = 0.1) -> FeatureStore:
    """The store (resumable: videos already written are skipped). Non-negative pooled-CNN-like
    features: a shared pool of snippet vectors, a per-video scene offset, an event direction in
    violent videos (so both labels exist and training has something to learn)."""
    info = {"dataset": "xd-violence", "source": "official-features", "classes": list(XDV_CLASSES),
            "frame_level": False, "frames_per_snippet": FRAMES_PER_SNIPPET, "fps": XD_FPS,
            "val_fraction": val_fraction, "split_seed": seed}  # fmt: skip
    store = FeatureStore.create(root, spec(), info)
    rng = np.random.default_rng(seed)
    pool_v = np.abs(rng.normal(0, 0.6, (4096, DV))).astype(np.float32)
    pool_a = np.abs(rng.normal(0, 0.6, (4096, DA))).astype(np.float32)
    event_v = np.abs(rng.normal(0, 0.5, DV)).astype(np.float32)
    T_all = lengths(videos, seed)
    t0 = time.time()
    for i, T in enumerate(T_all.tolist()):
        violent = i % 2 == 1
        name = f"Bench.{i:05d}__#1_label_{'B1-0-0' if violent else 'A'}"
        vid = video_id(f"train/{name}")
        if store.is_done(vid):
            continue
        r = np.random.default_rng([seed, i])
        scene = np.abs(r.normal(0, 0.3, DV)).astype(np.float32)
        crops = np.empty((NUM_CROPS, T, DV), np.float32)
        for k in range(NUM_CROPS):
            crops[k] = pool_v[r.integers(0, len(pool_v), T)] + scene
        audio = pool_a[r.integers(0, len(pool_a), T)]
        if violent:
            s = int(r.integers(0, max(1, T - T // 4)))
            crops[:, s : s + max(2, T // 4)] += event_v
        split = "val" if r.random() < val_fraction else "train"
        extra = {"codes": ["B1"] if violent else ["A"], "binary": int(violent), "name": name,
                 "crops": NUM_CROPS, "trimmed": False}  # fmt: skip
        e = Entry(vid, str(store.feature_path(vid).relative_to(store.root)),
                  "fighting" if violent else "normal", split, f"{name}__0.npy",
                  T * SNIPPET_SECONDS, float(XD_FPS), True, T, extra)  # fmt: skip
        store.write(e, {"video": crops[0], "video_crops": crops, "audio": audio,
                        "audio_mask": np.ones(T, bool)})  # fmt: skip
        if (i + 1) % 200 == 0:
            rate = (i + 1) / (time.time() - t0)
            print(f"  written {i + 1}/{videos} videos ({rate:.1f}/s)", file=sys.stderr, flush=True)
    return FeatureStore.open(root)


def matmul_gflops(seconds: float = 6.0, n: int = 1024) -> tuple[float, float]:
    """fp32 matmul rate with torch's current threads, the compute floor's yardstick: (GFLOP per
    wall second, GFLOP per CPU second of this process). On a machine shared with other work the
    CPU-second rate is the one that stays put."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        a @ b
        done += 1
    flop = 2 * n**3 * done / 1e9
    return flop / (time.perf_counter() - t0), flop / (time.process_time() - c0)


def train_flops(model: torch.nn.Module, dim: int, T: int, scored=None) -> float:
    """Forward + backward FLOPs of one training sample of T snippets (batch of one), with the
    convolutions counted as ``nn.Conv1d`` computes them."""
    from torch.utils.flop_counter import FlopCounterMode

    from avarnet.weak import WeakConfig, weak_objective

    model.train()
    x, mask = torch.randn(1, T, dim), torch.ones(1, T, dtype=torch.bool)
    y, target = torch.ones(1), torch.rand(1, T)
    with reference_convs(), FlopCounterMode(display=False) as fc:
        weak_objective(model, x, mask, y, WeakConfig(), target if scored else None).backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def epoch_floor_flops(model: torch.nn.Module, dim: int, sample_lengths, scored) -> float:
    """Sum over the epoch's samples of train_flops at their own length (interpolated: the cost is
    linear in T but for the attention's T^2 term, so three lengths fix it)."""
    pts = [32, 100, MAX_SNIPPETS]
    f = [train_flops(model, dim, t, scored) for t in pts]
    coef = np.polyfit(pts, f, 2)
    L = np.asarray(sample_lengths, dtype=np.float64)
    return float(np.polyval(coef, L).sum())


def ab_steps(model: torch.nn.Module, dim: int, sample_lengths, steps: int, seed: int) -> dict:
    """CPU and wall seconds of ``steps`` training steps (Adam, the default weak objective with
    pseudo-labels) with MTCN's matmul convolutions and with ``nn.Conv1d``, interleaved: each batch
    runs once per path, which goes first alternating. Batches of 32 random features with lengths
    drawn from ``sample_lengths`` and batched as ``LengthBatches`` batches an epoch."""
    from avarnet.weak import LengthBatches, WeakConfig, cheap_dropout, weak_objective

    cfg = WeakConfig()
    g = torch.Generator().manual_seed(seed)
    lengths = np.asarray(sample_lengths)
    batches = list(LengthBatches(lengths, cfg.batch_size, g))[:steps]
    model = cheap_dropout(model).train()
    opt = torch.optim.Adam(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    spent = {"matmul": [0.0, 0.0], "reference": [0.0, 0.0]}
    for i, idx in enumerate(batches):
        T = lengths[idx]
        mask = torch.arange(int(T.max()))[None, :] < torch.as_tensor(T)[:, None]  # (B, L)
        x = torch.randn(*mask.shape, dim, generator=g) * mask[..., None]
        y = (torch.rand(len(idx), generator=g) < 0.5).float()
        target = torch.rand(mask.shape, generator=g) * mask
        for path in ("matmul", "reference") if i % 2 == 0 else ("reference", "matmul"):
            with reference_convs() if path == "reference" else nullcontext():
                c0, t0 = time.process_time(), time.perf_counter()
                opt.zero_grad(set_to_none=True)
                weak_objective(model, x, mask, y, cfg, target).backward()
                opt.step()
                spent[path][0] += time.process_time() - c0
                spent[path][1] += time.perf_counter() - t0
    (mc, mw), (rc, rw) = spent["matmul"], spent["reference"]
    return {"steps": len(batches), "cpu_s_matmul": mc, "cpu_s_reference": rc,
            "wall_s_matmul": mw, "wall_s_reference": rw,
            "cpu_ratio_matmul_to_reference": mc / rc, "wall_ratio_matmul_to_reference": mw / rw}  # fmt: skip


def peak_rss_gb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024**2


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="store folder (kept, reused)")
    p.add_argument("--videos", type=int, default=TRAIN_VIDEOS)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--reference-convs", action="store_true",
                   help="train MTCN with nn.Conv1d, not its matmul convolutions")  # fmt: skip
    p.add_argument("--processes", type=int, default=0,
                   help="training processes (default 0: as `avarnet xdv train` chooses)")  # fmt: skip
    p.add_argument("--autocast", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--ab-steps", type=int, default=0,
                   help="then time this many steps of each convolution path, interleaved")  # fmt: skip
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from avarnet.weak import WeakConfig, train_weak

    t0 = time.time()
    store = generate(a.out / "store", a.videos, a.seed)
    gen_s = time.time() - t0
    train_entries = store.split("train")
    before = matmul_gflops()
    cfg = WeakConfig(epochs=1, local_epochs=1, device="cpu", seed=a.seed, num_threads=a.threads,
                     processes=a.processes, autocast=a.autocast)  # fmt: skip
    t0 = time.time()
    with reference_convs() if a.reference_convs else nullcontext():
        r = train_weak(store, a.out / "run", cfg, progress=False)
    total_s = time.time() - t0
    after = matmul_gflops()
    wall_rate, cpu_rate = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2

    from avarnet.checkpoint import load_checkpoint
    from avarnet.weak import SnippetScorer, training_processes

    ck = load_checkpoint(r.checkpoint)
    first = json.loads((a.out / "run" / "snippet_scorer_history.json").read_text())[0]
    samples = [min(e.T, cfg.max_seq_len) for e in train_entries for _ in range(NUM_CROPS)]
    processes, per_process = training_processes(cfg, torch.device("cpu"), len(samples))
    dim = ck.model_config.input_dim
    flops = {
        "scorer": epoch_floor_flops(SnippetScorer(dim, cfg.local_hidden), dim, samples, None),
        "model": epoch_floor_flops(ck.model, dim, samples, scored=True),
    }
    hist = {"scorer": first, "model": r.history[0]}
    stages = {}
    for k, h in hist.items():
        floor_cpu = flops[k] / 1e9 / cpu_rate  # CPU seconds the epoch's FLOPs take as matmul
        stages[k] = {
            "epoch_s": h["seconds"],
            "epoch_cpu_s": h["cpu_seconds"],
            "floor_s": flops[k] / 1e9 / wall_rate,
            "floor_cpu_s": floor_cpu,
            "ratio_cpu": h["cpu_seconds"] / floor_cpu,
            "ratio_wall": h["seconds"] / (flops[k] / 1e9 / wall_rate),
            "idle_epoch_s_estimate": h["cpu_seconds"] / a.threads,
            "gflop_per_sample": flops[k] / len(samples) / 1e9,
        }
    ab = ab_steps(ck.model, dim, samples, a.ab_steps, a.seed) if a.ab_steps > 0 else None
    out = {
        "videos": a.videos,
        "mtcn_convs": "nn.Conv1d" if a.reference_convs else "matmul",
        "train_samples": len(samples),
        "snippets": int(sum(samples)),
        "generate_s": gen_s,
        "threads": a.threads,
        "processes": processes,
        "threads_per_process": per_process,
        "autocast": a.autocast,
        # OpenMP's wait policy as `avarnet xdv train` runs (unset: libgomp spins briefly between
        # parallel regions); set it in the environment to compare (PASSIVE: idle threads sleep)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "matmul_gflops_wall": [before[0], after[0]],
        "matmul_gflops_per_cpu_s": [before[1], after[1]],
        "stages": stages,
        "ab_steps": ab,
        "train_weak_s": total_s,
        # this process, and the largest training process: with N of them at most this + N x that
        "peak_rss_gb": peak_rss_gb(),
        "peak_rss_gb_largest_child": peak_rss_gb(resource.RUSAGE_CHILDREN),
        "peak_rss_gb_bound": peak_rss_gb()
        + (processes if processes > 1 else 0) * peak_rss_gb(resource.RUSAGE_CHILDREN),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
