"""XD-Violence: label parsing, list files, import of official-format features, ground-truth alignment."""

from __future__ import annotations

import csv
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_FIXTURES

from avarnet.apps.xdv import (
    ANOMALY_CLASSES,
    FRAMES_PER_SNIPPET,
    XDV_CLASSES,
    GroundTruthError,
    XdvError,
    frame_truth,
    gt_layout,
    import_extracted,
    import_official,
    official_frame_count,
    pair_lists,
    parse_annotations,
    parse_label,
    recognition_store,
)
from avarnet.cli import main
from avarnet.config import FeatureSpec
from avarnet.store import Entry, FeatureStore, video_id

# Real test-set annotations from nwpu-zxr/VadCLIP `list/` (Apache-2.0), XD-Violence (Wu et al., ECCV 2020).
XD_FIXTURES = SHARED_FIXTURES / "xd-violence"
DV, DA = 16, 8  # tiny feature widths (official: 1024 I3D, 128 VGGish)


@dataclass
class FakeVideo:
    """One video in the official format: snippet counts, violent snippets (frame truth = 16 per snippet)."""

    name: str
    t_visual: int
    t_audio: int
    events: tuple[tuple[int, int], ...] = ()  # [start, end) in snippets


def snippet_features(
    v: FakeVideo, rng: np.random.Generator, signal: float = 2.5
) -> tuple[np.ndarray, np.ndarray]:
    """(t_visual, DV) visual and (t_audio, DA) audio features; violent snippets carry a shifted mean."""
    visual = rng.normal(0, 1, (v.t_visual, DV)).astype(np.float32)
    audio = rng.normal(0, 1, (v.t_audio, DA)).astype(np.float32)
    for s, e in v.events:
        visual[s:e, :4] += signal
        audio[s:e, :2] += signal
    return visual, audio


def write_official(
    root: Path,
    videos: list[FakeVideo],
    test: bool,
    crops: int = 5,
    seed: int = 0,
    list_all_crops: bool = True,
) -> tuple[Path, Path]:
    """Write ``<name>__<k>.npy`` crops (crop k = centre + k / 10), ``<name>__vggish.npy`` and the two list files."""
    rng = np.random.default_rng(seed)
    rgb_dir = root / ("RGBTest" if test else "RGB")
    audio_dir = root / ("audio_test" if test else "audio")
    rgb_dir.mkdir(parents=True, exist_ok=True)
    audio_dir.mkdir(parents=True, exist_ok=True)
    rgb_lines, audio_lines = [], []
    for v in videos:
        visual, audio = snippet_features(v, rng)
        for k in range(crops):
            np.save(rgb_dir / f"{v.name}__{k}.npy", visual + k / 10)
            if k == 0 or list_all_crops:
                rgb_lines.append(str(rgb_dir / f"{v.name}__{k}.npy"))
        np.save(audio_dir / f"{v.name}__vggish.npy", audio)
        audio_lines.append(str(audio_dir / f"{v.name}__vggish.npy"))
    prefix = "_test" if test else ""
    rgb_list, audio_list = root / f"rgb{prefix}.list", root / f"audio{prefix}.list"
    rgb_list.write_text("\n".join(rgb_lines) + "\n")
    audio_list.write_text("\n".join(audio_lines) + "\n")
    return rgb_list, audio_list


def official_gt(videos: list[FakeVideo]) -> np.ndarray:
    """Flat frame truth like the official gt.npy: 16 frames per (trimmed) snippet, test-list order."""
    parts = []
    for v in videos:
        y = np.zeros(min(v.t_visual, v.t_audio), dtype=np.float32)
        for s, e in v.events:
            y[s:e] = 1
        parts.append(np.repeat(y, FRAMES_PER_SNIPPET))
    return np.concatenate(parts)


TRAIN = [
    FakeVideo("Movie.A.2001__#00-01-00_00-02-00_label_A", 12, 12),
    FakeVideo("Movie.B.2002__#00-10-00_00-11-00_label_B1-B2-0", 10, 9, ((2, 5),)),
    FakeVideo("v=abc__#1_label_G-0-0", 8, 8, ((0, 3),)),
    FakeVideo("Movie.C.2003__#00-20-00_00-21-00_label_A", 9, 10),
]
TEST = [
    FakeVideo("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6", 11, 10, ((1, 4), (7, 9))),
    FakeVideo("Movie.D.2004__#00-05-00_00-06-00_label_A", 7, 7),
    FakeVideo("v=xyz__#2_label_B5-0-0", 6, 6, ((0, 6),)),
]


