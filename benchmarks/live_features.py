"""What live costs: chunked vs causal audio features (look-back 0 / 0.5 / 1 s), one table.

On a synthetic dataset (``avarnet synth``), features are made once per definition with the same
encoders: video vectors are shared (identical in every definition), audio is made chunked
(``extract``'s 10-s chunks) and causal with each look-back (what ``stream`` computes, through
:class:`avarnet.features.SegmentEncoder`). One feature store per definition; a temporal model is
trained on each (several seeds) and scored on the test split two ways:

* ``evaluate``: clip = mean of per-segment probabilities from all windows (``avarnet evaluate``);
* ``live``: on the causal features a stream computes (the model's own look-back, or the default
  0.5 s for the chunked model) with causal windows, exactly what ``stream`` / ``predict
  --causal`` score.

A linear probe (logistic regression on per-clip mean vectors, 5-fold stratified cross-validation
over all clips) gives a less noisy view of how much each definition carries than the small test
split does; its "live" column fits on the definition's features and scores live ones.

Per-segment audio compute (ms) is timed one segment at a time for each definition. Prints a
Markdown table and writes ``OUT/live_features.json``.

    python benchmarks/live_features.py --out /tmp/live_acc --clips-per-class 5 [--video-backbone ID]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from live_definitions import score  # test-split accuracy, offline or live windows
from tqdm import tqdm

from avarnet.checkpoint import load_checkpoint
from avarnet.config import DEFAULT_AUDIO_BACKBONE, DEFAULT_VIDEO_BACKBONE, TrainConfig
from avarnet.data import discover_dataset
from avarnet.encoders import AudioEncoder, VideoEncoder
from avarnet.extract import build_spec, calibration_frames, entry_for
from avarnet.features import Extractor, SegmentEncoder
from avarnet.media import SegmentSource, probe
from avarnet.runtime import configure_cpu
from avarnet.store import FeatureStore, video_id
from avarnet.synth import synthesize_dataset
from avarnet.train import train

CONTEXTS = (0.0, 0.5, 1.0)
LIVE_DEFAULT = 0.5  # the look-back a stream uses for a chunked checkpoint


def definitions() -> list[tuple[str, str, float]]:
    return [("chunked", "chunked", 0.0)] + [(f"causal {c:g} s", "causal", c) for c in CONTEXTS]


def build_stores(data: Path, out: Path, args) -> dict[str, Path]:
    """One store per feature definition; video vectors computed once and shared."""
    items, classes = discover_dataset(data, seed=args.seed)
    video = VideoEncoder.load(args.video_backbone, weights="random", seed=args.seed, device="cpu")
    audio = AudioEncoder.load(args.audio_backbone, weights="random", seed=args.seed, device="cpu")
    base = build_spec(video, audio, "random", args.seed, 1.0, 1)
    train_items = [it for it in items if it.split == "train"] or items
    video.calibrate(calibration_frames(train_items, base, args.seed))
    base = base.replace(random_init=video.describe())
    info = {"classes": classes, "data_root": str(data.resolve()), "split_seed": args.seed}
    stores, specs = {}, {}
    for name, mode, context in definitions():
        spec = base.replace(
            audio_mode=mode, audio_context_seconds=context or base.audio_context_seconds
        )
        if mode == "causal":
            spec = spec.replace(audio_context_seconds=context)
        specs[name] = spec
        path = out / f"feats-{name.replace(' ', '-')}"
        if (path / "spec.json").exists():
            stores[name] = FeatureStore.open(path)
            continue
        stores[name] = FeatureStore.create(path, spec, info)
        stores[name].save_encoder_state(video.bn_state())
    timing = {name: [] for name in stores}
    for item in tqdm(items, desc="features", unit="clip"):
        vid = video_id(item.rel_path)
        if all(s.is_done(vid) for s in stores.values()):
            continue
        info_m = probe(item.path)
        chunked = Extractor(specs["chunked"], video, audio)
        v = chunked.video_features(item.path, info_m)
        t0 = time.perf_counter()
        a, m = chunked.audio_features(item.path, info_m, len(v))
        timing["chunked"].append((time.perf_counter() - t0) * 1e3 / len(v))
        results = {"chunked": (a, m)}
        segments = list(SegmentSource(item.path, specs["chunked"]))
        for name, _, context in definitions()[1:]:
            enc = SegmentEncoder(Extractor(specs[name], video, audio), context)
            t0 = time.perf_counter()
            parts = [enc.encode_audio([s]) for s in segments]  # one segment at a time, as live
            timing[name].append((time.perf_counter() - t0) * 1e3 / len(segments))
            results[name] = (
                np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]),
            )
        for name, store in stores.items():
            a, m = results[name]
            T = min(len(v), len(a))
            entry = entry_for(store, item, vid, info_m, T)
            store.write(entry, {"video": v[:T], "audio": a[:T], "audio_mask": m[:T]})
    timing_file = out / "audio_ms_per_segment.json"
    if any(timing.values()):
        timing_file.write_text(json.dumps({k: float(np.mean(v)) for k, v in timing.items() if v}))
    return {name: s.root for name, s in stores.items()}


def clip_vectors(store: FeatureStore) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, X, y): per clip the mean video and mean audio vector (segments with audio)."""
    ids, xs, ys = [], [], []
    for entry, t in store.iter_load(sorted(store.entries, key=lambda e: e.id)):
        mask = t["audio_mask"]
        audio = t["audio"][mask].mean(0) if mask.any() else np.zeros(t["audio"].shape[1])
        ids.append(entry.id)
        xs.append(np.concatenate([t["video"].mean(0), audio]))
        ys.append(entry.label)
    return ids, np.stack(xs), np.array(ys)


