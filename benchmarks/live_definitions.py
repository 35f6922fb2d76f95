"""The live feature definition chosen by accuracy and speed together.

Definitions: chunked audio (``extract``'s 10-s chunks, offline only) and causal audio with a
look-back of 0, 0.5, 1 and 2 s (what ``stream`` computes). For each of several differently
generated synthetic held-out sets (``avarnet synth`` with its own seed, frame size, frame rate,
clip lengths and audio sample rate), one feature store per definition is made with the same
encoders (video vectors shared, audio per definition; causal audio one segment at a time, as a
stream computes it), a temporal model is trained per store and seed, and its test split is scored
two ways:

* ``offline``: as ``avarnet evaluate`` scores it (every window holding a segment);
* ``live``: on the features a stream computes (a chunked model is fed causal features with the
  default look-back) with the window ending at each segment, i.e. what ``stream`` and ``predict
  --causal`` give; with ``--live-windows`` also by a second model trained on those windows
  (``train --windows live``).

Speed, measured after the accuracy runs: each definition run one segment at a time as a stream
runs it (decode, MobileViT on the segment's frame, Wav2Vec2 on [look-back | segment]; chunked:
video per segment and audio per 10-s chunk), media seconds per wall second (RTF) and per-segment
latency, on ``--rtf-clips`` test clips of the first set, definitions interleaved over
``--rtf-rounds`` rounds. The machine may be loaded, so beside each RTF: the fp32 matmul GFLOP/s
measured right before each definition's turn (the floor), GFLOP per segment (torch's FLOP
counter), the RTF that floor allows, the RTF as % of it, and the load average.

The default it supports: the fastest definition whose mean offline accuracy (over seeds) is within
``--within`` (1 point) of the best definition's on every set (worst case over sets); the same
rule on the mean over all runs and on every single (set, seed) run is reported beside it. With
``--predict-check [DEFINITION ...]``, the first-seed checkpoints of the default (and of the
definitions named) are also scored by ``predict --causal``'s own
code path (encoders rebuilt from the checkpoint, features recomputed from the test videos).

Everything is cached under ``--out`` (data, stores, checkpoints with their scores, speed), so an
interrupted run continues where it stopped; sets can be built by separate processes
(``--sets A --no-report`` and ``--sets B --no-report``) before one ``--sets A B`` run reports.
Prints Markdown tables and writes ``OUT/live_definitions.json``.

    python benchmarks/live_definitions.py --out /tmp/live_defs [--clips-per-class 18] \\
        [--test-per-class 4 --val-per-class 2] [--seeds 0 1 2] [--live-windows] \\
        [--video-backbone ID|DIR] [--audio-backbone ID|DIR] [--threads 1] [--predict-check [DEFINITION ...]]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from avarnet.apps.bench import measure_floor
from avarnet.checkpoint import load_checkpoint
from avarnet.config import (
    DEFAULT_AUDIO_BACKBONE,
    DEFAULT_AUDIO_CONTEXT_S,
    DEFAULT_VIDEO_BACKBONE,
    VAAR_CLASSES,
    TrainConfig,
)
from avarnet.data import discover_dataset
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import build_spec, calibration_frames, entry_for
from avarnet.features import Extractor, SegmentEncoder
from avarnet.media import SegmentSource, probe
from avarnet.metrics import classification_metrics
from avarnet.predict import clip_probabilities, model_input, predict_video, step_probabilities
from avarnet.runtime import configure_cpu
from avarnet.store import FeatureStore, video_id
from avarnet.stream import stream_extractor
from avarnet.synth import clip_rng, render_clip, write_av
from avarnet.train import train

LOOK_BACKS = (0.0, 0.5, 1.0, 2.0)
ENCODER_SEED = 0  # random weights of both backbones (recorded in every spec)
SCORES = "scores.json"  # written once a run is trained and scored: its presence marks it done


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
    HeldOutSet("A", 101, (160, 120), 12.0, (3.0, 5.0), 16_000),
    HeldOutSet("B", 202, (224, 160), 10.0, (4.0, 6.0), 48_000),
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def definitions() -> list[tuple[str, str, float]]:
    """(name, audio mode, look-back) of every definition."""
    return [("chunked", "chunked", 0.0)] + [(f"causal {c:g} s", "causal", c) for c in LOOK_BACKS]


def slug(name: str) -> str:
    return name.replace(" ", "-")


def make_data(held: HeldOutSet, root: Path, args) -> Path:
    """The set's clips, ``--clips-per-class`` of each class, with a ``splits.csv`` when
    ``--test-per-class`` asks for a fixed number of test clips per class.

    Clip i of a class is the same whatever the count (:func:`avarnet.synth.clip_rng`), so a set
    made with fewer clips per class is grown in place: its clips keep their split, and the new
    ones fill test, then validation, up to their counts, the rest going to training. A clip is
    written under a temporary name and renamed, so an interrupted run leaves no broken file."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    table = data / "splits.csv"
    old = {}
    if table.exists():
        with open(table, newline="") as f:
            old = {r["path"]: r["split"] for r in csv.DictReader(f)}
    rows = []
    for label in VAAR_CLASSES:
        counts = {"test": 0, "val": 0}
        wanted = {"test": args.test_per_class, "val": args.val_per_class}
        fresh = []
        for i in range(args.clips_per_class):
            rel = f"{label}/{label}_{i:03d}.mp4"
            path = data / rel
            if not path.exists():
                rng = clip_rng(held.seed, label, i)
                frames, sound = render_clip(
                    label, rng, rng.uniform(*held.seconds), held.fps, held.size, held.sample_rate
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = root / "partial.mp4"
                write_av(tmp, frames, held.fps, sound, held.sample_rate)
                tmp.rename(path)
            if rel in old:
                rows.append({"path": rel, "split": old[rel]})
                counts[old[rel]] = counts.get(old[rel], 0) + 1
            else:
                fresh.append(rel)
        order = np.random.default_rng([held.seed, len(old), VAAR_CLASSES.index(label)])
        order = order.permutation(len(fresh))
        for k in order:
            split = next((s for s in ("test", "val") if counts[s] < wanted[s]), "train")
            counts[split] = counts.get(split, 0) + 1
            rows.append({"path": fresh[k], "split": split})
    if args.test_per_class:
        with open(table.with_suffix(".partial"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "split"])
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: r["path"]))
        table.with_suffix(".partial").rename(table)
    return data


