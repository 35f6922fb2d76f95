import json

import numpy as np
import pytest
import torch
from feature_factory import make_store

from avarnet.config import FeatureSpec
from avarnet.store import INDEX_FILE, Entry, FeatureStore, StoreError, video_id


def test_roundtrip_and_reopen(tmp_path):
    store = make_store(tmp_path / "s", per_class=3)
    again = FeatureStore.open(tmp_path / "s")
    assert [e.id for e in again.entries] == [e.id for e in store.entries]
    e = again.entries[0]
    t = again.load(e)
    assert (
        t["video"].shape == (e.T, 12)
        and t["audio"].shape == (e.T, 8)
        and t["audio_mask"].dtype == bool
    )
    assert again.classes == ["abuse", "crash", "normal"]


def test_torn_index_line_and_unindexed_file_are_recovered(tmp_path):
    store = make_store(tmp_path / "s", per_class=2)
    victim = store.entries[-1]
    lines = (tmp_path / "s" / INDEX_FILE).read_text().splitlines()
    # a killed run: the last index line is torn in half, the feature file itself is complete
    kept = [ln for ln in lines if json.loads(ln)["id"] != victim.id]
    (tmp_path / "s" / INDEX_FILE).write_text("\n".join(kept) + "\n" + '{"id": "torn", "fi')
    reopened = FeatureStore.open(tmp_path / "s")
    assert victim.id not in {e.id for e in reopened.entries}
    assert reopened.is_done(victim.id)  # re-indexed from the file's own metadata
    assert victim.id in {e.id for e in FeatureStore.open(tmp_path / "s").entries}


def test_leftover_temp_files_are_not_entries(tmp_path):
    store = make_store(tmp_path / "s", per_class=1)
    (tmp_path / "s" / "features" / "abuse" / ".tmp-x.safetensors").write_bytes(b"half")
    assert len(FeatureStore.open(tmp_path / "s").entries) == len(store.entries)


def test_spec_mismatch_is_refused(tmp_path):
    make_store(tmp_path / "s", per_class=1)
    with pytest.raises(StoreError, match="different spec"):
        FeatureStore.create(tmp_path / "s", FeatureSpec(segment_seconds=0.5), {})


def test_open_missing_store_has_clear_error(tmp_path):
    with pytest.raises(StoreError, match="avarnet extract"):
        FeatureStore.open(tmp_path / "nothing")


def test_video_id_is_safe_and_unique():
    a = video_id("abuse/clip with spaces – ünï 日本.mp4")
    b = video_id("abuse/clip with spaces – uni 日本.mp4")
    assert a != b
    assert all(c.isascii() for c in a) and " " not in a and a.startswith("abuse/")


def test_failures_recorded_and_cleared_when_fixed(tmp_path):
    store = make_store(tmp_path / "s", per_class=1)
    store.record_failure("abuse/bad.mp4", "not a media file")
    assert FeatureStore.open(tmp_path / "s").failures == [
        {"path": "abuse/bad.mp4", "reason": "not a media file"}
    ]
    e = Entry(
        video_id("abuse/bad.mp4"),
        f"features/{video_id('abuse/bad.mp4')}.safetensors",
        "abuse",
        "train",
        "abuse/bad.mp4",
        1.0,
        1.0,
        False,
        1,
    )
    store.write(
        e,
        {
            "video": np.zeros((1, 12), np.float32),
            "audio": np.zeros((1, 8), np.float32),
            "audio_mask": np.zeros(1, bool),
        },
    )
    assert FeatureStore.open(tmp_path / "s").failures == []


def test_encoder_state_roundtrip(tmp_path):
    store = make_store(tmp_path / "s", per_class=1)
    state = {"a.running_mean": torch.arange(3.0), "a.num_batches_tracked": torch.tensor(4)}
    store.save_encoder_state(state)
    back = FeatureStore.open(tmp_path / "s").load_encoder_state()
    assert torch.equal(back["a.running_mean"], state["a.running_mean"])


# -- several writers on one store ------------------------------------------------------------------

