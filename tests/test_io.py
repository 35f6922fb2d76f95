"""Atomic writes that follow the umask, and strict JSON."""

from __future__ import annotations

import math
import os
import stat

import numpy as np
import pytest
from conftest import strict_load, untrained_checkpoint
from feature_factory import make_store

from avarnet import io
from avarnet.checkpoint import save_checkpoint
from avarnet.config import FeatureSpec


def test_strict_json_writer_turns_non_finite_into_null(tmp_path):
    value = {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.array([1.0, -np.inf]),
             "d": (np.int64(3), np.float64(0.25))}  # fmt: skip
    io.write_json(tmp_path / "x.json", value)
    assert strict_load((tmp_path / "x.json").read_text()) == {
        "a": None,
        "b": [None, 1.5],
        "c": [1.0, None],
        "d": [3, 0.25],
    }
    assert io.dumps(float("-inf"), indent=None) == "null"
    assert math.isnan(value["a"])  # the caller's value is left alone


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out" / "x.txt"
    io.atomic_write_text(target, "old")

    def half_then_fail(tmp):
        tmp.write_text("new, half written")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        io.atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["x.txt"]
    io.atomic_write_bytes(target, "näw".encode())
    assert target.read_text() == "näw"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        assert io.current_umask() == umask
        io.atomic_write_text(tmp_path / "a.txt", "x")
        spec = FeatureSpec(video_dim=12, audio_dim=8)
        save_checkpoint(tmp_path / "c.ckpt", untrained_checkpoint(spec))
        store = make_store(tmp_path / "feats", per_class=1)
    finally:
        os.umask(old)
    files = [
        tmp_path / "a.txt",
        tmp_path / "c.ckpt",
        store.root / "spec.json",
        store.root / store.entries[0].file,
    ]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


def test_atomic_copy_replaces_a_planted_link_and_follows_the_umask(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out" / "copy.bin"
    target.parent.mkdir()
    target.symlink_to(victim)  # a link where the copy goes: replaced, never written through
    old = os.umask(0o027)
    try:
        io.atomic_copy(src, target)
    finally:
        os.umask(old)
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["copy.bin"]  # no temporary left


def test_json_nesting_is_bounded_before_parsing():
    assert io.json_depth('{"a": [1, {"b": "[[[{{{"}], "c": "\\"]"}') == 3
    assert io.loads('[[["]]]]]"]]]') == [[["]]]]]"]]]
    with pytest.raises(ValueError, match="nested 200000 levels deep"):
        io.loads("[" * 200_000 + "]" * 200_000)  # json.loads alone: RecursionError
    # hostile strings are scanned in one pass (an unterminated one, escaped quotes)
    for text in ('"' + '\\"' * 300_000, '"' + '\\"' * 300_000 + "\\", '["a\\\\"' * 100_000):
        io.json_depth(text)  # finishes at once (quadratic scanning would take minutes)