def build_stores(
    data: Path, out: Path, video: VideoEncoder, audio: AudioEncoder, split_seed: int, label: str
) -> dict[str, FeatureStore]:
    """One store per definition over ``data``; video vectors computed once and shared. Clips
    already in every store are skipped (an interrupted run continues)."""
    items, classes = discover_dataset(data, seed=split_seed)
    if not any(it.split == "test" for it in items):
        raise SystemExit(f"{data}: no test split; use more clips per class or --test-per-class")
    base = build_spec(video, audio, "random", ENCODER_SEED, 1.0, 1)
    train_items = [it for it in items if it.split == "train"] or items
    video.calibrate(calibration_frames(train_items, base, split_seed))
    base = base.replace(random_init=video.describe())
    info = {"classes": classes, "data_root": str(data.resolve()), "split_seed": split_seed}
    stores, specs = {}, {}
    for name, mode, context in definitions():
        specs[name] = base.replace(audio_mode=mode, audio_context_seconds=context)
        path = out / f"feats-{slug(name)}"
        if (path / "spec.json").exists():
            stores[name] = FeatureStore.open(path)
            continue
        stores[name] = FeatureStore.create(path, specs[name], info)
        stores[name].save_encoder_state(video.bn_state())
    todo = [
        it for it in items if not all(s.is_done(video_id(it.rel_path)) for s in stores.values())
    ]
    splits = {s: sum(it.split == s for it in items) for s in ("train", "val", "test")}
    log(f"set {label}: {len(items)} clips {splits}, {len(todo)} to extract")
    start, segments_done = time.perf_counter(), 0
    for k, item in enumerate(todo, 1):
        vid = video_id(item.rel_path)
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
        segments_done += len(v)
        wall = time.perf_counter() - start
        if k % 5 == 0 or k == len(todo):
            left = wall / k * (len(todo) - k)
            log(
                f"set {label}: {k}/{len(todo)} clips extracted, {wall / segments_done:.2f} s per "
                f"segment (all definitions), about {left / 60:.0f} min left"
            )
    return {name: FeatureStore.open(s.root) for name, s in stores.items()}


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
    predicted = {e.id: ckpt.classes[int(np.argmax(p))] for e, p in zip(entries, probs, strict=True)}
    return {
        "accuracy": float(m["accuracy"]),
        "f1": float(m["f1"]),
        "n": len(entries),
        "predicted": predicted,
    }


