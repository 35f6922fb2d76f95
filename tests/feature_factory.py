"""Feature stores with a known class signal, for tests that need no backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avarnet.config import FeatureSpec
from avarnet.store import Entry, FeatureStore, video_id

DV, DA = 12, 8  # tiny video / audio feature widths


def make_store(
    root: Path,
    classes=("abuse", "crash", "normal"),
    per_class: int = 9,
    T=(6, 14),
    seed: int = 0,
    no_audio_every: int = 0,
) -> FeatureStore:
    """Video features carry class // 2 signal, audio features class % 2 signal (both needed to tell all apart)."""
    rng = np.random.default_rng(seed)
    spec = FeatureSpec(
        weights="random",
        video_dim=DV,
        audio_dim=DA,
        video_backbone="tiny-v",
        audio_backbone="tiny-a",
    )
    store = FeatureStore.create(
        root, spec, {"classes": list(classes), "data_root": str(root / "data")}
    )
    v_means = rng.normal(0, 1, (len(classes), DV))
    a_means = rng.normal(0, 1, (len(classes), DA))
    n = 0
    for k, cls in enumerate(classes):
        for i in range(per_class):
            t = int(rng.integers(T[0], T[1] + 1))
            split = "test" if i % 3 == 0 else "val" if i % 3 == 1 and i < 3 else "train"
            rel = f"{cls}/{cls}_{i:03d}.mp4"
            vid = video_id(rel)
            video = (v_means[k] + rng.normal(0, 0.7, (t, DV))).astype(np.float32)
            audio = (a_means[k] + rng.normal(0, 0.7, (t, DA))).astype(np.float32)
            mask = np.ones(t, dtype=bool)
            n += 1
            if no_audio_every and n % no_audio_every == 0:
                audio[:] = 0
                mask[:] = False
            entry = Entry(
                vid,
                f"features/{vid}.safetensors",
                cls,
                split,
                rel,
                float(t),
                12.0,
                bool(mask.any()),
                t,
            )
            store.write(entry, {"video": video, "audio": audio, "audio_mask": mask})
    return store
