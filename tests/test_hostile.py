"""Hostile input: crafted media, damaged checkpoints and stores, bad options.

Every case answers with one clear line and the documented exit code (0 success, 1 partial
failure, 2 usage or input error, 3 a defect of avarnet), keeps memory bounded, and never lets
NaN or infinity reach statistics, alerts or JSON. The hostile corpus is generated here; no
binary is checked in.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import media_factory as mf
import numpy as np
import pytest
import torch
from conftest import (
    error_lines,
    extract_argv,
    predict_argv,
    rewrite_checkpoint,
    run_capped,
    strict_load,
)
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy

from avarnet import alerts, media
from avarnet.alerts import AlertRule, AlertTracker, WebhookPoster
from avarnet.checkpoint import load_checkpoint
from avarnet.cli import main
from avarnet.data import read_splits_csv, scan_dataset
from avarnet.errors import NonFiniteError
from avarnet.store import INDEX_FILE, Entry, FeatureStore

# ------------------------------------------------------------------------- hostile media


def _mkv_video(container, n: int = 20, size=(64, 48), pts=None):
    v = container.add_stream("libx264", rate=10)
    v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
    return v, [(i if pts is None else pts[i]) for i in range(n)]


def _encode_frames(container, stream, times, size) -> None:
    for i, t in enumerate(times):
        frame = av.VideoFrame.from_ndarray(
            np.full((size[1], size[0], 3), (40 + 9 * i) % 256, np.uint8), "rgb24"
        )
        frame.pts = t
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def non_finite_audio(path: Path, value: float) -> Path:
    """2 s of video with float PCM audio where every 7th sample is ``value`` (NaN or inf)."""
    with av.open(str(path), "w", format="matroska") as c:
        v, times = _mkv_video(c)
        a = c.add_stream("pcm_f32le", rate=16_000, layout="mono")
        _encode_frames(c, v, times, (64, 48))
        x = mf.tone(2.0, 16_000)
        x[::7] = value
        for s in range(0, x.size, 1600):
            frame = av.AudioFrame.from_ndarray(x[None, s : s + 1600], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 16_000, s
            c.mux(a.encode(frame))
        c.mux(a.encode(None))
    return path


def extreme_aspect(path: Path, size: tuple[int, int]) -> Path:
    """16 frames of width x height (e.g. 4000 x 2): a few KB."""
    with av.open(str(path), "w", format="mp4") as c:
        v, times = _mkv_video(c, 16, size)
        _encode_frames(c, v, times, size)
    return path


def declared_duration(path: Path, seconds: float = 1e9) -> Path:
    """A 2-s Matroska file whose header declares ``seconds``."""
    with av.open(str(path), "w", format="matroska") as c:
        v, times = _mkv_video(c)
        _encode_frames(c, v, times, (64, 48))
    data = bytearray(path.read_bytes())
    i = data.find(b"\x44\x89\x88")  # Segment Info / Duration, an 8-byte float in milliseconds
    assert i > 0, "no 8-byte Duration element"
    data[i + 3 : i + 11] = struct.pack(">d", seconds * 1000)
    path.write_bytes(bytes(data))
    return path


def timestamp_gap(path: Path, gap_s: float = 60.0) -> Path:
    """4 frames at 10 fps with one jump of ``gap_s`` seconds."""
    with av.open(str(path), "w", format="matroska") as c:
        v, _ = _mkv_video(c, 4)
        _encode_frames(c, v, [0, 1, round(gap_s * 10), round(gap_s * 10) + 1], (64, 48))
    return path


def hostile_corpus(folder: Path) -> dict[str, tuple[Path, set[int]]]:
    """name -> (path, exit codes `predict` may give); 2 means refused with one line."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "folder.mp4").mkdir()
    ok, bad = {0}, {2}
    return {
        "nan_audio": (non_finite_audio(folder / "nan_audio.mkv", np.nan), ok),
        "inf_audio": (non_finite_audio(folder / "inf_audio.mkv", np.inf), ok),
        "wide": (extreme_aspect(folder / "wide_4000x2.mp4", (4000, 2)), ok),
        "tall": (extreme_aspect(folder / "tall_2x4000.mp4", (2, 4000)), ok),
        "declared_1e9": (declared_duration(folder / "declared_1e9.mkv"), ok),
        "gap": (timestamp_gap(folder / "gap.mkv"), ok),
        "broken_tail": (mf.truncated_tail_mp4(folder), ok),
        "unicode": (mf.unicode_name_clip(folder), ok),
        "empty": (mf.empty_file(folder), bad),
        "text": (mf.text_as_mp4(folder), bad),
        "noise": (mf.random_bytes_mp4(folder), bad),
        "truncated": (mf.truncated_mp4(folder), bad),
        "audio_only": (mf.audio_only(folder), bad),
        "zero_length": (mf.zero_length_video(folder), bad),
        "directory": (folder / "folder.mp4", bad),
    }