@pytest.fixture
def official(tmp_path: Path) -> dict:
    rgb, audio = write_official(tmp_path / "feats", TRAIN, test=False, seed=1)
    test_rgb, test_audio = write_official(tmp_path / "feats", TEST, test=True, seed=2)
    gt = tmp_path / "gt.npy"
    np.save(gt, official_gt(TEST))
    return {
        "rgb_list": rgb,
        "audio_list": audio,
        "test_rgb_list": test_rgb,
        "test_audio_list": test_audio,
        "gt": gt,
    }


def by_name(store: FeatureStore) -> dict[str, Entry]:
    return {e.extra["name"]: e for e in store.entries}


# -- labels and annotations --------------------------------------------------------------------


def test_parse_label_multi_codes_padding_and_normal():
    lab = parse_label("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6")
    assert lab.codes == ("G", "B2", "B6") and lab.label == "explosion" and lab.binary == 1
    assert lab.classes == ["explosion", "shooting", "car_accident"]
    assert parse_label("v=u5SF4SlqNDQ__#00-00-00_00-01-00_label_B4-0-0.mp4").codes == ("B4",)
    assert parse_label("x__#1_label_B2-B1-0").label == "shooting"
    normal = parse_label("Movie__#00-00-00_00-01-00_label_A")
    assert normal.label == "normal" and normal.binary == 0
    assert parse_label("x__#1_label_B6-0-0").label == "car_accident"


@pytest.mark.parametrize(
    "name", ["no_label_here", "x_label_B3-0-0", "x_label_0-0-0", "x_label_A-B1-0"]
)
def test_parse_label_rejects_bad_names(name):
    with pytest.raises(XdvError):
        parse_label(name)


def test_real_annotation_files_parse_and_match_the_test_list():
    spans = parse_annotations(XD_FIXTURES / "annotations.txt")
    coded = parse_annotations(XD_FIXTURES / "annotations_multiclasses.txt")
    assert len(spans) == len(coded) == 500
    assert all(parse_label(n).binary == 1 for n in spans)
    assert {s.code for v in coded.values() for s in v} == {"B1", "B2", "B4", "B5", "B6", "G"}
    same = [
        np.array_equal(frame_truth(spans[n], 20_000), frame_truth(coded[n], 20_000)) for n in spans
    ]
    assert (
        sum(same) >= 495
    )  # the per-class file splits and overlaps spans; the union agrees but for 5 videos
    assert all(s.start < s.end for v in spans.values() for s in v)
    with open(XD_FIXTURES / "xd_CLIP_rgbtest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [Path(r["path"]).name.removesuffix("__0.npy") for r in rows]
    assert len(names) == 800
    labels = [parse_label(n) for n in names]
    assert sum(lab.binary == 0 for lab in labels) == 300
    assert all(
        "-".join(lab.codes) == r["label"].replace("-0", "")
        for lab, r in zip(labels, rows, strict=True)
    )
    violent = {n for n, lab in zip(names, labels, strict=True) if lab.binary}
    assert violent == set(spans)  # every violent test video has exactly one annotation line
    assert {lab.label for lab in labels} == set(XDV_CLASSES)


def test_frame_truth_spans_are_end_exclusive_and_clipped(tmp_path):
    (tmp_path / "a.txt").write_text("v_label_B1-0-0.mp4 2 5 8 40\nw_label_G-0-0 G 0 1 B2 3 4\n")
    spans = parse_annotations(tmp_path / "a.txt")
    assert frame_truth(spans["v_label_B1-0-0"], 10).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 1, 1]
    assert [(s.code, s.start, s.end) for s in spans["w_label_G-0-0"]] == [("G", 0, 1), ("B2", 3, 4)]
    (tmp_path / "b.txt").write_text("v_label_B1-0-0 2 5 8\n")
    with pytest.raises(XdvError, match="b.txt:1"):
        parse_annotations(tmp_path / "b.txt")


def test_gt_layout_conventions_and_error():
    lay = gt_layout(16 * (3 + 5), trimmed=[3, 5], visual=[4, 5])
    assert lay.convention == "trimmed" and lay.offsets == (0, 48) and lay.kept == (48, 80)
    lay = gt_layout(16 * 9, trimmed=[3, 5], visual=[4, 5])
    assert lay.convention == "visual" and lay.offsets == (0, 64) and lay.kept == (48, 80)
    with pytest.raises(
        GroundTruthError, match=r"gt.npy has 100 frames.*8 snippets x 16 = 128 frames"
    ):
        gt_layout(100, trimmed=[3, 5], visual=[4, 5])