HOLDER = """
import sys, time
from avarnet.store import FeatureStore
store = FeatureStore.open(sys.argv[1])
store.register_writer()
claim = store.claim(sys.argv[2])
(store.root / "features" / ".tmp-inflight.safetensors").write_bytes(b"half written")
print("ready", claim is not None, flush=True)
time.sleep(120)
"""

WRITER = """
import sys
import numpy as np
from avarnet.store import Entry, FeatureStore, video_id
store = FeatureStore.open(sys.argv[1])
done = 0
for i in range(int(sys.argv[2])):
    rel = f"abuse/shared_{i:03d}.mp4"
    vid = video_id(rel)
    e = Entry(vid, f"features/{vid}.safetensors", "abuse", "train", rel, 2.0, 1.0, True, 2)
    done += store.write(e, {"video": np.full((2, 12), i, np.float32), "audio": np.zeros((2, 8), np.float32),
                            "audio_mask": np.ones(2, bool)})
print(done)
"""


def _python(code: str, *args: str, **kw):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, **kw
    )


def test_live_writer_keeps_its_temp_files_and_claims(tmp_path):
    store = make_store(tmp_path / "s", per_class=1)
    store.close_writer()
    holder = _python(HOLDER, str(store.root), "abuse/x-1")
    try:
        assert holder.stdout.readline().split() == ["ready", "True"]
        other = FeatureStore.open(store.root)
        other.register_writer()
        assert other.remove_stale_temp_files() == 0  # the other writer is alive
        assert (store.root / "features" / ".tmp-inflight.safetensors").exists()
        assert other.claim("abuse/x-1") is None  # claimed by the live writer
        assert other.claim("abuse/x-2") is not None
    finally:
        holder.kill()
        holder.wait()
    other.close_writer()
    again = FeatureStore.open(store.root)
    again.register_writer()  # alone now: the killed writer's leftovers go
    assert not (store.root / "features" / ".tmp-inflight.safetensors").exists()
    assert not [p for p in (store.root / ".writers").iterdir() if p != again.register_writer().path]
    claim = again.claim("abuse/x-1", wait=True)  # a killed writer's claim frees itself
    assert claim is not None
    claim.release()


def test_concurrent_writers_index_each_video_once(tmp_path):
    store = make_store(tmp_path / "s", per_class=1)
    n = 30
    procs = [_python(WRITER, str(store.root), str(n)) for _ in range(3)]
    written = [int(p.communicate(timeout=300)[0]) for p in procs]
    assert sum(written) == n  # each video committed by exactly one writer
    lines = [json.loads(x)["id"] for x in (store.root / INDEX_FILE).read_text().splitlines()]
    assert len(lines) == len(set(lines)) == n + len(store.entries)
    again = FeatureStore.open(store.root)
    for e in again.entries:
        assert again.load(e)["video"].shape == (e.T, 12)


def test_claim_queue_hands_each_video_to_one_writer_and_skips_done_ones(tmp_path):
    """Two writers' queues over one store: a done video is skipped, a video the other writer holds
    is put aside and handed out once that writer lets it go."""
    from types import SimpleNamespace

    from avarnet.store import Claimed, ClaimQueue

    store = make_store(tmp_path / "s", per_class=1)
    done = SimpleNamespace(rel_path=store.entries[0].source)
    new = [SimpleNamespace(rel_path=f"abuse/new_{i}.mp4") for i in range(2)]
    skipped_a: list = []
    skipped_b: list = []
    a = ClaimQueue(store, [done, new[0]], on_skip=skipped_a.append)
    b = ClaimQueue(FeatureStore.open(tmp_path / "s"), [new[0], new[1]], on_skip=skipped_b.append)
    first = a.next()
    assert isinstance(first, Claimed) and first.item is new[0] and skipped_a == [done]
    assert first.vid == video_id(new[0].rel_path) and a.empty
    second = b.next()
    assert second.item is new[1]  # new[0] is held by the other writer: put aside
    assert b.next() is None and not b.empty
    first.release()
    again = b.next(block=True)
    assert again.item is new[0] and b.empty and skipped_b == []
    assert a.next() is None
    again.release()
    second.release()
