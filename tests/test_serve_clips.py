"""Event clips and export-reviewed: the clip of a killed server still plays and goes back to its
event, stale temporary files are cleaned, and export-reviewed mirrors the reviews into its own
folder only (no label, link or stale copy leads it anywhere else)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import serve_support as ss
from conftest import untrained_checkpoint

from avarnet.apps.serve import clips as clipsmod
from avarnet.apps.serve.clips import ClipRecorder, prune
from avarnet.apps.serve.events import EventStore
from avarnet.checkpoint import save_checkpoint
from avarnet.cli import main
from avarnet.config import FeatureSpec

CLASSES = ("crash", "normal", "pain")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """4 s of H.264 at 10 fps with a keyframe every 0.5 s (as a camera sends), and AAC audio."""
    path = tmp_path_factory.mktemp("media") / "cam.mp4"
    fps, rate, seconds = 10, 16_000, 4.0
    keys = "keyint=5:min-keyint=5:scenecut=0"
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=fps, options={"x264-params": keys})
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = c.add_stream("aac", rate=rate, layout="mono")
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for i in range(int(seconds * fps)):
            img = np.full((120, 160, 3), (i * 6) % 256, np.uint8)
            c.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            chunk = tone[i * rate // fps : (i + 1) * rate // fps][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, i * rate // fps
            c.mux(audio.encode(frame))
        c.mux(video.encode(None))
        c.mux(audio.encode(None))
    return path


def _frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def _event(store: EventStore, event_id: str, camera: str = "gate", **fields) -> None:
    now = time.time()
    row = {
        "id": event_id,
        "camera": camera,
        "label": "crash",
        "start_time": now - 100,
        "end_time": now - 90,
        "media_start": 10.0,
        "peak_score": 0.9,
        "peak_time": now - 95,
        "score": 0.9,
        "scores": [],
    }
    store.insert({**row, **fields})


# ------------------------------------------------------------------------------- clips

RECORD_THEN_KILL = """
import os, signal, sys
from pathlib import Path
import av
from avarnet.apps.serve.clips import ClipRecorder

