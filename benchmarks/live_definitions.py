"""The live feature definition chosen by accuracy and speed together.

Definitions: chunked audio (``extract``'s 10-s chunks, offline only) and causal audio with a
look-back of 0, 0.5, 1 and 2 s (what ``stream`` computes). For each of several differently
generated synthetic held-out sets (``avarnet synth`` with its own seed, frame size, frame rate,
clip lengths and audio sample rate), one feature store per definition is made with the same
encoders (video vectors shared, audio per definition), a temporal model is trained per store and
seed, and its test split is scored two ways:

* ``offline``: as ``avarnet evaluate`` scores it (every window holding a segment);
* ``live``: on the features a stream computes (a chunked model is fed causal features with the
  default look-back) with the window ending at each segment, i.e. what ``stream`` and ``predict
  --causal`` give; with ``--live-windows`` also by a second model trained on those windows
  (``train --windows live``).

Speed: the real-time factor of each definition, one segment at a time as a stream runs
(MobileViT on the segment's frame + Wav2Vec2 on [look-back | segment]; chunked: per 10-s chunk),
media seconds per wall second, on the first clips of the first set; with the load average.

The default it supports: the fastest definition whose mean offline accuracy over sets and seeds
is within ``--within`` (1 point) of the best one; printed with the table, written to
``OUT/live_definitions.json``.

    python benchmarks/live_definitions.py --out /tmp/live_defs [--clips-per-class 24] \\
        [--seeds 0 1 2] [--video-backbone ID|DIR] [--audio-backbone ID|DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avarnet.checkpoint import load_checkpoint
from avarnet.config import (
    DEFAULT_AUDIO_BACKBONE,
    DEFAULT_AUDIO_CONTEXT_S,
    DEFAULT_VIDEO_BACKBONE,
    TrainConfig,
)
from avarnet.data import discover_dataset
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import build_spec, calibration_frames, entry_for
from avarnet.features import Extractor, SegmentEncoder
from avarnet.media import SegmentSource, probe
from avarnet.metrics import classification_metrics
from avarnet.predict import clip_probabilities, model_input, step_probabilities
from avarnet.runtime import configure_cpu
from avarnet.store import FeatureStore, video_id
from avarnet.synth import synthesize_dataset
from avarnet.train import train

LOOK_BACKS = (0.0, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class HeldOutSet:
    """How one synthetic set is generated."""

    name: str
    seed: int
    size: tuple[int, int]
    fps: float
    seconds: tuple[float, float]
    sample_rate: int


SETS = (
    HeldOutSet("A", 101, (160, 120), 12.0, (4.0, 6.0), 16_000),
    HeldOutSet("B", 202, (224, 160), 10.0, (6.0, 9.0), 48_000),
)


def definitions() -> list[tuple[str, str, float]]:
    """(name, audio mode, look-back) of every definition."""
    return [("chunked", "chunked", 0.0)] + [(f"causal {c:g} s", "causal", c) for c in LOOK_BACKS]


def slug(name: str) -> str:
    return name.replace(" ", "-")


def build_stores(
    data: Path, out: Path, video: VideoEncoder, audio: AudioEncoder, seed: int
) -> dict[str, FeatureStore]:
    """One store per definition over ``data``; video vectors computed once and shared."""
    items, classes = discover_dataset(data, seed=seed)
    base = build_spec(video, audio, "random", seed, 1.0, 1)
    train_items = [it for it in items if it.split == "train"] or items
    video.calibrate(calibration_frames(train_items, base, seed))
    base = base.replace(random_init=video.describe())
    info = {"classes": classes, "data_root": str(data.resolve()), "split_seed": seed}
    stores, specs = {}, {}
    for name, mode, context in definitions():
        specs[name] = base.replace(audio_mode=mode, audio_context_seconds=context)
        path = out / f"feats-{slug(name)}"
        if (path / "spec.json").exists():
            stores[name] = FeatureStore.open(path)
            continue
        stores[name] = FeatureStore.create(path, specs[name], info)
        stores[name].save_encoder_state(video.bn_state())
    for item in items:
        vid = video_id(item.rel_path)
        if all(s.is_done(vid) for s in stores.values()):
            continue
        minfo = probe(item.path)
        chunked = Extractor(specs["chunked"], video, audio)
        v = chunked.video_features(item.path, minfo)
        results = {"chunked": chunked.audio_features(item.path, minfo, len(v))}
        segments = list(SegmentSource(item.path, specs["chunked"]))
        for name, mode, context in definitions():
            if mode == "causal":
                enc = SegmentEncoder(Extractor(specs[name], video, audio), context)
                parts = [enc.encode_audio([s]) for s in segments]  # one at a time, as live
                results[name] = (
                    np.concatenate([p[0] for p in parts]),
                    np.concatenate([p[1] for p in parts]),
                )
        for name, store in stores.items():
            a, m = results[name]
            T = min(len(v), len(a))
            entry = entry_for(store, item, vid, minfo, T)
            store.write(entry, {"video": v[:T], "audio": a[:T], "audio_mask": m[:T]})
    return stores


def score(ckpt, store: FeatureStore, causal: bool) -> dict:
    """Clip accuracy and macro F1 on the test split (offline or live windows)."""
    entries = store.split("test")
    index = {c: i for i, c in enumerate(ckpt.classes)}
    probs = []
    for _, tensors in store.iter_load(entries):
        x = model_input(ckpt, tensors)
        steps = step_probabilities(ckpt.model, x, ckpt.train_config.seq_len, causal=causal)
        probs.append(clip_probabilities(steps))
    y = np.array([index[e.label] for e in entries])
    m = classification_metrics(y, np.stack(probs), ckpt.classes)
    return {"accuracy": m["accuracy"], "f1": m["f1"], "n": len(entries)}


def realtime_factor(
    data: Path, video: VideoEncoder, audio: AudioEncoder, spec, clips: int
) -> dict[str, float]:
    """Media seconds per wall second of each definition's encoders, one segment at a time
    (chunked: video per segment, audio per 10-s chunk), over the first ``clips`` clips."""
    items, _ = discover_dataset(data)
    items = items[:clips]
    out = {}
    for name, mode, context in definitions():
        s = spec.replace(audio_mode=mode, audio_context_seconds=context)
        ex = Extractor(s, video, audio)
        media, wall = 0.0, 0.0
        for item in items:
            segments = list(SegmentSource(item.path, s))
            t0 = time.perf_counter()
            if mode == "causal":
                enc = SegmentEncoder(ex, context)
                for seg in segments:
                    enc.encode([seg])
            else:
                minfo = probe(item.path)
                for seg in segments:  # the video half, as a stream runs it
                    video.encode(seg.frames)
                ex.audio_features(item.path, minfo, len(segments))
            wall += time.perf_counter() - t0
            media += len(segments) * s.segment_seconds
        out[name] = round(media / wall, 2)
    return out


def mean_std(values: list[float]) -> list[float]:
    v = np.array([x for x in values if x is not None], float)
    return [round(float(v.mean()), 3), round(float(v.std()), 3)] if len(v) else [None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips-per-class", type=int, default=24)
    parser.add_argument("--sets", nargs="+", default=[s.name for s in SETS])
    parser.add_argument("--video-backbone", default=DEFAULT_VIDEO_BACKBONE)
    parser.add_argument("--audio-backbone", default=DEFAULT_AUDIO_BACKBONE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rtf-clips", type=int, default=3)
    parser.add_argument("--within", type=float, default=0.01, help="accuracy slack of the default")
    parser.add_argument(
        "--live-windows", action="store_true", help="also train on live windows (per seed)"
    )
    args = parser.parse_args()
    configure_cpu(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    video = VideoEncoder.load(args.video_backbone, weights="random", seed=0, device="cpu")
    audio = AudioEncoder.load(args.audio_backbone, weights="random", seed=0, device="cpu")
    results: dict[str, dict] = {}
    rtf: dict[str, float] = {}
    for held in (s for s in SETS if s.name in args.sets):
        root = args.out / f"set-{held.name}"
        data = root / "data"
        if not data.exists():
            synthesize_dataset(
                data,
                clips_per_class=args.clips_per_class,
                seed=held.seed,
                duration=held.seconds,
                fps=held.fps,
                size=held.size,
                sample_rate=held.sample_rate,
                progress=False,
            )
        stores = build_stores(data, root, video, audio, held.seed)
        if not rtf:
            rtf = realtime_factor(data, video, audio, stores["chunked"].spec, args.rtf_clips)
        live_name = f"causal {DEFAULT_AUDIO_CONTEXT_S:g} s"
        for name, _, _ in definitions():
            live_store = stores[live_name] if name == "chunked" else stores[name]
            runs = []
            for seed in args.seeds:
                kinds = ["offline"] + (["live"] if args.live_windows else [])
                run = {}
                for windows in kinds:
                    folder = root / "runs" / f"{slug(name)}-{windows}-seed{seed}"
                    if not (folder / "best.ckpt").exists():
                        cfg = TrainConfig(
                            epochs=args.epochs,
                            seed=seed,
                            device="cpu",
                            num_threads=args.threads,
                            windows=windows,
                        )
                        train(stores[name], folder, cfg, progress=False)
                    ckpt = load_checkpoint(folder / "best.ckpt")
                    run[windows] = {
                        "offline": score(ckpt, stores[name], causal=False),
                        "live": score(ckpt, live_store, causal=True),
                    }
                runs.append(run)
            results.setdefault(name, {})[held.name] = runs
    rows = []
    for name, _, _ in definitions():
        per_set = results[name]
        row = {"features": name, "rtf": rtf.get(name)}
        for held, runs in per_set.items():
            for how in ("offline", "live"):
                row[f"{held}_{how}_accuracy"] = mean_std(
                    [r["offline"][how]["accuracy"] for r in runs]
                )
            if args.live_windows:
                row[f"{held}_live_trained_live_accuracy"] = mean_std(
                    [r["live"]["live"]["accuracy"] for r in runs]
                )
            row[f"{held}_test_clips"] = runs[0]["offline"]["offline"]["n"]
        row["offline_accuracy"] = mean_std(
            [r["offline"]["offline"]["accuracy"] for runs in per_set.values() for r in runs]
        )
        row["live_accuracy"] = mean_std(
            [r["offline"]["live"]["accuracy"] for runs in per_set.values() for r in runs]
        )
        rows.append(row)
    best = max(r["offline_accuracy"][0] for r in rows)
    eligible = [r for r in rows if r["offline_accuracy"][0] >= best - args.within]
    default = max(eligible, key=lambda r: r["rtf"] or 0.0)
    doc = {
        "rows": rows,
        "default": default["features"],
        "best_offline_accuracy": best,
        "within": args.within,
        "sets": [s.__dict__ for s in SETS if s.name in args.sets],
        "options": {k: str(v) for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "runs": results,
    }
    (args.out / "live_definitions.json").write_text(json.dumps(doc, indent=1, default=str))
    sets = [s.name for s in SETS if s.name in args.sets]
    head = ["features", "RTF (1 segment at a time)"]
    head += [f"set {s} {how} acc" for s in sets for how in ("offline", "live")]
    if args.live_windows:
        head += [f"set {s} live acc, trained on live windows" for s in sets]
    head += ["offline acc (all)", "live acc (all)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))

    def cell(v):
        return "n/a" if v[0] is None else f"{v[0]:.3f} ± {v[1]:.3f}"

    for r in rows:
        cells = [r["features"], str(r["rtf"])]
        cells += [cell(r[f"{s}_{how}_accuracy"]) for s in sets for how in ("offline", "live")]
        if args.live_windows:
            cells += [cell(r[f"{s}_live_trained_live_accuracy"]) for s in sets]
        cells += [cell(r["offline_accuracy"]), cell(r["live_accuracy"])]
        print("| " + " | ".join(cells) + " |")
    print(
        f"default: {default['features']} (fastest within {args.within:g} of the best offline "
        f"accuracy {best:.3f}); load average {doc['load_average_before'][0]:.1f} before, "
        f"{doc['load_average_after'][0]:.1f} after, {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