def train_and_score(
    stores: dict[str, FeatureStore], root: Path, label: str, args
) -> dict[str, list[dict]]:
    """{definition: [per seed {windows: {"offline": scores, "live": scores}}]}; each run's scores
    are kept beside its checkpoint, so a finished run is never trained again."""
    live_name = f"causal {DEFAULT_AUDIO_CONTEXT_S:g} s"
    kinds = ["offline"] + (["live"] if args.live_windows else [])
    total = len(definitions()) * len(args.seeds) * len(kinds)
    results: dict[str, list[dict]] = {}
    done = 0
    for name, _, _ in definitions():
        live_store = stores[live_name] if name == "chunked" else stores[name]
        for seed in args.seeds:
            run = {}
            for windows in kinds:
                folder = root / "runs" / f"{slug(name)}-{windows}-seed{seed}"
                done += 1
                if (folder / SCORES).exists():
                    run[windows] = json.loads((folder / SCORES).read_text())
                    continue
                shutil.rmtree(folder, ignore_errors=True)  # an interrupted run: train again
                t0 = time.perf_counter()
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
                (folder / SCORES).write_text(json.dumps(run[windows]))
                log(
                    f"set {label}: run {done}/{total} {name}, {windows} windows, seed {seed}: "
                    f"offline {run[windows]['offline']['accuracy']:.3f}, live "
                    f"{run[windows]['live']['accuracy']:.3f} ({time.perf_counter() - t0:.0f} s)"
                )
            results.setdefault(name, []).append(run)
    return results


