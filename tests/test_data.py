import numpy as np
import pytest
import torch
from feature_factory import make_store

from avarnet.data import (
    IGNORE_INDEX,
    DatasetError,
    Normalizer,
    WindowDataset,
    collate,
    discover_dataset,
    drop_modality,
    load_clips,
    stratified_split,
    window_starts,
)


def test_stratified_split_is_deterministic_and_covers_every_class():
    labels = [c for c in "abc" for _ in range(10)]
    s1, s2 = stratified_split(labels, 3), stratified_split(labels, 3)
    assert s1 == s2 and s1 != stratified_split(labels, 4)
    for c in "abc":
        got = [s for s, lab in zip(s1, labels, strict=True) if lab == c]
        assert got.count("test") == 2 and got.count("val") == 2 and got.count("train") == 6


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")


def test_discover_dataset_layout_and_splits_csv(tmp_path):
    for c in ("crash", "normal"):
        for i in range(5):
            _touch(tmp_path / c / f"{c}{i}.mp4")
    _touch(tmp_path / "crash" / "notes.txt")  # not a media file: ignored
    items, classes = discover_dataset(tmp_path, seed=1)
    assert classes == ["crash", "normal"] and len(items) == 10
    assert {it.split for it in items} == {"train", "val", "test"}
    rows = ["path,split"] + [f"{it.rel_path},train" for it in items]
    (tmp_path / "splits.csv").write_text("\n".join(rows))
    items2, _ = discover_dataset(tmp_path)
    assert {it.split for it in items2} == {"train"}
    (tmp_path / "splits.csv").write_text("path,split\ncrash/crash0.mp4,train\n")
    with pytest.raises(DatasetError, match="no split"):
        discover_dataset(tmp_path)


def test_discover_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no videos"):
        discover_dataset(tmp_path)


@pytest.mark.parametrize(
    ("T", "L", "stride", "expected"),
    [(3, 10, 5, [0]), (10, 10, 5, [0]), (12, 10, 5, [0, 2]), (20, 10, 5, [0, 5, 10])],
)
def test_window_starts(T, L, stride, expected):
    assert window_starts(T, L, stride) == expected


def test_windows_pad_and_mask(tmp_path):
    store = make_store(tmp_path / "s", per_class=3, T=(4, 4))
    clips = load_clips(store, store.entries, "fused", store.classes, None)
    ds = WindowDataset(clips, seq_len=10, stride=5)
    b = collate([ds[0], ds[1]])
    assert b["x"].shape == (2, 10, 20) and b["mask"].shape == (2, 10)
    assert b["mask"][0].tolist() == [True] * 4 + [False] * 6
    assert (b["y"][0, 4:] == IGNORE_INDEX).all() and (b["x"][0, 4:] == 0).all()


def test_normalizer_keeps_missing_audio_at_zero(tmp_path):
    store = make_store(tmp_path / "s", per_class=3, no_audio_every=2)
    clips_raw = load_clips(store, store.entries, "fused", store.classes, None)
    norm = Normalizer.fit([c.x for c in clips_raw])
    clips = load_clips(store, store.entries, "fused", store.classes, norm)
    silent = [c for c in clips if not c.entry.has_audio]
    assert silent and all((c.x[:, 12:] == 0).all() for c in silent)
    assert all(np.abs(c.x[:, :12]).sum() > 0 for c in silent)


def test_drop_modality_blanks_one_sense_per_window():
    x = torch.ones(200, 3, 5)
    y = drop_modality(x, video_dim=2, p=0.5, generator=torch.Generator().manual_seed(0))
    video_blank = (y[:, :, :2] == 0).all(dim=(1, 2))
    audio_blank = (y[:, :, 2:] == 0).all(dim=(1, 2))
    assert not (video_blank & audio_blank).any()
    assert 60 < int((video_blank | audio_blank).sum()) < 140
    assert torch.equal(drop_modality(x, 2, 0.0), x)
