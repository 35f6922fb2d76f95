"""Import of a full-size XD-Violence list: memory stays bounded, time per video.

Writes official-format features for as many videos as the real dataset has (3,954 training and
800 test videos, five crops each, list files and a gt.npy), imports them with
``avarnet.apps.xdv.import_official`` and prints, per list size, the wall time, the peak of Python
allocations (tracemalloc) and the process's peak resident memory. Features are short (``--snippets``)
so the files fit on a laptop disk; what could grow with the list is the import's bookkeeping.

    python benchmarks/xdv_import.py --out /tmp/xdv_import
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np

from avarnet.apps.xdv import FRAMES_PER_SNIPPET, NUM_CROPS, import_official

TRAIN, TEST = 3954, 800  # videos in the official lists
CODES = ["A", "B1-0-0", "B2-G-0", "B4-0-0", "B5-0-0", "B6-B2-0", "G-0-0"]


def write_lists(
    root: Path, n: int, test: bool, snippets: int, dv: int, da: int, seed: int
) -> tuple[Path, Path]:
    """``n`` videos as ``<name>__k.npy`` (k < 5) and ``<name>__vggish.npy`` with their two list files."""
    rng = np.random.default_rng(seed)
    tag = "test" if test else "train"
    rgb_dir, audio_dir = root / f"rgb_{tag}", root / f"audio_{tag}"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    audio_dir.mkdir(parents=True, exist_ok=True)
    rgb_lines, audio_lines = [], []
    for i in range(n):
        name = f"Film.{tag}.{i:05d}__#00-00-00_00-01-00_label_{CODES[i % len(CODES)]}"
        T = snippets + int(rng.integers(0, 4))
        for k in range(NUM_CROPS):
            path = rgb_dir / f"{name}__{k}.npy"
            np.save(path, rng.normal(size=(T, dv)).astype(np.float32))
            rgb_lines.append(str(path))
        path = audio_dir / f"{name}__vggish.npy"
        np.save(
            path, rng.normal(size=(T - int(i % 5 == 0), da)).astype(np.float32)
        )  # some one shorter
        audio_lines.append(str(path))
    prefix = "_test" if test else ""
    (root / f"rgb{prefix}.list").write_text("\n".join(rgb_lines) + "\n")
    (root / f"audio{prefix}.list").write_text("\n".join(audio_lines) + "\n")
    return root / f"rgb{prefix}.list", root / f"audio{prefix}.list"


def write_gt(root: Path, test_audio_list: Path, test_rgb_list: Path) -> Path:
    """gt.npy over the trimmed snippet counts (the official convention), violent frames in violent videos."""
    parts = []
    rgb = [Path(p) for p in test_rgb_list.read_text().split() if p.endswith("__0.npy")]
    for rgb_path, audio_path in zip(rgb, test_audio_list.read_text().split(), strict=True):
        T = min(
            np.load(rgb_path, mmap_mode="r").shape[0], np.load(audio_path, mmap_mode="r").shape[0]
        )
        y = np.zeros(T * FRAMES_PER_SNIPPET, dtype=np.float32)
        if "_label_A" not in rgb_path.name:
            y[: len(y) // 2] = 1
        parts.append(y)
    np.save(root / "gt.npy", np.concatenate(parts))
    return root / "gt.npy"


def measure(root: Path, n_train: int, n_test: int, args: argparse.Namespace) -> dict:
    feats = root / f"feats_{n_train + n_test}"
    rgb, audio = write_lists(
        feats, n_train, False, args.snippets, args.video_dim, args.audio_dim, 0
    )
    test_rgb, test_audio = write_lists(
        feats, n_test, True, args.snippets, args.video_dim, args.audio_dim, 1
    )
    gt = write_gt(feats, test_audio, test_rgb)
    store = root / f"store_{n_train + n_test}"
    tracemalloc.start()
    t = time.time()
    r = import_official(store, rgb, audio, test_rgb, test_audio, gt=gt, progress=not args.quiet)
    seconds = time.time() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    size = sum(p.stat().st_size for p in (store / "features").rglob("*.safetensors"))
    shutil.rmtree(feats)
    shutil.rmtree(store)
    return {
        "videos": r.written,
        "seconds": seconds,
        "peak_mib": peak / 2**20,
        "store_mib": size / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("/tmp/xdv_import"))
    p.add_argument(
        "--snippets", type=int, default=16, help="snippets per video (the real mean is about 250)"
    )
    p.add_argument("--video-dim", type=int, default=1024)
    p.add_argument("--audio-dim", type=int, default=128)
    p.add_argument(
        "--fractions", type=float, nargs="+", default=[0.1, 0.5, 1.0], help="of the full list sizes"
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    rows = [measure(args.out, round(TRAIN * f), round(TEST * f), args) for f in args.fractions]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n{'videos':>7s} {'seconds':>8s} {'ms/video':>9s} {'peak Python MiB':>16s} {'store MiB':>10s}"
    )
    for r in rows:
        ms = 1000 * r["seconds"] / r["videos"]
        print(
            f"{r['videos']:7d} {r['seconds']:8.1f} {ms:9.1f} {r['peak_mib']:16.1f} {r['store_mib']:10.0f}"
        )
    print(f"process peak resident memory: {rss:.0f} MiB (Python, numpy, torch imports included)")


if __name__ == "__main__":
    main()