# -- list files --------------------------------------------------------------------------------


def test_lists_pair_by_name_and_find_lone_centre_crop_siblings(tmp_path):
    rgb, audio = write_official(tmp_path, TRAIN, test=False, list_all_crops=False)
    videos = pair_lists(rgb, audio, "train")
    assert [v.name for v in videos] == [v.name for v in TRAIN]
    assert all(len(v.crops) == 5 and v.crops[0].name.endswith("__0.npy") for v in videos)
    assert len(pair_lists(rgb, audio, "train", keep_crops=False)[0].crops) == 1


def test_mismatched_lists_name_the_odd_videos(tmp_path):
    rgb, audio = write_official(tmp_path, TRAIN, test=False)
    lines = audio.read_text().splitlines()
    audio.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(XdvError, match=r"4 vs 3 videos; 1 only in rgb.list.*Movie.C.2003"):
        pair_lists(rgb, audio, "train")


def test_missing_feature_file_is_a_clear_error(tmp_path, official):
    (official["test_audio_list"].parent / "audio_test" / f"{TEST[1].name}__vggish.npy").unlink()
    with pytest.raises(XdvError, match=r"feature file not found: .*Movie.D.2004.*__vggish.npy"):
        import_official(tmp_path / "store", **official, progress=False)
    assert not (tmp_path / "store").exists()  # nothing written before the inputs are checked


def test_features_root_finds_files_listed_under_foreign_paths(tmp_path):
    write_official(tmp_path / "here", TRAIN, test=False)
    for name in ("rgb.list", "audio.list"):
        p = tmp_path / "here" / name
        p.write_text(p.read_text().replace(str(tmp_path / "here"), "/data/someone/xd-feature"))
    with pytest.raises(XdvError, match="not found"):
        import_official(
            tmp_path / "s0",
            tmp_path / "here/rgb.list",
            tmp_path / "here/audio.list",
            progress=False,
        )
    r = import_official(tmp_path / "s1", tmp_path / "here/rgb.list", tmp_path / "here/audio.list",
                        features_root=tmp_path / "here", progress=False)  # fmt: skip
    assert r.written == len(TRAIN)


# -- import ------------------------------------------------------------------------------------


def test_import_official_with_gt(tmp_path, official):
    r = import_official(tmp_path / "store", **official, val_fraction=0.0, progress=False)
    assert r.written == 7 and r.trimmed == 3 and r.frame_level and r.gt_convention == "trimmed"
    store = FeatureStore.open(tmp_path / "store")
    assert store.info["dataset"] == "xd-violence" and store.info["classes"] == list(XDV_CLASSES)
    assert store.info["frame_level"] is True
    assert store.spec.video_dim == DV and store.spec.audio_dim == DA
    assert store.spec.segment_seconds == pytest.approx(16 / 24)
    e = by_name(store)
    b = e[TRAIN[1].name]
    assert (b.label, b.split, b.T, b.extra["codes"], b.extra["binary"]) == (
        "fighting",
        "train",
        9,
        ["B1", "B2"],
        1,
    )
    assert e[TRAIN[0].name].label == "normal" and e[TRAIN[0].name].extra["binary"] == 0
    assert e[TRAIN[3].name].T == 9  # audio one longer: its trailing snippet is dropped
    t = store.load(b)
    assert (
        t["video"].shape == (9, DV)
        and t["audio"].shape == (9, DA)
        and t["video_crops"].shape == (5, 9, DV)
    )
    raw = np.load(official["rgb_list"].parent / "RGB" / f"{TRAIN[1].name}__0.npy")
    np.testing.assert_array_equal(
        t["video"], raw[:9]
    )  # visual one longer: trailing snippet dropped
    np.testing.assert_allclose(t["video_crops"][3], raw[:9] + 0.3, atol=1e-6)
    assert "frame_labels" not in t  # training videos have video-level labels only
    tests = [e[v.name] for v in TEST]
    assert [x.split for x in tests] == ["test"] * 3
    gt = official_gt(TEST)
    got = np.concatenate([store.load(x)["frame_labels"] for x in tests])
    np.testing.assert_array_equal(got, gt)
    first = store.load(tests[0])["frame_labels"]
    assert (
        len(first) == 10 * 16
        and first[16:64].all()
        and not first[:16].any()
        and first[112:144].all()
    )