src, folder, kill_after = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
rec = ClipRecorder(folder, pre_roll=0.5, post_roll=0.5)
with av.open(src) as c:
    streams = {s.index: s for s in c.streams if s.type in ("video", "audio")}
    video = c.streams.video[0].index
    rec.begin_session(streams, video)
    origin = started = None
    for packet in c.demux(*streams.values()):
        if packet.dts is None:
            continue
        t = float((packet.pts if packet.pts is not None else packet.dts) * packet.time_base)
        if origin is None and packet.stream.index == video:
            origin = t
            rec.set_origin(origin)
        rec.add(packet)
        if started is None and packet.stream.index == video and t - origin >= 1.5:
            rec.start("ev1", 1.5, lambda result: None)  # from the keyframe at 1.0 s
            started = t
        if packet.stream.index == video and origin is not None and t - origin > kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_recording_leaves_a_playable_clip_that_goes_back_to_its_event(clip, tmp_path):
    storage = tmp_path / "store"
    clips = storage / "clips"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-c", RECORD_THEN_KILL, str(clip), str(clips), "3.0"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    (partial,) = [p for p in clips.iterdir() if p.name.startswith(".tmp-")]
    # fragmented MP4: everything up to the last complete fragment plays (1.0 s .. ~2.5 s)
    assert _frames(partial) >= 10
    with av.open(str(clip)) as c:  # a clip starts at its first keyframe's decoding time
        keys = [p for p in c.demux(c.streams.video[0]) if p.is_keyframe]
        start = next(float(p.dts * p.time_base) for p in keys if p.pts * p.time_base == 1)
    assert clipsmod.partial_clip_start(partial) == pytest.approx(start, abs=1e-3)

    store = EventStore(storage / "events.db")
    _event(store, "ev1", closed_by="restart")
    _event(store, "other", closed_by="restart")
    (clips / ".tmp-other--x1.mp4").write_bytes(b"\x00" * 100)  # nothing playable in it
    # the server's start-up retention pass: events closed by the restart need no waiting
    prune(store, storage, max_size_mb=None, max_age_days=None)
    row = store.get("ev1")
    assert row["clip"] == "ev1.mp4" and row["snapshot"] == "ev1.jpg"
    assert row["clip_start"] == pytest.approx(row["start_time"] - 10.0 + start, abs=1e-3)
    assert _frames(clips / "ev1.mp4") >= 10
    assert (storage / "snapshots" / "ev1.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert store.get("other")["clip"] is None
    assert sorted(p.name for p in clips.iterdir()) == ["ev1.mp4"]  # no temporary file left
    store.close()


def test_retention_removes_stale_temporary_files_only(tmp_path):
    storage = tmp_path / "store"
    (storage / "clips").mkdir(parents=True)
    (storage / "snapshots").mkdir()
    store = EventStore(storage / "events.db")
    _event(store, "open1", end_time=None)
    now = time.time()
    old = now - 3 * 3600
    files = {
        "clips/.tmp-gone--a1.mp4": old,  # no such event: removed
        "clips/.tmp-open1--b2.mp4": old,  # its event is still open: kept
        "clips/.tmp-fresh--c3.mp4": now,  # may be recording: kept
        "snapshots/.tmp-d4.jpg": old,  # a killed snapshot write: removed
        "clips/keep.mp4": old,  # not a temporary file: kept
    }
    for name, mtime in files.items():
        (storage / name).write_bytes(b"x")
        os.utime(storage / name, (mtime, mtime))
    prune(store, storage, max_size_mb=None, max_age_days=None, now=now)  # no retention limits
    left = sorted(str(p.relative_to(storage)) for p in storage.glob("*/*"))
    assert left == ["clips/.tmp-fresh--c3.mp4", "clips/.tmp-open1--b2.mp4", "clips/keep.mp4"]
    store.close()


def test_a_finished_clip_is_fragmented_follows_the_umask_and_leaves_no_temporary(clip, tmp_path):
    rec = ClipRecorder(tmp_path / "clips", pre_roll=0.5, post_roll=0.5)
    done = []
    old = os.umask(0o022)
    try:
        with av.open(str(clip)) as c:
            streams = {s.index: s for s in c.streams}
            rec.begin_session(streams, c.streams.video[0].index)
            rec.set_origin(0.0)
            rec.start("ev2", 1.0, done.append)
            rec.stop("ev2", 2.0)
            for packet in c.demux():
                rec.add(packet)
        rec.end_session()
    finally:
        os.umask(old)
    (result,) = done
    assert result.error is None and result.path == tmp_path / "clips" / "ev2.mp4"
    assert [p.name for p in (tmp_path / "clips").iterdir()] == ["ev2.mp4"]
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o644
    with open(result.path, "rb") as f:
        head = f.read(4096)
    assert b"mvex" in head  # the movie header announces fragments
    assert 18 <= _frames(result.path) <= 32  # 0.5 .. ~3.0 s at 10 fps


# ------------------------------------------------------------------------------- export-reviewed


@pytest.fixture
def served(tmp_path, clip):
    """A serve config (one camera, a 3-class checkpoint) and its event database."""
    ckpt = tmp_path / "c.ckpt"
    save_checkpoint(ckpt, untrained_checkpoint(FeatureSpec(video_dim=12, audio_dim=8), CLASSES))
    storage = tmp_path / "store"
    cfg = ss.write_config(
        tmp_path / "c.yaml", ckpt, {"gate": {"source": str(clip)}}, storage, ss.free_port()
    )
    (storage / "clips").mkdir(parents=True)
    store = EventStore(storage / "events.db")
    yield cfg, storage, store
    store.close()


def _clip_event(store: EventStore, storage: Path, event_id: str, camera: str = "gate") -> None:
    (storage / "clips" / f"{event_id}.mp4").write_bytes(f"clip of {event_id}".encode())
    _event(store, event_id, camera, clip=f"{event_id}.mp4")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


@pytest.mark.parametrize(
    "label",
    ["../../escaped", "/absolute", ".hidden", "not-a-class", b"\x00bytes"],
    ids=["parent", "absolute", "hidden", "unknown", "not-text"],
)
def test_export_reviewed_never_writes_outside_its_folder(label, served, tmp_path, capsys):
    cfg, storage, store = served
    if label == "/absolute":
        label = str(tmp_path / "absolute")
    _clip_event(store, storage, "bad", camera="gone")  # a camera no longer configured
    store.review("bad", "true", label)
    _clip_event(store, storage, "good", camera="gone")
    store.review("good", "true", "pain")
    before = _tree(tmp_path)
    out = tmp_path / "data" / "out"
    assert main(["export-reviewed", str(cfg), "--out", str(out)]) == 0
    assert _tree(out) == ["pain/gone-good.mp4"]
    assert (out / "pain" / "gone-good.mp4").read_bytes() == b"clip of good"
    assert sorted(set(_tree(tmp_path)) - set(before)) == ["data/out/pain/gone-good.mp4"]
    printed = capsys.readouterr()
    assert "1 with an unknown class" in printed.out and "Traceback" not in printed.err


def test_export_reviewed_mirrors_changed_and_withdrawn_reviews(served, tmp_path, capsys):
    cfg, storage, store = served
    for event_id in ("a", "b", "c"):
        _clip_event(store, storage, event_id)
    store.review("a", "true", "crash")
    store.review("b", "false")
    store.review("c", "true")
    out = tmp_path / "out"
    (out / "crash").mkdir(parents=True)
    (out / "crash" / "notes.txt").write_text("mine")  # not an export: left alone

    def export() -> list[str]:
        assert main(["export-reviewed", str(cfg), "--out", str(out)]) == 0
        return _tree(out)

    assert export() == [
        "crash/gate-a.mp4",
        "crash/gate-c.mp4",
        "crash/notes.txt",
        "normal/gate-b.mp4",
    ]
    store.review("a", None, "pain")  # corrected class
    store.review("b", "true", "crash")  # false alarm -> true alarm
    store.review("c", "unreviewed")  # withdrawn
    assert export() == ["crash/gate-b.mp4", "crash/notes.txt", "pain/gate-a.mp4"]
    # the clip is gone from the storage (retention): the earlier copy moves with its review
    (storage / "clips" / "a.mp4").unlink()
    store.review("a", "false")
    assert export() == ["crash/gate-b.mp4", "crash/notes.txt", "normal/gate-a.mp4"]
    assert (out / "normal" / "gate-a.mp4").read_bytes() == b"clip of a"
    capsys.readouterr()
    # a class no configured checkpoint knows any more: nothing new written, the copy stays
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "c.ckpt"), str(tmp_path / "d.ckpt")))
    other = untrained_checkpoint(FeatureSpec(video_dim=12, audio_dim=8), ("fire", "normal"))
    save_checkpoint(tmp_path / "d.ckpt", other)
    assert export() == ["crash/gate-b.mp4", "crash/notes.txt", "normal/gate-a.mp4"]
    assert "1 with an unknown class" in capsys.readouterr().out


def test_export_reviewed_never_writes_through_a_planted_link(served, tmp_path):
    cfg, storage, store = served
    _clip_event(store, storage, "a")
    store.review("a", "true", "crash")
    out = tmp_path / "out"
    (out / "crash").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".tmp-gate-a.mp4", ".tmp-gate-a.mp4.tmp"):  # the names a copy might predict
        (out / "crash" / name).symlink_to(victim)
    old = os.umask(0o022)
    try:
        assert main(["export-reviewed", str(cfg), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert victim.read_text() == "precious"
    target = out / "crash" / "gate-a.mp4"
    assert target.read_bytes() == b"clip of a" and not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
