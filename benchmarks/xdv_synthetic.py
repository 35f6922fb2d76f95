"""Weakly supervised detection on synthetic untrimmed videos, end to end, with known frame-level truth.

Renders long background footage (scene, ambience) in which violent events of the synthetic classes
happen at random times; normal videos hold only background and harmless "crowd" events (which also
appear in violent videos, as distractors). Videos are named and annotated the XD-Violence way
(``<name>_label_B1-0-0``, ``annotations.txt`` with frame spans), then go through the same path as
raw XD-Violence videos:

    avarnet extract DATA --out RAW --weights random --segment-seconds 0.64   (16 frames at 25 fps)
    avarnet xdv import --extracted RAW --annotations DATA/annotations.txt --out XD
    avarnet xdv train XD --out RUN [objective options]
    avarnet xdv evaluate RUN/best.ckpt XD --out REPORT

and prints frame-level AP (both definitions) and ROC-AUC against a constant score, for the MIL
objective alone and with its optional terms.

    python benchmarks/xdv_synthetic.py --out runs/xdv_synth
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avarnet.apps.xdv import import_extracted
from avarnet.config import SAMPLE_RATE
from avarnet.extract import extract_dataset
from avarnet.synth import render_untrimmed, write_av
from avarnet.weak import WeakConfig, evaluate_weak, train_weak

FPS = 25.0
SEGMENT_SECONDS = 0.64  # 16 frames at 25 fps, the official snippet length in frames
SIZE = (160, 120)  # (width, height); the encoders resize anyway
# Synthetic class -> XD-Violence code it stands in for (the names carry the code).
VIOLENT = {"brawling": "B1", "vandalism": "B4", "abuse": "B5", "crash": "B6", "explosion": "G"}
DISTRACTOR = "normal"  # the crowd + murmur event: activity that is not violent
EVENT_SECONDS = (3.0, 8.0)

OFF = {"objective": "mil", "smooth_weight": 0.0, "sparsity_weight": 0.0, "reversal_weight": 0.0}
OBJECTIVES = {  # WeakConfig's defaults are the last row; the one before it the former defaults
    "MIL (top-k BCE) only": OFF,
    "+ smoothness 0.1, sparsity 0.1": OFF | {"smooth_weight": 0.1, "sparsity_weight": 0.1},
    "+ smoothness, sparsity, reversal 1.0": OFF
    | {"smooth_weight": 0.1, "sparsity_weight": 0.1, "reversal_weight": 1.0},
    "refine (per-snippet MIL scorer -> pseudo-labels)": {"objective": "refine"},
}


def place_events(
    rng: np.random.Generator, duration: float, labels: list[str]
) -> list[tuple[str, float, float]]:
    """Non-overlapping events (label, start s, end s) at random times."""
    events: list[tuple[str, float, float]] = []
    for label in labels:
        for _ in range(100):
            length = rng.uniform(*EVENT_SECONDS)
            start = rng.uniform(0.0, duration - length)
            if all(start >= e + 1.0 or start + length + 1.0 <= s for _, s, e in events):
                events.append((label, start, start + length))
                break
    return sorted(events, key=lambda e: e[1])


def video_plan(rng: np.random.Generator, violent: bool, duration: float) -> tuple[str, list]:
    """XD-style code string and events of one video."""
    distractors = [DISTRACTOR] * int(rng.integers(0, 3))
    if not violent:
        return "A", place_events(rng, duration, distractors)
    classes = list(rng.choice(list(VIOLENT), size=int(rng.integers(1, 3)), replace=False))
    events = place_events(rng, duration, classes + distractors[:1])
    codes = [VIOLENT[c] for c in dict.fromkeys(label for label, _, _ in events if label in VIOLENT)]
    return "-".join(codes + ["0"] * (3 - len(codes))), events


def write_dataset(
    root: Path, n_train: int, n_test: int, seconds: tuple[float, float], seed: int
) -> Path:
    """DATA/{train,test}/<name>.mp4, DATA/splits.csv and DATA/annotations.txt (violent frames, end exclusive)."""
    rng = np.random.default_rng(seed)
    jobs = [("train", i) for i in range(n_train)] + [("test", i) for i in range(n_test)]
    ann_lines, split_rows = [], []
    for split, i in tqdm(jobs, desc="render", unit="video"):
        duration = float(rng.uniform(*seconds))
        codes, events = video_plan(rng, violent=i % 2 == 1, duration=duration)
        name = f"Synth.{split}.{i:03d}__#{seed}_label_{codes}"
        path = root / split / f"{name}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames, audio = render_untrimmed(np.random.default_rng([seed, i, split == "test"]), duration, FPS, SIZE,
                                         SAMPLE_RATE, events)  # fmt: skip
        write_av(path, frames, FPS, audio, SAMPLE_RATE)
        spans = [(round(s * FPS), round(e * FPS)) for label, s, e in events if label in VIOLENT]
        if spans:
            ann_lines.append(" ".join([name] + [f"{s} {e}" for s, e in spans]))
        split_rows.append((f"{split}/{name}.mp4", "test" if split == "test" else "train"))
    (root / "annotations.txt").write_text("\n".join(ann_lines) + "\n")
    with open(root / "splits.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "split"), *split_rows])
    return root / "annotations.txt"


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    data, raw, xd = out / "data", out / "raw_features", out / "xd_features"
    t0 = time.time()
    if not (data / "annotations.txt").exists():
        write_dataset(data, args.train, args.test, (args.min_seconds, args.max_seconds), args.seed)
    t_render = time.time() - t0
    r = extract_dataset(
        data,
        raw,
        weights="random",
        segment_seconds=SEGMENT_SECONDS,
        device=args.device,
        seed=args.seed,
    )
    t_extract = time.time() - t0 - t_render
    import_extracted(
        raw, xd, annotations=data / "annotations.txt", val_fraction=0.2, seed=args.seed
    )
    rows = {}
    for title, terms in OBJECTIVES.items():
        for seed in range(args.seeds):
            cfg = WeakConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed, device=args.device,
                             **terms)  # fmt: skip
            tag = f"{'-'.join(f'{k}{v}' for k, v in terms.items() if v)}-seed{seed}"
            res = train_weak(xd, out / "runs" / tag, cfg)
            m = evaluate_weak(res.checkpoint, xd, out=out / "reports" / tag, plots=6)
            rows.setdefault(title, []).append(
                {k: m[k] for k in ("frame_ap", "frame_pr_auc", "frame_roc_auc", "video_roc_auc")}
                | {"seed": seed}
            )
            base = m["constant_baseline"]
    summary = {
        "videos": {
            "train+val": args.train,
            "test": args.test,
            "seconds": [args.min_seconds, args.max_seconds],
        },
        "extracted": r.done + r.skipped,
        "test_frames": m["frames"],
        "frame_positive_rate": m["frame_positive_rate"],
        "constant_baseline": {k: base[k] for k in ("frame_ap", "frame_pr_auc", "frame_roc_auc")},
        "objectives": rows,
        "seconds": {
            "render": round(t_render),
            "extract": round(t_extract),
            "total": round(time.time() - t0),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_table(s: dict) -> None:
    b = s["constant_baseline"]
    print(
        f"\n{s['videos']['test']} test videos, {s['test_frames']} frames, {s['frame_positive_rate']:.3f} violent"
    )
    print(
        f"{'objective':36s} {'frame AP (sklearn)':>20s} {'PR-AUC (trapezoid)':>20s} {'frame ROC-AUC':>15s}"
    )
    print(
        f"{'constant score':36s} {b['frame_ap']:20.3f} {b['frame_pr_auc']:20.3f} {b['frame_roc_auc']:15.3f}"
    )
    for title, rows in s["objectives"].items():
        cells = []
        for k in ("frame_ap", "frame_pr_auc", "frame_roc_auc"):
            v = np.array([r[k] for r in rows])
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}")
        print(f"{title:36s} {cells[0]:>20s} {cells[1]:>20s} {cells[2]:>15s}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/xdv_synth")
    p.add_argument(
        "--train", type=int, default=60, help="training videos (a fifth is held out for validation)"
    )
    p.add_argument("--test", type=int, default=30)
    p.add_argument("--min-seconds", type=float, default=30.0)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3, help="training seeds per objective")
    p.add_argument("--seed", type=int, default=0, help="data and random-weight seed")
    p.add_argument("--device", default="cpu")
    print_table(run(p.parse_args()))


if __name__ == "__main__":
    main()