def test_import_official_holds_out_a_seeded_validation_split(tmp_path, official):
    many = [FakeVideo(f"M{i}__#1_label_{'A' if i % 2 else 'B1-0-0'}", 4, 4) for i in range(60)]
    rgb, audio = write_official(tmp_path / "many", many, test=False)
    import_official(tmp_path / "a", rgb, audio, val_fraction=0.25, seed=3, progress=False)
    import_official(tmp_path / "b", rgb, audio, val_fraction=0.25, seed=3, progress=False)
    a, b = FeatureStore.open(tmp_path / "a"), FeatureStore.open(tmp_path / "b")
    assert [e.split for e in a.entries] == [e.split for e in b.entries]
    assert 5 <= len(a.split("val")) <= 25 and len(a.split("train")) + len(a.split("val")) == 60


def test_import_is_resumable(tmp_path, official):
    import_official(tmp_path / "store", **official, progress=False)
    again = import_official(tmp_path / "store", **official, progress=False)
    assert again.written == 0 and again.skipped == 7


def test_gt_with_the_visual_snippet_count_is_aligned_too(tmp_path, official):
    parts = []
    for v in TEST:
        y = np.zeros(v.t_visual)
        for s, e in v.events:
            y[s:e] = 1
        parts.append(np.repeat(y, 16))
    np.save(official["gt"], np.concatenate(parts))
    r = import_official(tmp_path / "store", **official, progress=False)
    assert r.gt_convention == "visual"
    store = FeatureStore.open(tmp_path / "store")
    got = np.concatenate([store.load(by_name(store)[v.name])["frame_labels"] for v in TEST])
    np.testing.assert_array_equal(got, official_gt(TEST))


def test_wrong_length_gt_is_a_clear_error(tmp_path, official):
    np.save(official["gt"], official_gt(TEST)[:-16])
    with pytest.raises(
        GroundTruthError,
        match=r"gt.npy has 352 frames, but the 3 test videos have 23 snippets x 16 = 368",
    ):
        import_official(tmp_path / "store", **official, progress=False)
    assert main(["-q", "xdv", "import", "--out", str(tmp_path / "s2"), "--rgb-list", str(official["rgb_list"]),
                 "--audio-list", str(official["audio_list"]), "--test-rgb-list", str(official["test_rgb_list"]),
                 "--test-audio-list", str(official["test_audio_list"]), "--gt", str(official["gt"])]) == 2  # fmt: skip


def test_gt_in_another_video_order_is_caught(tmp_path, official):
    np.save(official["gt"], official_gt([TEST[2], TEST[1], TEST[0]]))  # same length, other order
    with pytest.raises(GroundTruthError, match="normal video"):
        import_official(tmp_path / "store", **official, progress=False)


def test_import_official_with_annotations(tmp_path, official):
    ann = tmp_path / "annotations.txt"
    lines = []
    for v in TEST:
        if v.events:
            lines.append(" ".join([v.name] + [f"{s * 16} {e * 16}" for s, e in v.events]))
    ann.write_text("\n".join(lines) + "\n")
    kwargs = {k: v for k, v in official.items() if k != "gt"}
    import_official(tmp_path / "store", **kwargs, annotations=ann, progress=False)
    store = FeatureStore.open(tmp_path / "store")
    got = np.concatenate([store.load(by_name(store)[v.name])["frame_labels"] for v in TEST])
    np.testing.assert_array_equal(got, official_gt(TEST))
    ann.write_text(lines[0] + "\n")  # the other violent test video has no line
    with pytest.raises(GroundTruthError, match=r"no line for 1 violent test videos"):
        import_official(tmp_path / "s2", **kwargs, annotations=ann, progress=False)


def test_snippet_counts_far_apart_are_rejected(tmp_path):
    rgb, audio = write_official(tmp_path, [FakeVideo("x__#1_label_A", 10, 7)], test=False)
    with pytest.raises(XdvError, match="10 snippets and audio 7"):
        import_official(tmp_path / "store", rgb, audio, progress=False)


def test_no_crops_keeps_the_centre_crop_only(tmp_path, official):
    import_official(tmp_path / "store", **official, keep_crops=False, progress=False)
    store = FeatureStore.open(tmp_path / "store")
    assert "video_crops" not in store.load(store.entries[0])


# -- streaming ---------------------------------------------------------------------------------


