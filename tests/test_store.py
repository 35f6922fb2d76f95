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
    assert t["video"].shape == (e.T, 12) and t["audio"].shape == (e.T, 8) and t["audio_mask"].dtype == bool
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
    assert FeatureStore.open(tmp_path / "s").failures == [{"path": "abuse/bad.mp4", "reason": "not a media file"}]
    e = Entry(video_id("abuse/bad.mp4"), f"features/{video_id('abuse/bad.mp4')}.safetensors", "abuse", "train",
              "abuse/bad.mp4", 1.0, 1.0, False, 1)
    store.write(e, {"video": np.zeros((1, 12), np.float32), "audio": np.zeros((1, 8), np.float32),
                    "audio_mask": np.zeros(1, bool)})
    assert FeatureStore.open(tmp_path / "s").failures == []


def test_encoder_state_roundtrip(tmp_path):
    store = make_store(tmp_path / "s", per_class=1)
    state = {"a.running_mean": torch.arange(3.0), "a.num_batches_tracked": torch.tensor(4)}
    store.save_encoder_state(state)
    back = FeatureStore.open(tmp_path / "s").load_encoder_state()
    assert torch.equal(back["a.running_mean"], state["a.running_mean"])