def segment_gflop(video: VideoEncoder, audio: AudioEncoder, spec, mode: str, context: float):
    """fp32 GFLOP per 1-s segment: one MobileViT frame and Wav2Vec2 over [look-back | segment]
    (chunked: a 10-s chunk / 10), counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    pixels = video.preprocess(np.zeros((1, spec.image_size, spec.image_size, 3), np.uint8))
    seconds = spec.audio_chunk_seconds if mode == "chunked" else spec.segment_seconds + context
    samples = torch.zeros(1, round(seconds * audio.sample_rate))
    with torch.inference_mode():
        with FlopCounterMode(display=False) as vc:
            video.model(pixel_values=pixels.to(video.device))
        with FlopCounterMode(display=False) as ac:
            audio.model(input_values=samples.to(audio.device))
    share = spec.segment_seconds / seconds if mode == "chunked" else 1.0
    return (vc.get_total_flops() + ac.get_total_flops() * share) / 1e9


def stream_once(item, video: VideoEncoder, audio: AudioEncoder, spec, mode: str, context: float):
    """(segments, wall seconds, per-segment latencies) of one clip run as a stream runs it."""
    latencies = []
    t0 = time.perf_counter()
    source = iter(SegmentSource(item.path, spec))
    n = 0
    if mode == "causal":
        enc = SegmentEncoder(Extractor(spec, video, audio), context)
        while True:
            t = time.perf_counter()
            seg = next(source, None)  # decoding counts: a stream decodes too
            if seg is None:
                break
            enc.encode([seg])
            latencies.append(time.perf_counter() - t)
            n += 1
    else:  # offline only: video per segment, audio per 10-s chunk of the whole track
        for seg in source:
            t = time.perf_counter()
            video.encode(seg.frames)
            latencies.append(time.perf_counter() - t)
            n += 1
        Extractor(spec, video, audio).audio_features(item.path, probe(item.path), n)
    return n, time.perf_counter() - t0, latencies


def realtime_factors(
    data: Path, split_seed: int, video: VideoEncoder, audio: AudioEncoder, spec, args
) -> dict[str, dict]:
    """Per definition: RTF one segment at a time, latency p50/p95 (causal), the fp32 matmul floor
    measured right before each turn, GFLOP per segment, and the RTF that floor allows."""
    items, _ = discover_dataset(data, seed=split_seed)
    test = [it for it in items if it.split == "test"]
    step = max(1, len(test) // args.rtf_clips)
    clips = test[::step][: args.rtf_clips]
    acc = {
        name: {"segments": 0, "wall": 0.0, "lat": [], "floors": []} for name, _, _ in definitions()
    }
    load_before = os.getloadavg()
    for r in range(args.rtf_rounds):
        for name, mode, context in definitions():
            s = spec.replace(audio_mode=mode, audio_context_seconds=context)
            acc[name]["floors"].append(measure_floor(seconds=0.5))
            for item in clips:
                n, wall, lat = stream_once(item, video, audio, s, mode, context)
                acc[name]["segments"] += n
                acc[name]["wall"] += wall
                acc[name]["lat"] += lat
            a = acc[name]
            log(
                f"speed round {r + 1}/{args.rtf_rounds} {name}: RTF "
                f"{a['segments'] * s.segment_seconds / a['wall']:.2f} so far, floor "
                f"{a['floors'][-1]:.1f} GFLOP/s"
            )
    out = {}
    for name, mode, context in definitions():
        s = spec.replace(audio_mode=mode, audio_context_seconds=context)
        a = acc[name]
        gflop = segment_gflop(video, audio, s, mode, context)
        floor = float(np.median(a["floors"]))
        rtf = a["segments"] * s.segment_seconds / a["wall"]
        lat = np.array(a["lat"]) * 1e3
        out[name] = {
            "rtf": round(rtf, 3),
            "gflop_per_segment": round(gflop, 2),
            "floor_gflops": round(floor, 1),
            "floors": [round(f, 1) for f in a["floors"]],
            "floor_rtf": round(floor / gflop, 3),
            "rtf_pct_of_floor": round(100 * rtf / (floor / gflop), 1),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 1) if mode == "causal" else None,
            "latency_p95_ms": round(float(np.percentile(lat, 95)), 1) if mode == "causal" else None,
            "segments": a["segments"],
            "clips": [it.rel_path for it in clips],
        }
    load = [round(x, 2) for x in load_before] + [round(x, 2) for x in os.getloadavg()]
    for row in out.values():
        row["load_average_before_after"] = load
    return out


def predict_check(stores, root: Path, name: str, windows: str, seed: int) -> dict:
    """Test accuracy of ``predict --causal``'s own path (encoders rebuilt from the checkpoint,
    features recomputed from the videos) for one checkpoint; cached."""
    cache = root / f"predict-causal-{slug(name)}-{windows}-seed{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    ckpt = load_checkpoint(root / "runs" / f"{slug(name)}-{windows}-seed{seed}" / "best.ckpt")
    extractor = stream_extractor(ckpt, "cpu", "fp32")
    store = stores[name]
    data = Path(store.info["data_root"])
    entries = store.split("test")
    predicted = {}
    for e in entries:
        pred = predict_video(data / e.source, ckpt, device="cpu", causal=True, extractor=extractor)
        predicted[e.id] = pred["label"]
    right = sum(predicted[e.id] == e.label for e in entries)
    result = {"accuracy": right / len(entries), "n": len(entries), "predicted": predicted}
    cache.write_text(json.dumps(result))
    return result


def run_checks(names: list[str], all_stores: dict, kinds: list[str], args) -> dict:
    """:func:`predict_check` of each named definition on every set, beside the live accuracy the
    benchmark computed from its stores for the same checkpoint."""
    known = {slug(n): n for n, _, _ in definitions()}
    live_name = f"causal {DEFAULT_AUDIO_CONTEXT_S:g} s"
    checks = {}
    for wanted in names:
        name = known.get(slug(wanted))
        if name is None:
            raise SystemExit(f"unknown definition {wanted!r}; known: {sorted(known)}")
        for s, stores in all_stores.items():
            for w in (w for w in args.predict_windows if w in kinds):
                root = args.out / f"set-{s}"
                seed = args.seeds[0]
                checked = predict_check(stores, root, name, w, seed)
                ckpt = load_checkpoint(root / "runs" / f"{slug(name)}-{w}-seed{seed}" / "best.ckpt")
                live = stores[live_name] if name == "chunked" else stores[name]
                ours = score(ckpt, live, causal=True)
                same = sum(checked["predicted"][k] == v for k, v in ours["predicted"].items())
                result = {
                    "predict_causal_accuracy": checked["accuracy"],
                    "benchmark_live_accuracy": ours["accuracy"],
                    "same_verdicts": f"{same}/{ours['n']}",
                }
                key = f"{name}, set {s}, {w} windows, seed {seed}"
                checks[key] = result
                log(f"predict --causal on the test clips, {key}: {result}")
    return checks


def mean_std(values: list[float]) -> list[float]:
    v = np.array(values, float)
    return [round(float(v.mean()), 4), round(float(v.std()), 4)]


def choose_default(rows: list[dict], sets: list[str], per_run: dict, within: float) -> dict:
    """The fastest live (causal) definition within ``within`` of the best offline accuracy of
    any definition (chunked included), three ways: every set's mean over seeds, the mean over all
    runs, every single (set, seed) run."""
    eps = 1e-9
    best_set = {s: max(r[f"{s}_offline_accuracy"][0] for r in rows) for s in sets}
    best_all = max(r["offline_accuracy"][0] for r in rows)
    for r in rows:
        r["worst_set_gap"] = round(
            max(best_set[s] - r[f"{s}_offline_accuracy"][0] for s in sets), 4
        )
        r["all_gap"] = round(best_all - r["offline_accuracy"][0], 4)
        gaps = []
        for s in sets:
            for i in range(len(per_run[r["features"]][s])):
                best = max(per_run[q["features"]][s][i] for q in rows)
                gaps.append(best - per_run[r["features"]][s][i])
        r["worst_run_gap"] = round(max(gaps), 4)

    def fastest(key: str) -> str | None:  # a live definition: chunked is the offline reference
        ok = [r for r in rows if r["features"] != "chunked" and r[key] <= within + eps]
        return max(ok, key=lambda r: r["rtf"])["features"] if ok else None

    return {
        "worst_set": fastest("worst_set_gap"),
        "mean_all": fastest("all_gap"),
        "every_run": fastest("worst_run_gap"),
        "best_offline_accuracy_per_set": best_set,
        "best_offline_accuracy_all": best_all,
    }


def cpu_model() -> dict:
    info = {"machine": platform.machine(), "nproc": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx")))
            break
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips-per-class", type=int, default=18)
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=4,
        help="test clips per class (0: the library's 60/20/20 split)",
    )
    parser.add_argument("--val-per-class", type=int, default=2)
    parser.add_argument("--sets", nargs="+", default=[s.name for s in SETS])
    parser.add_argument("--video-backbone", default=DEFAULT_VIDEO_BACKBONE)
    parser.add_argument("--audio-backbone", default=DEFAULT_AUDIO_BACKBONE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rtf-clips", type=int, default=3)
    parser.add_argument("--rtf-rounds", type=int, default=2)
    parser.add_argument("--within", type=float, default=0.01, help="accuracy slack of the default")
    parser.add_argument(
        "--live-windows", action="store_true", help="also train on live windows (per seed)"
    )
    parser.add_argument(
        "--predict-check",
        nargs="*",
        metavar="DEFINITION",
        help="score these definitions' (none named: the default's) first-seed checkpoints with "
        "predict --causal's own path, e.g. causal-0-s",
    )
    parser.add_argument(
        "--predict-windows",
        nargs="+",
        default=["offline"],
        choices=["offline", "live"],
        help="which trained windows --predict-check scores",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="build and train only (no speed, no table)"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.sets) - {s.name for s in SETS})
    if unknown:
        raise SystemExit(f"unknown sets {unknown}; known: {[s.name for s in SETS]}")
    configure_cpu(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    video = VideoEncoder.load(
        args.video_backbone, weights="random", seed=ENCODER_SEED, device="cpu"
    )
    audio = AudioEncoder.load(
        args.audio_backbone, weights="random", seed=ENCODER_SEED, device="cpu"
    )
    chosen = [s for s in SETS if s.name in args.sets]
    results: dict[str, dict] = {}
    all_stores: dict[str, dict[str, FeatureStore]] = {}
    for held in chosen:
        root = args.out / f"set-{held.name}"
        data = make_data(held, root, args)
        stores = build_stores(data, root, video, audio, held.seed, held.name)
        all_stores[held.name] = stores
        for name, runs in train_and_score(stores, root, held.name, args).items():
            results.setdefault(name, {})[held.name] = runs
    kinds = ["offline"] + (["live"] if args.live_windows else [])
    if args.no_report:
        if args.predict_check:
            run_checks(args.predict_check, all_stores, kinds, args)
        log(f"built and trained sets {args.sets} in {(time.perf_counter() - started) / 60:.0f} min")
        return
    first = chosen[0]
    rtf_file = args.out / "speed.json"
    if rtf_file.exists():
        speed = json.loads(rtf_file.read_text())
    else:
        # the encoders were last calibrated on the last set; speed does not depend on it
        spec = all_stores[first.name]["chunked"].spec
        speed = realtime_factors(
            args.out / f"set-{first.name}" / "data", first.seed, video, audio, spec, args
        )
        rtf_file.write_text(json.dumps(speed, indent=1))
    sets = [s.name for s in chosen]
    rows, per_run = [], {}
    for name, _, _ in definitions():
        per_set = results[name]
        row = {"features": name, **speed[name]}
        per_run[name] = {}
        for s, runs in per_set.items():
            per_run[name][s] = [r["offline"]["offline"]["accuracy"] for r in runs]
            for w in kinds:
                for how in ("offline", "live"):
                    row[f"{s}_{how}_accuracy" + ("" if w == "offline" else "_live_trained")] = (
                        mean_std([r[w][how]["accuracy"] for r in runs])
                    )
            row[f"{s}_offline_accuracy_min"] = min(per_run[name][s])
            row[f"{s}_test_clips"] = runs[0]["offline"]["offline"]["n"]
        for how in ("offline", "live"):
            row[f"{how}_accuracy"] = mean_std(
                [r["offline"][how]["accuracy"] for runs in per_set.values() for r in runs]
            )
        rows.append(row)
    rule = choose_default(rows, sets, per_run, args.within)
    default = rule["worst_set"] or rule["mean_all"]
    checks = {}
    if args.predict_check is not None:
        names = list(dict.fromkeys([*args.predict_check, *([default] if default else [])]))
        checks = run_checks(names, all_stores, kinds, args)
    doc = {
        "rows": rows,
        "default": default,
        "rule": rule,
        "within": args.within,
        "predict_causal_check": checks,
        "sets": [asdict(s) for s in chosen],
        "options": {k: str(v) for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "runs": results,
    }
    (args.out / "live_definitions.json").write_text(json.dumps(doc, indent=1, default=str))
    print_tables(rows, sets, kinds, rule, default, checks, doc, args)


def print_tables(rows, sets, kinds, rule, default, checks, doc, args) -> None:
    def cell(v):
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    head = ["features"]
    for s in sets:
        head += [f"set {s} offline", f"set {s} live"]
        if "live" in kinds:
            head += [f"set {s} live, live-trained"]
    head += ["offline (all)", "live (all)", "worst set gap", "worst run gap"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["features"]]
        for s in sets:
            cells += [cell(r[f"{s}_offline_accuracy"]), cell(r[f"{s}_live_accuracy"])]
            if "live" in kinds:
                cells += [cell(r[f"{s}_live_accuracy_live_trained"])]
        cells += [cell(r["offline_accuracy"]), cell(r["live_accuracy"])]
        cells += [f"{100 * r['worst_set_gap']:.1f}", f"{100 * r['worst_run_gap']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    head = ["features", "GFLOP/segment", "floor GFLOP/s", "floor RTF", "RTF (1 segment at a time)"]
    head += ["RTF % of floor", "latency p50 ms", "latency p95 ms"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["features"], f"{r['gflop_per_segment']:.2f}", f"{r['floor_gflops']:.1f}"]
        cells += [f"{r['floor_rtf']:.2f}", f"{r['rtf']:.2f}", f"{r['rtf_pct_of_floor']:.1f}"]
        cells += [str(r["latency_p50_ms"] or "n/a"), str(r["latency_p95_ms"] or "n/a")]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        f"default (fastest within {100 * args.within:g} point(s) of the best offline accuracy on "
        f"every set): {rule['worst_set']}; on the mean over all runs: {rule['mean_all']}; on every "
        f"single run: {rule['every_run']}. Best offline accuracy per set "
        f"{rule['best_offline_accuracy_per_set']}, all {rule['best_offline_accuracy_all']:.3f}."
    )
    for key, result in checks.items():
        print(f"predict --causal on the test clips, {key}: {result}")
    print(
        f"load average {doc['load_average_before'][0]:.1f} before, "
        f"{doc['load_average_after'][0]:.1f} after; {doc['cpu']}; torch threads "
        f"{doc['torch_threads']}"
    )


if __name__ == "__main__":
    main()
