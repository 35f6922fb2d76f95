"""Extraction at scale: engines, workers and precisions against the encoder-bound limit; memory.

In one run on one machine, each measurement in a fresh subprocess:

* segments/s of the in-process path (``--workers 0``), of ``--workers 1..cores``, of the Ray engine
  (a local Ray cluster with every core) and of each precision this machine supports;
* the encoder-bound limit: MobileViT and Wav2Vec2 alone on pre-decoded frames and audio chunks as
  long as the dataset's (same batch sizes as the parallel engine), per precision, and each row's
  ratio to it;
* peak resident memory of the parallel engine for few vs many videos (it must not grow with the count);
* peak resident memory of ``avarnet train`` on feature stores of hundreds vs thousands of short
  videos, streaming vs in memory.

Default-size backbones (MobileViT-small, Wav2Vec2-base) with random weights, saved once to a local
folder so no network is needed. Model loading is timed separately and left out of segments/s.

    python benchmarks/bench_extract_scale.py --out /tmp/bench_scale --videos 12 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZE = (320, 240)
FPS = 12.0


def _status_kib(pid: int | str, field: str) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mib() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would include the parent's at fork)."""
    return _status_kib("self", "VmHWM") / 1024


class TreeMemory:
    """Samples the resident memory of this process and all its descendants; keeps the peak sum and
    this process's own samples."""

    def __init__(self, interval: float = 0.2):
        import threading

        self.peak_total = self.peak_child = 0.0
        self.own: list[float] = []  # this process's resident memory at each sample (MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _descendants(self, pid: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                out += [k, *self._descendants(k)]
        return out

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            kids = [_status_kib(k, "VmRSS") / 1024 for k in self._descendants(os.getpid())]
            self.own.append(_status_kib("self", "VmRSS") / 1024)
            self.peak_child = max([self.peak_child, *kids])
            self.peak_total = max(self.peak_total, self.own[-1] + sum(kids))

    def settled(self) -> float:
        """Median of this process's resident memory over the second half of the run (MiB): what it
        holds between the short peaks of single encoder passes."""
        half = self.own[len(self.own) // 2 :]
        return float(np.median(half)) if half else 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- children ------------------------------------------------------------------------------------


def child_extract(a: argparse.Namespace) -> dict:
    from avarnet.encoders import AudioEncoder, VideoEncoder
    from avarnet.extract import extract_dataset
    from avarnet.store import FeatureStore

    t0 = time.perf_counter()
    VideoEncoder.load(a.video_backbone, device="cpu")
    AudioEncoder.load(a.audio_backbone, device="cpu")
    load_s = time.perf_counter() - t0
    if a.engine == "ray":
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    common = {
        "video_backbone": a.video_backbone,
        "audio_backbone": a.audio_backbone,
        "device": "cpu",
        "progress": False,
        "precision": a.precision,
    }
    tree = TreeMemory()
    t0 = time.perf_counter()
    if a.engine == "ray":
        from avarnet.apps.extract_ray import extract_dataset_ray

        r = extract_dataset_ray(a.data, a.store, **common)
    else:
        r = extract_dataset(a.data, a.store, workers=a.workers, **common)
    wall = time.perf_counter() - t0 - load_s
    tree.stop()
    segments = sum(e.T for e in FeatureStore.open(a.store).entries)
    return {
        "videos": r.done,
        "failed": len(r.failures),
        "segments": segments,
        "wall_s": wall,
        "segments_per_s": segments / wall,
        "load_s": load_s,
        "peak_rss_mib": peak_rss_mib(),
        "peak_child_rss_mib": tree.peak_child,
        "peak_total_rss_mib": tree.peak_total,
        "settled_rss_mib": tree.settled(),
    }


def child_limit(a: argparse.Namespace) -> dict:
    """Encoders alone on pre-decoded inputs, batched as the parallel engine batches them."""
    import numpy as np
    import torch

    from avarnet import media
    from avarnet.encoders import AudioEncoder, VideoEncoder
    from avarnet.extract import audio_input, encode_audio_batch, encode_pixels
    from avarnet.features import audio_batch, frame_batch
    from avarnet.runtime import cast_for_autocast, check_precision, configure_cpu

    configure_cpu()
    v = VideoEncoder.load(a.video_backbone, device="cpu")
    au = AudioEncoder.load(a.audio_backbone, device="cpu")
    dtype = check_precision(a.precision, torch.device("cpu"))
    for model in (v.model, au.model):  # as the engines hold them
        cast_for_autocast(model, dtype)
    clip = Path(a.clip)
    info = media.probe(clip)
    frames = np.stack(
        list(
            media.read_frames(
                clip, [0.5] * frame_batch(v.device), v.resize_shortest_edge, info=info
            )
        )
    )
    pixels = v.preprocess(frames)
    # chunks as long as the dataset's (10 s, or the whole video when it is shorter): Wav2Vec2's
    # attention makes a second of audio dearer in a long chunk than in a short one
    chunk_s = min(10.0, float(a.chunk_seconds))
    chunk = next(iter(media.iter_audio(clip, 10.0, au.sample_rate, info=info)))
    chunk = np.resize(chunk, int(chunk_s * au.sample_rate))
    inputs = [audio_input(au, chunk)] * audio_batch(au.device)
    encode_pixels(v, pixels, dtype)  # warm-up
    encode_audio_batch(au, inputs, dtype)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < a.limit_seconds:
        encode_pixels(v, pixels, dtype)
        n += len(pixels)
    frames_per_s = n / (time.perf_counter() - t0)
    t0, secs = time.perf_counter(), 0.0
    while time.perf_counter() - t0 < a.limit_seconds:
        encode_audio_batch(au, inputs, dtype)
        secs += chunk_s * len(inputs)
    audio_s_per_s = secs / (time.perf_counter() - t0)
    # one segment = one frame + one second of audio, the two encoders sharing the same cores
    return {
        "frames_per_s": frames_per_s,
        "audio_s_per_s": audio_s_per_s,
        "segments_per_s": 1.0 / (1.0 / frames_per_s + 1.0 / audio_s_per_s),
    }


def child_train(a: argparse.Namespace) -> dict:
    from avarnet.config import TrainConfig
    from avarnet.train import train

    t0 = time.perf_counter()
    r = train(
        a.store,
        a.run,
        TrainConfig(epochs=1, batch_size=32, device="cpu", seed=0),
        progress=False,
        model_overrides={"hidden": 32, "stages": 2, "layers": 4},
        in_memory=a.in_memory,
    )
    return {
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mib": peak_rss_mib(),
        "val_loss": r.best_val_loss,
    }


# -- parent --------------------------------------------------------------------------------------


def run_child(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for k, v in kw.items():
        if isinstance(v, bool):
            cmd += [f"--{k.replace('_', '-')}"] if v else []
        elif v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{kind} {kw} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def save_backbones(folder: Path) -> tuple[str, str]:
    """Default-size MobileViT-small and Wav2Vec2-base with seeded random weights, as local folders."""
    from avarnet.encoders import AudioEncoder, VideoEncoder

    vdir, adir = folder / "mobilevit-small-random", folder / "wav2vec2-base-random"
    if not vdir.exists():
        VideoEncoder.load("apple/mobilevit-small", weights="random").model.save_pretrained(vdir)
        AudioEncoder.load("facebook/wav2vec2-base", weights="random").model.save_pretrained(adir)
    return str(vdir), str(adir)


def make_dataset(root: Path, videos: int, seconds: float) -> Path:
    """``videos`` clips of 0.5-1.5 x ``seconds`` (seeded): lengths vary as in a real corpus, so the
    last audio chunk of each video has a length of its own."""
    from avarnet.apps.bench import write_scene_clip

    data = root / f"data_{videos}x{seconds:g}s_varied"
    for i in range(videos):
        cls = ("crash", "normal")[i % 2]
        path = data / cls / f"{cls}_{i:04d}.mp4"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            length = seconds * np.random.default_rng(i).uniform(0.5, 1.5)
            write_scene_clip(path, round(length, 2), SIZE, FPS, seed=i)
    return data


def make_feature_store(
    root: Path, videos: int, T: tuple[int, int] = (8, 24), seed: int = 0
) -> Path:
    """A store of ``videos`` short videos with default-size features (640 + 768), random values."""
    import numpy as np

    from avarnet.config import FeatureSpec
    from avarnet.store import Entry, FeatureStore, video_id

    out = root / f"feats_{videos}"
    if (out / "spec.json").exists() and len(FeatureStore.open(out).entries) == videos:
        return out
    rng = np.random.default_rng(seed)
    classes = ["abuse", "crash", "normal"]
    store = FeatureStore.create(out, FeatureSpec(weights="random"), {"classes": classes})
    for i in range(videos):
        t, cls = int(rng.integers(T[0], T[1] + 1)), classes[i % 3]
        rel = f"{cls}/{cls}_{i:05d}.mp4"
        vid = video_id(rel)
        split = ("train", "train", "train", "val", "test")[i % 5]
        tensors = {
            "video": rng.normal(i % 3, 1, (t, 640)).astype(np.float32),
            "audio": rng.normal(0, 1, (t, 768)).astype(np.float32),
            "audio_mask": np.ones(t, bool),
        }
        store.write(
            Entry(vid, f"features/{vid}.safetensors", cls, split, rel, float(t), 12.0, True, t),
            tensors,
        )
    store.close_writer()
    return out


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        "?",
    )
    return f"{os.cpu_count()} cores ({cpu}), load average {os.getloadavg()[0]:.1f} at start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_extract_scale"))
    ap.add_argument("--videos", type=int, default=12, help="videos in the throughput dataset")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each video")
    ap.add_argument(
        "--memory-videos", type=int, nargs=2, default=[10, 100], help="few vs many videos (memory)"
    )
    ap.add_argument("--memory-seconds", type=float, default=2.0)
    ap.add_argument(
        "--train-videos",
        type=int,
        nargs=2,
        default=[300, 3000],
        help="store sizes for training memory",
    )
    ap.add_argument(
        "--limit-seconds", type=float, default=10.0, help="timing of each encoder alone"
    )
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    for name in (
        "data",
        "store",
        "run",
        "clip",
        "engine",
        "precision",
        "video-backbone",
        "audio-backbone",
    ):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--chunk-seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    ap.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"extract": child_extract, "limit": child_limit, "train": child_train}[a.child]
        print(json.dumps(fn(a)))
        return

    from avarnet.config import ENCODER_PRECISIONS
    from avarnet.encoders import resolve_device
    from avarnet.runtime import supported_precisions

    a.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    vb, ab = save_backbones(a.out)
    data = make_dataset(a.out, a.videos, a.seconds)
    clip = next(data.rglob("*.mp4"))
    cores = os.cpu_count() or 1
    precisions = supported_precisions(resolve_device("cpu"), ENCODER_PRECISIONS)
    common = {"video_backbone": vb, "audio_backbone": ab}
    limits = {
        p: run_child(
            "limit",
            clip=clip,
            precision=p,
            limit_seconds=a.limit_seconds,
            chunk_seconds=a.seconds,
            **common,
        )
        for p in precisions
    }
    for p, lim in limits.items():
        print(
            f"limit {p}: {lim['segments_per_s']:.2f} segments/s ({lim['frames_per_s']:.1f} frames/s, "
            f"{lim['audio_s_per_s']:.1f} audio s/s)",
            flush=True,
        )
    rows = []

    def extract(
        name: str, engine: str, workers: int | None, precision: str, data_: Path, tag: str
    ) -> dict:
        store = a.out / f"store_{tag}"
        subprocess.run(["rm", "-rf", str(store)], check=True)
        r = run_child(
            "extract",
            data=data_,
            store=store,
            engine=engine,
            workers=workers,
            precision=precision,
            **common,
        )
        r.update(
            name=name,
            precision=precision,
            ratio=r["segments_per_s"] / limits[precision]["segments_per_s"],
            load=os.getloadavg()[0],
        )
        print(
            f"{name} [{precision}]: {r['segments_per_s']:.2f} segments/s "
            f"({100 * r['ratio']:.0f}% of the limit), peak RSS {r['peak_rss_mib']:.0f} MiB, load {r['load']:.1f}",
            flush=True,
        )
        return r

    rows.append(extract("in-process (--workers 0)", "local", 0, "fp32", data, "w0"))
    for w in range(1, cores + 1):
        rows.append(extract(f"--workers {w}", "local", w, "fp32", data, f"w{w}"))
    for p in precisions[1:]:
        rows.append(extract(f"--workers {cores}", "local", cores, p, data, f"{p}"))
        rows.append(extract("in-process (--workers 0)", "local", 0, p, data, f"w0{p}"))
    if not a.skip_ray:
        rows.append(extract("--engine ray", "ray", None, "fp32", data, "ray"))
    mem = []
    for n in a.memory_videos:
        d = make_dataset(a.out, n, a.memory_seconds)
        mem.append(
            extract(f"--workers {cores}, {n} videos", "local", cores, "fp32", d, f"mem{n}")
            | {"n": n}
        )
    train_rows = []
    for n in a.train_videos:
        store = make_feature_store(a.out, n)
        for in_memory in (False, True):
            r = run_child(
                "train", store=store, run=a.out / f"run_{n}_{in_memory}", in_memory=in_memory
            )
            r.update(n=n, mode="in memory" if in_memory else "streaming", load=os.getloadavg()[0])
            print(
                f"train {n} videos, {r['mode']}: peak RSS {r['peak_rss_mib']:.0f} MiB, {r['wall_s']:.0f} s",
                flush=True,
            )
            train_rows.append(r)
    result = {
        "machine": machine(),
        "limits": limits,
        "rows": rows,
        "memory": mem,
        "train": train_rows,
        "videos": a.videos,
        "seconds": a.seconds,
    }
    (a.out / "bench_extract_scale.json").write_text(json.dumps(result, indent=1))
    print(tables(result))