def linear_probe(train_store: FeatureStore, test_store: FeatureStore, seed: int = 0) -> list[float]:
    """Linear probe, 5-fold stratified CV over all clips: fit on ``train_store``'s vectors, score
    the held-out fold with ``test_store``'s vectors of the same clips."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ids, x_train, y = clip_vectors(train_store)
    ids_test, x_test, _ = clip_vectors(test_store)
    assert ids == ids_test
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = []
    for tr, te in folds.split(x_train, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1))
        clf.fit(x_train[tr], y[tr])
        scores.append(float((clf.predict(x_test[te]) == y[te]).mean()))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips-per-class", type=int, default=5)
    parser.add_argument("--seconds", type=float, nargs=2, default=(4.0, 6.0))
    parser.add_argument("--video-backbone", default=DEFAULT_VIDEO_BACKBONE)
    parser.add_argument("--audio-backbone", default=DEFAULT_AUDIO_BACKBONE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_cpu(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not data.exists():
        synthesize_dataset(
            data,
            clips_per_class=args.clips_per_class,
            seed=args.seed,
            duration=tuple(args.seconds),
            size=(160, 120),
        )
    stores = build_stores(data, args.out, args)
    timing = json.loads((args.out / "audio_ms_per_segment.json").read_text())
    opened = {k: FeatureStore.open(v) for k, v in stores.items()}
    live_store = {"chunked": opened[f"causal {LIVE_DEFAULT:g} s"]} | {
        k: v for k, v in opened.items() if k != "chunked"
    }
    rows = []
    for name, _, _ in definitions():
        runs = []
        for seed in args.seeds:
            run = args.out / "runs" / f"{name.replace(' ', '-')}-seed{seed}"
            ckpt_path = run / "best.ckpt"
            if not ckpt_path.exists():
                cfg = TrainConfig(epochs=args.epochs, seed=seed, device="cpu", num_threads=1)
                train(opened[name], run, cfg, progress=False)
            ckpt = load_checkpoint(ckpt_path)
            runs.append(
                {
                    "evaluate": score(ckpt, opened[name], causal=False),
                    "live": score(ckpt, live_store[name], causal=True),
                }
            )
        row = {"features": name, "audio_ms_per_segment": round(timing[name], 1)}
        for how in ("evaluate", "live"):
            for metric in ("accuracy", "f1"):
                vals = np.array([r[how][metric] for r in runs], float)
                row[f"{how}_{metric}"] = [round(float(vals.mean()), 3), round(float(vals.std()), 3)]
        row["test_clips"] = runs[0]["evaluate"]["n"]
        for how, test_store in (("evaluate", opened[name]), ("live", live_store[name])):
            folds = np.array(linear_probe(opened[name], test_store))
            row[f"probe_{how}_accuracy"] = [
                round(float(folds.mean()), 3),
                round(float(folds.std()), 3),
            ]
        rows.append(row)
    (args.out / "live_features.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "options": {k: str(v) for k, v in vars(args).items()},
                "torch_threads": torch.get_num_threads(),
            },
            indent=1,
        )
    )
    print(
        "| features | evaluate accuracy | evaluate macro F1 | live accuracy | live macro F1 |"
        " probe accuracy (5-fold) | probe accuracy, live features | audio ms / segment |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            f"{r[k][0]:.3f} ± {r[k][1]:.3f}"
            for k in (
                "evaluate_accuracy",
                "evaluate_f1",
                "live_accuracy",
                "live_f1",
                "probe_evaluate_accuracy",
                "probe_live_accuracy",
            )
        ]
        print(f"| {r['features']} | " + " | ".join(cells) + f" | {r['audio_ms_per_segment']} |")


if __name__ == "__main__":
    main()