# ------------------------------------------------------------------------------ helpers


def clip(path: Path, seconds: float) -> Path:
    """An indexed test clip; its folder is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return mf.clip(path, seconds=seconds)


def avarnet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_capped([sys.executable, "-m", "avarnet", "-q", *args], cwd=cwd)


DRIVER = """
import contextlib, io, json, logging, sys
import torch
torch.set_num_threads(1)
from avarnet.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    logging.getLogger().handlers.clear()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
print(json.dumps(results))
"""


def run_many(tmp_path: Path, argvs: list[list[str]]) -> list[dict]:
    """Run several CLI invocations in ONE capped subprocess (one torch import), stderr per call."""
    r = run_capped([sys.executable, "-c", DRIVER, json.dumps(argvs)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def no_crash(stderr: str) -> None:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]


@pytest.fixture(scope="module")
def ckpt_path(tiny_ckpt_path) -> Path:
    return tiny_ckpt_path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, set[int]]]:
    return hostile_corpus(tmp_path_factory.mktemp("hostile"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


# ------------------------------------------------- 1. non-finite audio, 2. norm.std, 3. metrics


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_audio_is_sanitised_at_decode_with_one_warning(value, tmp_path, caplog):
    path = non_finite_audio(tmp_path / "x.mkv", value)
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        audio = media.load_audio(path)
    assert audio.size == 32_000 and np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    expected = 0.0 if np.isnan(value) else float(np.sign(value))
    assert audio[7] == expected  # NaN -> silence, +-inf -> full scale
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_store_refuses_non_finite_features(tmp_path):
    from avarnet.config import FeatureSpec

    store = FeatureStore.create(
        tmp_path / "s", FeatureSpec(video_dim=2, audio_dim=2), {"classes": ["a"]}
    )
    entry = Entry("v", "features/v.safetensors", "a", "train", "a/v.mp4", 1.0, 10.0, True, 1)
    bad = {"video": np.array([[np.nan, 0]], np.float32), "audio": np.zeros((1, 2), np.float32)}
    with pytest.raises(NonFiniteError, match="a/v.mp4"):
        store.write(entry, bad)
    assert store.entries == [] and not (tmp_path / "s" / "features" / "v.safetensors").exists()


def _store_with_nan_entry(root: Path) -> Path:
    """A store (as an older version could write) whose every training clip holds NaN features."""
    from feature_factory import make_store

    store = make_store(root, per_class=3)
    for e in store.split("train") + store.split("val"):
        t = store.load(e)
        t["audio"][0, 0] = np.nan
        save_numpy(t, str(root / e.file), metadata={"entry": json.dumps(e.to_dict())})
    return root


def train_two_epochs(feats: Path, run: Path) -> int:
    return main(["-q", "train", str(feats), "--out", str(run), "--epochs", "2", "--device", "cpu"])


def test_train_on_non_finite_features_fails_with_one_line_and_no_success_claim(tmp_path, capsys):
    feats = _store_with_nan_entry(tmp_path / "feats")
    code = train_two_epochs(feats, tmp_path / "run")
    cap = capsys.readouterr()
    assert code == 2 and "best epoch" not in cap.out
    lines = error_lines(cap.err, "train")
    assert len(lines) == 1 and "NaN" in lines[0] and ".safetensors" in lines[0]
    assert not (tmp_path / "run" / "best.ckpt").exists()


def test_train_never_reports_success_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    from feature_factory import make_store

    from avarnet import train as train_module

    feats = make_store(tmp_path / "feats", per_class=3).root
    monkeypatch.setattr(train_module, "evaluate_loss", lambda *a, **k: (float("nan"), 0.0))
    code = train_two_epochs(feats, tmp_path / "run")
    cap = capsys.readouterr()
    assert code == 2 and "best epoch" not in cap.out and "no checkpoint written" in cap.err
    assert not (tmp_path / "run" / "best.ckpt").exists()
    history = strict_load((tmp_path / "run" / "history.json").read_text())
    assert history[0]["val_loss"] is None  # strict JSON: NaN is null


def test_non_finite_scores_never_open_an_alert():
    tracker = AlertTracker(AlertRule(threshold=0.5, min_segments=2, close_segments=2))
    updates = [
        u for t in range(6) for u in tracker.update(t, t + 1, float("nan"), {"crash": float("nan")})
    ]
    assert updates == [] and tracker.events == []
    for t, s in enumerate([0.9, 0.8, float("nan"), float("inf"), 0.2]):
        tracker.update(t, t + 1, s, {"crash": s})
    (event,) = tracker.events
    assert event.end == 2.0 and event.peak_score == 0.9 and event.record()["peak_score"] == 0.9
    assert np.isfinite(event.class_mass["crash"])


# --------------------------------------------------------- 4. silent drops, 5. resume, 16. BOM


def test_scan_reports_unreadable_folders_loops_and_ignores_a_folder_named_like_a_video(
    tmp_path, monkeypatch
):
    data = tmp_path / "data"
    clip(data / "crash" / "a.mp4", seconds=1.0)
    clip(data / "crash" / "deep" / "b.mp4", seconds=1.0)
    (data / "crash" / "dir.mp4").mkdir()
    (data / "crash" / "loop").symlink_to(data / "crash")
    (data / "crash" / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (data / "locked").mkdir()
    real_walk = os.walk

    def walk(top, onerror=None, followlinks=False):  # root reads everything: simulate a 0700 folder
        if Path(top).name == "locked":
            onerror(PermissionError(errno.EACCES, "Permission denied", str(top)))
            return iter(())
        return real_walk(top, onerror=onerror, followlinks=followlinks)

    monkeypatch.setattr("avarnet.data.os.walk", walk)
    scan = scan_dataset(data)
    assert [i.rel_path for i in scan.items] == ["crash/a.mp4", "crash/deep/b.mp4"]
    assert scan.classes == ["crash", "locked"]  # an unreadable class folder is still a class
    problems = dict(scan.problems)
    assert set(problems) == {"crash/loop", "crash/dangling.mp4", "locked"}
    assert "loop" in problems["crash/loop"] and "Permission denied" in problems["locked"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without read permission")
def test_scan_reports_a_folder_without_read_permission(tmp_path):
    data = tmp_path / "data"
    clip(data / "crash" / "a.mp4", seconds=1.0)
    (data / "pain").mkdir()
    (data / "pain").chmod(0)
    try:
        scan = scan_dataset(data)
    finally:
        (data / "pain").chmod(0o755)
    assert scan.classes == ["crash", "pain"] and "pain" in dict(scan.problems)


def test_extract_lists_unscannable_folders_as_failures(
    tiny_backbones, tmp_path, capsys, monkeypatch
):
    data = tmp_path / "data"
    for c in ("crash", "pain"):
        clip(data / c / "a.mp4", seconds=1.0)
    (data / "crash" / "loop").symlink_to(data / "crash")
    code = main(extract_argv(tiny_backbones, data, tmp_path / "feats", "--workers", "0"))
    out = capsys.readouterr().out
    assert code == 1 and "extracted 2" in out and "failed 1" in out
    assert "failed: crash/loop: symbolic link loop" in out


def test_extract_records_non_finite_features_as_a_failure(
    tiny_backbones, tmp_path, capsys, monkeypatch
):
    from avarnet.extract import Extractor

    data = tmp_path / "data"
    for name in ("crash/a.mp4", "crash/b.mp4", "pain/a.mp4"):
        clip(data / name, seconds=1.0)
    original = Extractor.__call__

    def overflowing(self, path):  # an encoder that overflows on one input
        tensors, info = original(self, path)
        if Path(path).name == "b.mp4":
            tensors["video"][0, 0] = np.inf
        return tensors, info

    monkeypatch.setattr(Extractor, "__call__", overflowing)
    assert main(extract_argv(tiny_backbones, data, tmp_path / "feats", "--workers", "0")) == 1
    out = capsys.readouterr().out
    assert "extracted 2" in out and "failed: crash/b.mp4: features hold NaN or infinity" in out
    assert "crash/b.mp4" in {f["path"] for f in FeatureStore.open(tmp_path / "feats").failures}


def test_resume_after_adding_a_class_folder_is_refused_in_one_line(
    tiny_backbones, tmp_path, capsys
):
    data = tmp_path / "data"
    for c in ("crash", "pain"):
        clip(data / c / "a.mp4", seconds=1.0)
    assert main(extract_argv(tiny_backbones, data, tmp_path / "feats", "--workers", "0")) == 0
    clip(data / "normal" / "a.mp4", seconds=1.0)
    capsys.readouterr()
    assert main(extract_argv(tiny_backbones, data, tmp_path / "feats", "--workers", "0")) == 2
    lines = error_lines(capsys.readouterr().err, "extract")
    assert len(lines) == 1 and "['normal']" in lines[0]
    store = FeatureStore.open(tmp_path / "feats")
    assert {e.label for e in store.entries} == {"crash", "pain"}


def test_train_on_a_store_with_an_unlisted_class_is_one_line(tmp_path, capsys):
    from feature_factory import make_store

    store = make_store(tmp_path / "feats", per_class=3)
    e = store.split("train")[0]
    store.write(
        Entry(**{**e.__dict__, "id": "x", "file": "features/x.safetensors", "label": "ghost"}),
        store.load(e),
    )
    assert (
        main(["-q", "train", str(store.root), "--out", str(tmp_path / "r"), "--epochs", "1"]) == 2
    )
    lines = error_lines(capsys.readouterr().err, "train")
    assert len(lines) == 1 and "ghost" in lines[0]


def test_splits_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "splits.csv"
    path.write_bytes("path,split\r\ncrash/a.mp4,train\r\n".encode("utf-8-sig"))
    assert read_splits_csv(path) == {"crash/a.mp4": "train"}


# ----------------------------------------------------------- 6., 7. memory from tiny files


@pytest.mark.parametrize("size", [(4000, 2), (2, 4000)])
def test_extreme_aspect_ratio_frames_stay_small(size, tmp_path):
    path = extreme_aspect(tmp_path / "x.mp4", size)
    frames = list(media.read_frames(path, [0.0, 1.0], shortest_edge=288))
    for f in frames:
        assert min(f.shape[:2]) == 288 and max(f.shape[:2]) == round(288 * media.MAX_ASPECT_RATIO)


def test_a_batch_of_extreme_aspect_frames_fits_in_the_memory_cap(tmp_path):
    path = extreme_aspect(
        tmp_path / "wide.mp4", (4000, 2)
    )  # MobileViT's 288-pixel short side, 16 frames
    code = (
        "import sys, numpy as np; from avarnet import media; "
        "b = np.stack(list(media.read_frames(sys.argv[1], [i / 10 for i in range(16)], 288))); print(b.shape)"
    )
    r = run_capped([sys.executable, "-c", code, str(path)])
    assert r.returncode == 0 and "(16, 288, 2304, 3)" in r.stdout, r.stderr[-2000:]


def test_declared_duration_is_checked_against_the_stream(tmp_path, caplog):
    path = declared_duration(tmp_path / "x.mkv", 1e9)
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        info = media.probe(path)
    assert info.duration == pytest.approx(2.0, abs=0.15) and info.num_frames == 20
    assert any("declares" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- 11. torn index


def test_torn_last_index_line_inside_a_utf8_character_is_skipped(tmp_path, caplog, capsys):
    from feature_factory import make_store

    store = make_store(tmp_path / "feats", per_class=3)
    n = len(store.entries)
    line = json.dumps(
        {"id": "ünï", "label": "crash", "source": "crash/日本.mp4"}, ensure_ascii=False
    ).encode()
    cut = line.index("日".encode()) + 1  # inside a 3-byte character
    with open(tmp_path / "feats" / INDEX_FILE, "ab") as f:
        f.write(line[:cut])
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        assert len(FeatureStore.open(tmp_path / "feats").entries) == n
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    assert (
        main(
            ["-q", "train", str(tmp_path / "feats"), "--out", str(tmp_path / "r"), "--epochs", "1"]
        )
        == 0
    )


# ------------------------------------------------------------------- 14. exit codes, options


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "F", "--out", "R", "--seq-len", "0"], "--seq-len"),
        (["extract", "D", "--out", "F", "--segment-seconds", "0"], "--segment-seconds"),
        (["extract", "D", "--out", "F", "--segment-seconds", "nan"], "finite"),
        (["extract", "D", "--out", "F", "--frames-per-segment", "0"], "--frames-per-segment"),
        (["train", "F", "--out", "R", "--batch-size", "-3"], "--batch-size"),
        (["train", "F", "--out", "R", "--model", "nope"], "unknown model"),
        (["train", "F", "--out", "R", "--lr", "inf"], "--lr"),
        (["stream", "x.mp4", "--checkpoint", "c", "--threshold", "1.5"], "--threshold"),
        (["stream", "x.mp4", "--checkpoint", "c", "--option", "novalue"], "KEY=VALUE"),
        (["synth", "out", "--clips-per-class", "0"], "--clips-per-class"),
        (["bench", "--size", "0x0"], "WIDTHxHEIGHT"),
    ],
)
def test_bad_options_are_refused_at_parse_time(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_environment_errors_are_one_line_and_defects_are_not_usage_errors(
    tmp_path, monkeypatch, capsys
):
    from avarnet import cli

    def raising(exc):
        def command(args):
            raise exc

        return command

    cases = [
        (
            OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")),
            2,
            "no space left on device",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/root"),
            2,
            "/data/root: Permission denied",
        ),
        (KeyError("norm.mean"), 3, "internal error"),
        (ZeroDivisionError("division by zero"), 3, "--debug"),
    ]
    for exc, code, words in cases:
        monkeypatch.setitem(cli.COMMANDS, "models", raising(exc))
        assert main(["models"]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "Traceback" not in err[0]
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "models"])


def test_unwritable_out_is_one_line(ckpt_path, corpus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    video = corpus["unicode"][0]
    assert main(predict_argv(str(video), str(ckpt_path), str(blocker / "sub"))) == 2
    lines = error_lines(capsys.readouterr().err, "predict")
    assert len(lines) == 1 and str(blocker) in lines[0]
    assert main(["-q", "train", str(tmp_path), "--out", str(blocker)]) == 2  # not a store
    assert (
        main(["-q", "synth", str(blocker), "--clips-per-class", "1"]) == 2
    )  # a file where a folder goes
    lines = error_lines(capsys.readouterr().err, "synth")
    assert len(lines) == 1 and str(blocker) in lines[0]


# ------------------------------------------------------------------------------ 17. webhook


class _Hook(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Hook.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_credentials_are_sent_as_basic_auth_and_never_logged(caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    _Hook.seen.clear()
    try:
        poster = WebhookPoster(
            f"http://alice:s%40cret@127.0.0.1:{port}/hook?token=T0KEN", attempts=1
        )
        poster.post({"type": "event"})
        assert poster.close().delivered == 1
    finally:
        server.shutdown()
    import base64

    assert _Hook.seen == ["Basic " + base64.b64encode(b"alice:s@cret").decode()]
    dead = WebhookPoster(
        "http://bob:hunter2@127.0.0.1:9/x?token=T0KEN", attempts=2, backoff_s=0.01, timeout_s=0.5
    )
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        dead.post({"type": "event"})
        stats = dead.close()
    text = " ".join(r.getMessage() for r in caplog.records) + str(stats.to_dict())
    assert stats.failed == 1 and "hunter2" not in text and "T0KEN" not in text and "bob" not in text
    assert dead.display_url == "http://***@127.0.0.1:9/..."


def test_stream_with_an_undelivered_webhook_exits_partial(
    ckpt_path, corpus, tmp_path, capsys, monkeypatch
):
    # nothing listens on port 9: every retry fails, so closing gives up at once rather than in 10 s
    monkeypatch.setattr(alerts, "WEBHOOK_CLOSE_TIMEOUT_S", 0.2)
    video = corpus["unicode"][0]
    argv = [
        "-q",
        "stream",
        str(video),
        "--checkpoint",
        str(ckpt_path),
        "--jsonl",
        str(tmp_path / "s.jsonl"),
        "--threshold",
        "0",
        "--min-segments",
        "1",
        "--webhook",
        "http://u:pw@127.0.0.1:9/hook?token=SECRET",
        "--no-view",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    assert main(argv) == 1
    cap = capsys.readouterr()
    assert (
        "not delivered" in cap.out + cap.err
        and "SECRET" not in cap.out + cap.err
        and "pw@" not in cap.out + cap.err
    )


# ------------------------------------------------------- the corpus through every command


@pytest.mark.slow
def test_predict_and_stream_over_the_hostile_corpus_under_a_memory_cap(corpus, ckpt_path, tmp_path):
    huge = tmp_path / "huge.ckpt"
    meta = json.loads(safe_open(str(ckpt_path), framework="pt").metadata()["model_config"])
    rewrite_checkpoint(ckpt_path, huge, meta={"model_config": json.dumps({**meta, "hidden": 8192})})
    names = list(corpus)
    argvs = []
    for name in names:
        path = corpus[name][0]
        argvs.append(
            predict_argv(str(path), str(ckpt_path), str(tmp_path / "p" / name), "--device", "cpu")
        )
        argvs.append(
            [
                "-q",
                "stream",
                str(path),
                "--checkpoint",
                str(ckpt_path),
                "--jsonl",
                str(tmp_path / f"{name}.jsonl"),
                "--no-view",
                "--threads",
                "1",
                "--device",
                "cpu",
            ]
        )
    argvs.append(
        [
            "-q",
            "predict",
            str(corpus["nan_audio"][0]),
            "--checkpoint",
            str(huge),
            "--out",
            str(tmp_path / "huge"),
            "--device",
            "cpu",
        ]
    )
    results = run_many(tmp_path, argvs)
    for name, (pred, live) in zip(
        names, zip(results[0::2], results[1::2], strict=False), strict=False
    ):
        path, codes = corpus[name]
        for r, command in ((pred, "predict"), (live, "stream")):
            no_crash(r["stderr"])
            allowed = codes | (
                {1} if command == "stream" else set()
            )  # a stream that ends early is partial
            assert r["code"] in allowed, (name, command, r)
            if r["code"] == 2:
                lines = error_lines(r["stderr"], command)
                assert len(lines) == 1 and path.name in lines[0], (name, command, r["stderr"])
        if pred["code"] == 0:
            p = strict_load((tmp_path / "p" / name / "prediction.json").read_text())
            assert all(np.isfinite(s["anomaly_score"]) for s in p["segments"])
            assert p["segments"][-1]["end"] < 120  # declared 1e9 s: the real 2 s are scored
            assert not re.search(r"\b(nan|inf)\b", pred["stdout"].lower()), pred["stdout"]
        if live["code"] in (0, 1):
            for line in (tmp_path / f"{name}.jsonl").read_text().splitlines():
                strict_load(line)
    last = results[-1]
    no_crash(last["stderr"])
    assert last["code"] == 2 and "huge.ckpt" in error_lines(last["stderr"], "predict")[0]


@pytest.mark.slow
def test_extract_over_the_hostile_corpus_under_a_memory_cap(corpus, tiny_backbones, tmp_path):
    data = tmp_path / "data"
    for c in ("good", "bad"):
        (data / c).mkdir(parents=True)
    clip(data / "good" / "a.mp4", seconds=1.5)
    clip(data / "good" / "b.mp4", seconds=1.5)
    for path, _ in corpus.values():
        (data / "bad" / path.name).symlink_to(path, target_is_directory=path.is_dir())
    (data / "bad" / "loop").symlink_to(data / "bad")
    r = avarnet(*extract_argv(tiny_backbones, data, tmp_path / "feats")[1:])  # avarnet adds -q
    no_crash(r.stderr)
    assert r.returncode == 1, r.stdout + r.stderr
    failed = [line for line in r.stdout.splitlines() if line.strip().startswith("failed: ")]
    for name, (path, codes) in corpus.items():
        named = [line for line in failed if f"bad/{path.name}" in line]
        if (
            name == "directory"
        ):  # a folder named like a video is a folder (empty here): not an input
            assert named == []
        else:
            assert len(named) == (1 if codes == {2} else 0), (name, failed)
    assert any("bad/loop" in line for line in failed)
    store = FeatureStore.open(tmp_path / "feats")
    for e in store.entries:
        assert all(np.isfinite(a).all() for a in store.load(e).values() if a.dtype.kind == "f"), (
            e.source
        )
    assert {e.source for e in store.entries} >= {
        "bad/nan_audio.mkv",
        "bad/declared_1e9.mkv",
        "bad/wide_4000x2.mp4",
    }


# ------------------------------------------------------------- 15. backbone paths and identity


@pytest.fixture(scope="module")
def relative_pipeline(tiny_backbones, tmp_path_factory) -> Path:
    """Backbones given as relative folders to extract; a model trained on the features. Returns the root."""
    import shutil

    root = tmp_path_factory.mktemp("pipeline")
    for src in tiny_backbones:
        shutil.copytree(src, root / "bb" / src.name)
    for c in ("crash", "pain"):
        for i in range(3):
            clip(root / "data" / c / f"{i}.mp4", seconds=1.0)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert (
            main(
                [
                    "-q",
                    "extract",
                    "data",
                    "--out",
                    "feats",
                    "--video-backbone",
                    "bb/tiny-mobilevit",
                    "--audio-backbone",
                    "bb/tiny-wav2vec2",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "-q",
                    "train",
                    "feats",
                    "--out",
                    "run",
                    "--epochs",
                    "1",
                    "--seq-len",
                    "2",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    finally:
        os.chdir(cwd)
    return root


def test_checkpoints_record_absolute_backbone_folders_and_their_identity(relative_pipeline):
    spec = load_checkpoint(relative_pipeline / "run" / "best.ckpt").spec
    assert spec.video_backbone == str((relative_pipeline / "bb" / "tiny-mobilevit").resolve())
    assert spec.audio_backbone == str((relative_pipeline / "bb" / "tiny-wav2vec2").resolve())
    assert len(spec.video_backbone_sha256) == 64 and len(spec.audio_backbone_sha256) == 64


def test_predict_from_elsewhere_and_with_a_moved_backbone(
    relative_pipeline, tmp_path, capsys, monkeypatch
):
    import shutil

    ckpt = relative_pipeline / "run" / "best.ckpt"
    video = relative_pipeline / "data" / "crash" / "0.mp4"
    monkeypatch.chdir(tmp_path)
    assert main(predict_argv(str(video), str(ckpt), "p1", "--device", "cpu")) == 0
    moved = tmp_path / "elsewhere"
    shutil.copytree(relative_pipeline / "bb" / "tiny-wav2vec2", moved)
    assert (
        main(
            [
                "-q",
                "predict",
                str(video),
                "--checkpoint",
                str(ckpt),
                "--out",
                "p2",
                "--device",
                "cpu",
                "--audio-backbone",
                str(moved),
            ]
        )
        == 0
    )
    assert strict_load((tmp_path / "p2" / "prediction.json").read_text()) == strict_load(
        (tmp_path / "p1" / "prediction.json").read_text()
    )


def test_a_different_backbone_is_refused_in_one_line(relative_pipeline, tmp_path, capsys):
    from transformers import MobileViTConfig, MobileViTModel

    ckpt = relative_pipeline / "run" / "best.ckpt"
    video = relative_pipeline / "data" / "crash" / "0.mp4"
    original = relative_pipeline / "bb" / "tiny-mobilevit"
    config = MobileViTConfig.from_pretrained(original)
    prep = (original / "preprocessor_config.json").read_text()
    torch.manual_seed(123)
    MobileViTModel(config).save_pretrained(tmp_path / "retrained")  # same shapes, other weights
    wider = MobileViTConfig.from_dict(
        {**config.to_dict(), "neck_hidden_sizes": [8, 8, 16, 16, 24, 24, 40]}
    )
    MobileViTModel(wider).save_pretrained(tmp_path / "wider")
    for d in ("retrained", "wider"):
        (tmp_path / d / "preprocessor_config.json").write_text(prep)
    for d, words in (
        ("retrained", "is not the one these features were made with"),
        ("wider", "gives 40-d"),
    ):
        code = main(
            [
                "-q",
                "predict",
                str(video),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / d / "p"),
                "--device",
                "cpu",
                "--video-backbone",
                str(tmp_path / d),
            ]
        )
        lines = error_lines(capsys.readouterr().err, "predict")
        assert code == 2 and len(lines) == 1 and words in lines[0], lines