STREAM_T = 512  # snippets per video: each video's features (~180 KB) outweigh its bookkeeping


def _peak_import_bytes(root: Path, n: int) -> int:
    videos = [
        FakeVideo(f"Film.{i:04d}__#1_label_{'A' if i % 3 else 'B2-0-0'}", STREAM_T, STREAM_T)
        for i in range(n)
    ]
    rgb, audio = write_official(root / "feats", videos, test=False, crops=5)
    tracemalloc.start()
    import_official(root / "store", rgb, audio, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_import_streams_with_bounded_memory_and_shows_progress(tmp_path, capsys, fresh_gc):
    per_video = STREAM_T * (5 * DV + DA) * 4  # bytes of one video's features
    peak_small = _peak_import_bytes(tmp_path / "a", 20)
    peak_big = _peak_import_bytes(tmp_path / "b", 80)
    growth = (peak_big - peak_small) / 60
    assert growth < 0.1 * per_video  # extra videos add bookkeeping (names, index), not features
    assert peak_big < 0.1 * per_video * 80  # far below holding every video's features
    rgb = tmp_path / "a" / "feats" / "rgb.list"
    import_official(tmp_path / "c", rgb, tmp_path / "a" / "feats" / "audio.list", progress=True)
    err = capsys.readouterr().err
    assert "xdv import" in err and "20/20" in err


# -- stores made by `avarnet extract` ----------------------------------------------------------


def fake_extracted(
    root: Path, videos: list[tuple[str, str, int]], fps: float = 25.0, seg: float = 0.64
) -> FeatureStore:
    """A store as extract writes it for DATA/<train|test>/<name>.mp4 (folder = 'class')."""
    spec = FeatureSpec(weights="random", video_dim=DV, audio_dim=DA, segment_seconds=seg)
    store = FeatureStore.create(root, spec, {"classes": ["test", "train"]})
    rng = np.random.default_rng(0)
    for folder, name, T in videos:
        rel = f"{folder}/{name}.mp4"
        vid = video_id(rel)
        e = Entry(vid, f"features/{vid}.safetensors", folder, "train", rel, T * seg, fps, True, T)
        store.write(e, {"video": rng.normal(size=(T, DV)).astype(np.float32),
                        "audio": rng.normal(size=(T, DA)).astype(np.float32), "audio_mask": np.ones(T, bool)})  # fmt: skip
    return store


def test_import_extracted_relabels_splits_and_builds_frame_truth(tmp_path):
    vids = [("train", "T1__#1_label_A", 10), ("train", "T2__#1_label_B4-G-0", 12), ("test", "E1__#1_label_B6-0-0", 10),
            ("test", "E2__#1_label_A", 8)]  # fmt: skip
    fake_extracted(tmp_path / "raw", vids)
    ann = tmp_path / "annotations.txt"
    ann.write_text("E1__#1_label_B6-0-0.mp4 16 48 130 400\n")
    r = import_extracted(
        tmp_path / "raw", tmp_path / "xd", annotations=ann, val_fraction=0.0, progress=False
    )
    assert r.written == 4 and r.frame_level
    store = FeatureStore.open(tmp_path / "xd")
    e = by_name(store)
    assert e["T2__#1_label_B4-G-0"].label == "riot" and e["T2__#1_label_B4-G-0"].extra["codes"] == [
        "B4",
        "G",
    ]
    assert e["E1__#1_label_B6-0-0"].split == "test" and e["T1__#1_label_A"].split == "train"
    y = store.load(e["E1__#1_label_B6-0-0"])["frame_labels"]
    # 10 snippets of 0.64 s at 25 fps = 160 frames; the official grid keeps 16 * floor(159 / 16)
    assert len(y) == 144 and y[16:48].all() and y[130:].all() and not y[:16].any()
    assert y.sum() == 32 + 14
    assert not store.load(e["E2__#1_label_A"])["frame_labels"].any()
    assert "frame_labels" not in store.load(e["T2__#1_label_B4-G-0"])


def test_import_extracted_needs_labelled_names(tmp_path):
    fake_extracted(tmp_path / "raw", [("train", "no_labels_here", 5)])
    with pytest.raises(XdvError, match="no '_label_<codes>' part"):
        import_extracted(tmp_path / "raw", tmp_path / "xd", progress=False)


def test_recognition_store_keeps_violent_videos_with_six_classes(tmp_path, official):
    import_official(tmp_path / "store", **official, progress=False)
    r = recognition_store(tmp_path / "store", tmp_path / "rec", progress=False)
    rec = FeatureStore.open(tmp_path / "rec")
    assert rec.classes == list(ANOMALY_CLASSES) and len(ANOMALY_CLASSES) == 6
    assert r.written == 4 and {e.label for e in rec.entries} == {"fighting", "explosion", "abuse"}
    assert set(rec.load(rec.entries[0])) == {"video", "audio", "audio_mask"}
    assert rec.info["frame_level"] is False


def test_recognition_store_trains_and_evaluates_like_our_datasets(tmp_path, official):
    from avarnet.config import TrainConfig
    from avarnet.evaluate import evaluate
    from avarnet.train import train

    import_official(tmp_path / "store", **official, val_fraction=0.0, progress=False)
    recognition_store(tmp_path / "store", tmp_path / "rec", progress=False)
    cfg = TrainConfig(epochs=1, seq_len=4, device="cpu")
    tiny = {"hidden": 8, "stages": 1, "layers": 2, "heads": 2}
    run = train(tmp_path / "rec", tmp_path / "run", cfg, model_overrides=tiny, progress=False)
    m = evaluate(run.checkpoint, tmp_path / "rec", split="test")
    assert m["classes"] == list(ANOMALY_CLASSES) and m["n"] == 2 and "frame_ap" not in m
    assert {"accuracy", "f1", "ap", "per_class", "confusion_matrix"} <= set(m)


def test_unreadable_gt_is_a_clear_error(tmp_path, official):
    official["gt"].write_bytes(b"not a numpy file")
    with pytest.raises(XdvError, match="cannot read .*gt.npy"):
        import_official(tmp_path / "store", **official, progress=False)


def test_cli_import_official(tmp_path, official, capsys):
    args = ["-q", "xdv", "import", "--out", str(tmp_path / "s")]
    for k, v in official.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    assert main(args) == 0
    assert "imported 7" in capsys.readouterr().out
    assert (
        main(
            [
                "-q",
                "xdv",
                "import",
                "--out",
                str(tmp_path / "s3"),
                "--rgb-list",
                str(official["rgb_list"]),
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    "frames, kept",
    [(2, 2), (16, 16), (17, 16), (18, 16), (32, 16), (33, 32), (160, 144), (161, 160), (1000, 992),
     (24 * 60 * 5 + 7, 7200)],
)  # fmt: skip
def test_official_truth_grid_is_16_times_floor_of_frames_minus_one_over_16(frames, kept):
    assert official_frame_count(frames) == kept
    if frames > 16:  # the make_gt.py formula itself
        assert kept == 16 * ((frames - 1) // 16)


def test_extracted_truth_follows_the_official_grid_for_several_lengths(tmp_path):
    # 16-frame snippets at 24 fps (0.666667 s, as docs/xd-violence.md says to extract)
    seg, counts = 16 / 24, (1, 2, 7, 31, 100)
    vids = [("test", f"V{T}__#1_label_B1-0-0", T) for T in counts]
    fake_extracted(tmp_path / "raw", vids, fps=24.0, seg=seg)
    ann = tmp_path / "annotations.txt"
    ann.write_text("".join(f"V{T}__#1_label_B1-0-0 0 100000\n" for T in counts))
    import_extracted(tmp_path / "raw", tmp_path / "xd", annotations=ann, progress=False)
    store = FeatureStore.open(tmp_path / "xd")
    for e in store.entries:
        frames = round(e.duration * e.fps)  # 16 T
        y = store.load(e)["frame_labels"]
        expected = 16 * ((frames - 1) // 16) if frames > 16 else frames
        assert len(y) == expected and y.all(), (e.T, len(y))


def test_cli_import_of_a_non_utf8_list_is_one_line_exit_2(tmp_path, official, capsys):
    bad = tmp_path / "latin1.list"
    bad.write_bytes("/data/Caf\xe9__#1_label_A__0.npy\n".encode("latin-1"))
    args = ["-q", "xdv", "import", "--out", str(tmp_path / "s"), "--rgb-list", str(bad),
            "--audio-list", str(official["audio_list"])]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not UTF-8" in err and "latin1.list" in err
    assert "Traceback" not in err
    ann = tmp_path / "ann.txt"
    ann.write_bytes(b"V\xff 1 2\n")
    with pytest.raises(XdvError, match="annotation file .* is not UTF-8"):
        parse_annotations(ann)