def tables(r: dict) -> str:
    out = [
        f"Throughput: {r['videos']} videos of {r['seconds']:g} s ({SIZE[0]}x{SIZE[1]}, {FPS:g} fps), "
        "MobileViT-small + Wav2Vec2-base",
        "",
        "| engine | precision | segments/s | encoder-bound limit | ratio | peak RSS (MiB) | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lim = r["limits"][row["precision"]]["segments_per_s"]
        out.append(
            f"| {row['name']} | {row['precision']} | {row['segments_per_s']:.2f} | {lim:.2f} | "
            f"{100 * row['ratio']:.0f}% | {row['peak_rss_mib']:.0f} | {row['load']:.1f} |"
        )
    m = r["memory"]
    out += [
        "",
        "Peak memory of the parallel engine, few vs many videos:",
        "",
        "| | " + " | ".join(f"{x['n']} videos" for x in m) + " |",
        "|---|" + "---|" * len(m),
        "| main process peak RSS (MiB) | "
        + " | ".join(f"{x['peak_rss_mib']:.0f}" for x in m)
        + " |",
        "| main process RSS, median over the second half of the run (MiB) | "
        + " | ".join(f"{x.get('settled_rss_mib', 0):.0f}" for x in m)
        + " |",
        "| largest decoding process RSS, sampled (MiB) | "
        + " | ".join(f"{x['peak_child_rss_mib']:.0f}" for x in m)
        + " |",
        "| all processes together, sampled peak (MiB) | "
        + " | ".join(f"{x['peak_total_rss_mib']:.0f}" for x in m)
        + " |",
        "| segments/s | " + " | ".join(f"{x['segments_per_s']:.2f}" for x in m) + " |",
    ]
    t = r["train"]
    out += [
        "",
        "`avarnet train` (1 epoch) peak memory by store size:",
        "",
        "| videos | mode | peak RSS (MiB) | wall (s) | load |",
        "|---|---|---|---|---|",
    ]
    for x in t:
        out.append(
            f"| {x['n']} | {x['mode']} | {x['peak_rss_mib']:.0f} | {x['wall_s']:.0f} | {x['load']:.1f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
