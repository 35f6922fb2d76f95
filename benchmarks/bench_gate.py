"""What the motion-and-sound gate costs in accuracy and saves in CPU time, on held-out data.

For each of two differently generated synthetic sets, one causal feature store per gate setting
is extracted through ``extract_dataset`` (the path ``avarnet extract --gate`` takes), a temporal
model is trained per store and seed, and its test split is scored as ``predict --causal`` scores
it (windows ending at each segment, on the stored causal features, which equal what ``stream``
computes: tests/test_gate.py). Reported per set and gate: the share of segments gated, the test
accuracy (mean and spread over seeds), and the extraction's CPU time (decoding included).

Sets:

* ``synth``: ``avarnet synth`` clips (one event over 60-90 % of each clip; the rest is the
  background scene: sensor noise, slow light drift, ambience at about -30 to -41 dBFS);
* ``untrimmed``: long background footage with one short event each (``render_untrimmed``: the
  event covers 20-40 % of the clip), i.e. mostly still, quiet stretches, as a camera sees.

Gates: ``off``; ``nvr`` (motion 0.02, sound -50 dBFS: a level for real, quiet scenes, under the
synthetic ambience, so it rarely fires here); ``ambient`` (motion 0.01, sound -30 dBFS: at the
synthetic background, so it gates the stretches without an event); ``coarse`` (motion 0.03,
sound -20 dBFS: also gates quiet events).

Encoders: the tiny test backbones with random weights (Kaiming init, BatchNorm recalibrated) by
default, so a run takes minutes on two cores; ``--video-backbone``/``--audio-backbone`` take
others. ``--full-size-clips N`` also times the default-size encoders (MobileViT-small,
Wav2Vec2-base, random weights) one segment at a time on N clips per set, gate off vs on: the
CPU time a camera saves.

    nice -n 10 python benchmarks/bench_gate.py --out /tmp/bench_gate [--clips-per-class 10] \\
        [--seeds 0 1 2] [--epochs 30] [--full-size-clips 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from avarnet.checkpoint import load_checkpoint
from avarnet.config import (
    DEFAULT_AUDIO_BACKBONE,
    DEFAULT_VIDEO_BACKBONE,
    VAAR_CLASSES,
    FeatureSpec,
    TrainConfig,
)
from avarnet.data import scan_dataset
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import extract_dataset
from avarnet.features import Extractor, SegmentEncoder
from avarnet.gate import Gate
from avarnet.media import SegmentSource
from avarnet.metrics import classification_metrics
from avarnet.predict import clip_probabilities, model_input, step_probabilities
from avarnet.runtime import configure_cpu
from avarnet.store import FeatureStore
from avarnet.synth import clip_rng, render_untrimmed, synthesize_dataset, write_av
from avarnet.train import train

GATES = {
    "off": {},
    "nvr": {"motion": 0.02, "sound_dbfs": -50.0},
    "ambient": {"motion": 0.01, "sound_dbfs": -30.0},
    "coarse": {"motion": 0.03, "sound_dbfs": -20.0},
}
SIZE = (160, 120)
FPS = 12.0
UNTRIMMED_SECONDS = (12.0, 16.0)
UNTRIMMED_EVENT = (0.2, 0.4)  # share of the clip the event covers


def make_synth(data: Path, clips: int, seed: int) -> None:
    synthesize_dataset(data, clips_per_class=clips, seed=seed, size=SIZE, fps=FPS, progress=False)


def make_untrimmed(data: Path, clips: int, seed: int) -> None:
    """Clips of mostly background with one event of their class covering 20-40 % of them."""
    for label in VAAR_CLASSES:
        for i in range(clips):
            rng = clip_rng(seed, label, i)
            seconds = float(rng.uniform(*UNTRIMMED_SECONDS))
            length = float(rng.uniform(*UNTRIMMED_EVENT)) * seconds
            start = float(rng.uniform(0.0, seconds - length))
            frames, audio = render_untrimmed(
                rng, seconds, FPS, SIZE, 16_000, [(label, start, start + length)]
            )
            path = data / label / f"{label}_{i:03d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_av(path, frames, FPS, audio, 16_000)


SETS = {"synth": (make_synth, 21), "untrimmed": (make_untrimmed, 22)}


def score(ckpt, store: FeatureStore) -> float:
    """Clip accuracy on the test split, scored as ``predict --causal`` scores a video."""
    entries = store.split("test")
    index = {c: i for i, c in enumerate(ckpt.classes)}
    probs = []
    for _, tensors in store.iter_load(entries):
        x = model_input(ckpt, tensors)
        steps = step_probabilities(ckpt.model, x, ckpt.train_config.seq_len, causal=True)
        probs.append(clip_probabilities(steps))
    y = np.array([index[e.label] for e in entries])
    return float(classification_metrics(y, np.stack(probs), ckpt.classes)["accuracy"])


def gated_share(store: FeatureStore) -> tuple[int, int]:
    """(gated segments, segments) over the whole store."""
    gated = total = 0
    for _, tensors in store.iter_load(store.entries):
        total += len(tensors["video"])
        gated += int(tensors["gated"].sum()) if "gated" in tensors else 0
    return gated, total


def full_size_timing(data: Path, clips: int, threads: int) -> dict:
    """CPU seconds per media second of the default-size encoders, one segment at a time as a
    stream runs them, gate off vs each gate, over the first ``clips`` clips (one per class)."""
    configure_cpu(threads)
    video = VideoEncoder.load(DEFAULT_VIDEO_BACKBONE, weights="random", seed=0, device="cpu")
    audio = AudioEncoder.load(DEFAULT_AUDIO_BACKBONE, weights="random", seed=0, device="cpu")
    base = FeatureSpec(audio_mode="causal", weights="random")
    items = scan_dataset(data).items
    picked = list({it.label: it for it in items}.values())[:clips]
    segments = {it.rel_path: list(SegmentSource(it.path, base)) for it in picked}
    media_s = sum(len(s) for s in segments.values()) * base.segment_seconds
    out = {}
    for name, gate in GATES.items():
        ex = Extractor(base.replace(gate=gate), video, audio)
        cpu0, gated = time.process_time(), 0
        for segs in segments.values():
            enc = SegmentEncoder(ex)
            for seg in segs:
                enc.encode([seg])
            gated += enc.segments_gated
        cpu = time.process_time() - cpu0
        out[name] = {"cpu_s_per_media_s": round(cpu / media_s, 4), "gated": gated}
    out["media_seconds"] = media_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips-per-class", type=int, default=10)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--gates", nargs="+", default=list(GATES), choices=list(GATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--video-backbone", help="default: the tiny test backbone")
    parser.add_argument("--audio-backbone", help="default: the tiny test backbone")
    parser.add_argument("--full-size-clips", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    configure_cpu(args.threads)
    if args.video_backbone is None or args.audio_backbone is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from backbone_factory import save_tiny_backbones

        tiny = args.out / "backbones"
        vdir, adir = (tiny / "tiny-mobilevit", tiny / "tiny-wav2vec2")
        if not adir.exists():
            vdir, adir = save_tiny_backbones(tiny)
        args.video_backbone = args.video_backbone or str(vdir)
        args.audio_backbone = args.audio_backbone or str(adir)
    load_before = os.getloadavg()
    rows, timing = [], {}
    for set_name in args.sets:
        make, seed = SETS[set_name]
        root = args.out / set_name
        data = root / "data"
        if not data.exists():
            make(data, args.clips_per_class, seed)
        for gate_name in args.gates:
            feats = root / f"feats-{gate_name}"
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if not (feats / "spec.json").exists():
                extract_dataset(
                    data,
                    feats,
                    weights="random",
                    video_backbone=args.video_backbone,
                    audio_backbone=args.audio_backbone,
                    device="cpu",
                    seed=seed,
                    progress=False,
                    audio_mode="causal",
                    audio_context_seconds=0.0,
                    workers=0,
                    gate=GATES[gate_name],
                )
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            store = FeatureStore.open(feats)
            gated, total = gated_share(store)
            accs = []
            for s in args.seeds:
                run = root / "runs" / f"{gate_name}-seed{s}"
                if not (run / "best.ckpt").exists():
                    cfg = TrainConfig(
                        epochs=args.epochs, seed=s, device="cpu", num_threads=args.threads
                    )
                    train(store, run, cfg, progress=False)
                accs.append(score(load_checkpoint(run / "best.ckpt"), store))
            gate = Gate.from_dict(GATES[gate_name])
            rows.append(
                {
                    "set": set_name,
                    "gate": gate_name,
                    "thresholds": gate.describe() if gate else "off",
                    "gated": gated,
                    "segments": total,
                    "gated_share": round(gated / total, 4) if total else None,
                    "accuracy_mean": round(float(np.mean(accs)), 4),
                    "accuracy_std": round(float(np.std(accs)), 4),
                    "accuracies": [round(a, 4) for a in accs],
                    "test_clips": len(store.split("test")),
                    "extract_cpu_s": round(cpu, 1),
                    "extract_wall_s": round(wall, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        if args.full_size_clips:
            timing[set_name] = full_size_timing(data, args.full_size_clips, args.threads)
            print(json.dumps({"full_size": set_name, **timing[set_name]}), flush=True)
    doc = {
        "rows": rows,
        "full_size_timing": timing,
        "options": {k: str(v) for k, v in vars(args).items()},
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    (args.out / "bench_gate.json").write_text(json.dumps(doc, indent=1))
    print("| set | gate | gated | test accuracy (mean ± sd over seeds) | extract CPU s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['set']} | {r['gate']} ({r['thresholds']}) | {r['gated_share']:.1%} | "
            f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} (n={r['test_clips']}) | "
            f"{r['extract_cpu_s']} |"
        )
    for set_name, t in timing.items():
        cells = ", ".join(
            f"{g}: {v['cpu_s_per_media_s']} CPU s per media s ({v['gated']} gated)"
            for g, v in t.items()
            if isinstance(v, dict)
        )
        print(f"full-size encoders, {set_name}, {t['media_seconds']:g} media s: {cells}")
    print(
        f"load average {doc['load_average_before'][0]:.1f} before, "
        f"{doc['load_average_after'][0]:.1f} after, {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
