"""Static int8 calibrated on the store: it quantises for real, and it keeps the decisions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import untrained_checkpoint

from avarnet.checkpoint import load_checkpoint, save_checkpoint
from avarnet.cli import main
from avarnet.store import FeatureStore

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def quantised(tiny_store, tmp_path_factory) -> tuple[Path, Path, dict]:
    """``avarnet quantize`` of an untrained checkpoint over ``tiny_store``'s features. Its small
    normaliser spread magnifies feature changes, so that int8 can move decisions."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("quantize")
    ckpt = root / "c.ckpt"
    save_checkpoint(ckpt, untrained_checkpoint(FeatureStore.open(tiny_store).spec, std=0.02))
    out = root / "int8"
    args = ["-q", "quantize", str(ckpt), str(tiny_store), "--out", str(out), "--threads", "1"]
    args += ["--min-saving", "0"]  # both encoders int8, however fast int8 runs the tiny models
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(before)
    return ckpt, out, json.loads((out / "quantization.json").read_text())


def _features(folder: Path, precision: str, video: Path) -> dict:
    from avarnet.export import load_onnx
    from avarnet.features import causal_features

    bundle = load_onnx(folder, precision, threads=1)
    return causal_features(video, bundle.extractor)[0]


def test_int8_quantises_for_real_and_keeps_the_decisions(quantised, tiny_store):
    """Fails for a quantiser that changes nothing: the int8 files must hold quantised weights and
    (De)QuantizeLinear nodes, weigh much less, and compute measurably different features, while
    the labels a stream gives on held-out clips stay those of fp32."""
    from avarnet.apps.quantize import graph_summary
    from avarnet.inference import model_input, step_probabilities

    ckpt_path, out, report = quantised
    for key in ("video", "audio"):
        fp32, int8 = graph_summary(out / f"{key}.onnx"), graph_summary(out / f"{key}.int8.onnx")
        assert (
            int8["ops"].get("DequantizeLinear", 0) > 0 and int8["ops"].get("QuantizeLinear", 0) > 0
        )
        assert int8["weight_bytes"].get("INT8", 0) > 0 and not fp32["ops"]
        assert sum(int8["weight_bytes"].values()) < 0.5 * sum(fp32["weight_bytes"].values()), key
    store = FeatureStore.open(tiny_store)
    ckpt = load_checkpoint(ckpt_path)
    L = ckpt.train_config.seq_len
    same, total, moved = 0, 0, 0.0
    for entry in store.split("val"):  # the split the search measured decisions on
        video = Path(store.info["data_root"]) / entry.source
        a, b = _features(out, "fp32", video), _features(out, "int8", video)
        moved = max(moved, float(np.abs(a["audio"] - b["audio"]).max()))
        moved = max(moved, float(np.abs(a["video"] - b["video"]).max()))
        pa = step_probabilities(ckpt.model, model_input(ckpt, a), L, causal=True)
        pb = step_probabilities(ckpt.model, model_input(ckpt, b), L, causal=True)
        same += int((pa.argmax(1) == pb.argmax(1)).sum())
        total += len(pa)
    assert moved > 1e-3  # int8 computes something else ...
    assert same / total >= 0.99  # ... that decides the same
    assert report["test"]["segments"] > 0 and 0 <= report["test"]["agreement_live"] <= 1
    for key in ("accuracy", "f1", "live_accuracy", "live_f1"):
        assert key in report["test"]["change"]


def _replay(search: dict) -> None:
    """Each kept group is the one the search's rule picks after the trial before it: while labels
    disagree, the group that moved them most alone; once they agree, the group that moved the
    features most alone, of an encoder still below the cosine floor."""
    target, floor = search["target_agreement"], search["min_cosine"]
    groups = {(g["model"], g["group"]): g for g in search["groups"]}
    by_labels = list(groups)  # the report ranks them worst first
    by_features = sorted(groups, key=lambda k: groups[k]["cosine_min"][k[0]])
    steps = [t for t in search["trials"] if "kept fp32" in t["trial"]]
    before, kept = search["all_quantised"], []
    for k, step in zip(search["kept_fp32"], steps, strict=True):
        if before["agreement"] < target:
            pick = next(g for g in by_labels if g not in kept)
            assert k["for"] == "labels"
        else:
            below = {m for m, c in before["cosine_min"].items() if c < floor}
            assert below  # it only goes on for the features when some encoder is below the floor
            pick = next(g for g in by_features if g[0] in below and g not in kept)
            assert k["for"] == "features"
        assert (k["model"], k["group"]) == pick
        kept.append(pick)
        before = step


def test_the_layers_kept_in_fp32_are_found_by_measurement(quantised):
    """When the fully quantised encoders move decisions or features, every layer was measured
    alone, layers were kept in fp32 by the search's rule until both held, and they are fp32 in
    the file."""
    import onnx

    _, out, report = quantised
    search = report["search"]
    final = search["trials"][-1]
    assert final["agreement"] >= search["target_agreement"]
    assert min(final["cosine_min"].values(), default=1) >= search["min_cosine"] == 0.99
    if not search["kept_fp32"]:  # the fully quantised encoders passed
        assert len(search["trials"]) == 1
        return

    # each encoder was measured alone; the layers searched are those of the encoders that failed
    # alone (of both when neither did)
    def fails(m):
        return m["agreement"] < 0.99 or min(m["cosine_min"].values()) < 0.99

    failing = {k for k, m in search["encoders_alone"].items() if fails(m)}
    assert set(search["encoders_alone"]) == {"video", "audio"}
    assert {g["model"] for g in search["groups"]} == (failing or {"video", "audio"})
    agreements = [g["agreement"] for g in search["groups"]]
    assert agreements == sorted(agreements)  # the worst first
    kept = search["kept_fp32"]
    assert kept
    _replay(search)
    for k in kept:
        model = onnx.load(str(out / f"{k['model']}.int8.onnx"))
        dequantised = {
            o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output
        }
        prefix = "/" + k["group"] + "/"
        nodes = [n for n in model.graph.node if n.name.startswith(prefix)]
        compute = [n for n in nodes if n.op_type in ("Conv", "MatMul", "Gemm")]
        assert compute and not any(i in dequantised for n in compute for i in n.input), k


def test_the_feature_floor_keeps_layers_that_labels_alone_would_not(tiny_store, tmp_path):
    """With a label target every candidate meets, the fully quantised encoders ship as they are
    unless a floor on the features' cosine asks for more: then layers are kept in fp32, the
    features' worst first, until every search segment's features reach the floor, and the int8
    export's features on those clips do."""
    from avarnet.apps import quantize as q
    from avarnet.features import cosine

    ckpt = _quantize_ckpt(tiny_store, tmp_path)
    base = dict(threads=1, target_agreement=1e-6, min_saving=0)
    labels_only = q.quantize_checkpoint(
        ckpt, tiny_store, tmp_path / "a", q.QuantizeOptions(min_cosine=0, **base)
    )["search"]
    assert labels_only["kept_fp32"] == [] and len(labels_only["trials"]) == 1
    lowest = labels_only["all_quantised"]["cosine_min"]
    assert set(lowest) == {"video", "audio"} and min(lowest.values()) < 1
    floor = 1 - (1 - min(lowest.values())) / 4  # above what full int8 gives
    out = tmp_path / "b"
    report = q.quantize_checkpoint(
        ckpt, tiny_store, out, q.QuantizeOptions(min_cosine=floor, **base)
    )
    search = report["search"]
    assert search["min_cosine"] == floor and search["kept_fp32"]
    assert {k["for"] for k in search["kept_fp32"]} == {"features"}
    _replay(search)
    final = search["trials"][-1]
    assert min(final["cosine_min"].values(), default=1) >= floor
    printed = q.summary_lines(report)
    assert f"(floor {floor})" in printed[1] and printed[2].startswith("  with the layers kept: ")
    # the export as written: its int8 features on the search clips keep the floor
    store = FeatureStore.open(tiny_store)
    video = Path(store.info["data_root"]) / store.split("val")[0].source
    a, b = _features(out, "fp32", video), _features(out, "int8", video)
    for key in ("video", "audio"):
        assert cosine(a[key], b[key]).min() >= floor - 1e-6, key


def _quantize_ckpt(tiny_store, root: Path) -> Path:
    ckpt = root / "c.ckpt"
    save_checkpoint(ckpt, untrained_checkpoint(FeatureStore.open(tiny_store).spec, std=0.02))
    return ckpt


def test_an_encoder_whose_int8_is_not_faster_stays_fp32_whole(tiny_store, tmp_path, capsys):
    """Timed on the calibration inputs, no int8 saves all of the encoders' time: both encoders
    stay fp32 whole, the export's int8 entries name the fp32 files (no int8 file is written),
    and the int8 path computes exactly fp32's features."""
    ckpt, out = _quantize_ckpt(tiny_store, tmp_path), tmp_path / "q"
    args = ["quantize", str(ckpt), str(tiny_store), "--out", str(out), "--threads", "1"]
    assert main([*args, "--min-saving", "1"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "quantization.json").read_text())
    search = report["search"]
    assert search["kept_fp32_whole"] == ["video", "audio"] and search["min_saving"] == 1
    for key in ("video", "audio"):
        speed = search["speed"][key]
        assert speed["fp32_ms"] > 0 and speed["int8_ms"] > 0 and speed["saving"] < 1
        assert f"{key}: kept fp32 whole" in printed
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files["video_int8"] == "video.onnx" and files["audio_int8"] == "audio.onnx"
    assert not list(out.glob("*.int8.onnx"))
    assert search["all_quantised"]["agreement"] == 1.0 and search["groups"] == []
    assert report["test"]["agreement_offline"] == report["test"]["agreement_live"] == 1.0
    video = Path(FeatureStore.open(tiny_store).info["data_root"])
    video = video / FeatureStore.open(tiny_store).split("test")[0].source
    a, b = _features(out, "fp32", video), _features(out, "int8", video)
    for key in ("video", "audio"):
        np.testing.assert_array_equal(a[key], b[key])


def test_only_the_encoders_fast_in_int8_are_searched_and_quantised(
    tiny_store, tmp_path, monkeypatch
):
    """The video encoder timed no faster in int8 (it saves nothing), the audio one twice as fast
    (a quarter of the two encoders' time): video stays fp32 whole, the search never measures video layers, and only audio.int8.onnx is written."""
    from avarnet.apps import quantize as q

    def timed(fp32, int8, feeds, threads=0):
        speedup = 1.0 if fp32.name == "video.onnx" else 2.0
        return {"fp32_ms": 2.0, "int8_ms": 2.0 / speedup, "speedup": speedup, "batches": 1}

    monkeypatch.setattr(q, "encoder_speed", timed)
    ckpt = _quantize_ckpt(tiny_store, tmp_path)
    options = q.QuantizeOptions(threads=1, target_agreement=1.0)  # the layers are searched
    report = q.quantize_checkpoint(ckpt, tiny_store, tmp_path / "q", options)
    search = report["search"]
    assert search["kept_fp32_whole"] == ["video"]
    assert search["encoders_alone"] == {}  # one encoder in int8: nothing to measure alone
    assert {g["model"] for g in search["groups"]} == {"audio"}
    assert all("video" not in t["trial"] for t in search["trials"])
    files = json.loads((tmp_path / "q" / "manifest.json").read_text())["files"]
    assert files["video_int8"] == "video.onnx" and files["audio_int8"] == "audio.int8.onnx"
    assert not (tmp_path / "q" / "video.int8.onnx").exists()
    summary = q.graph_summary(tmp_path / "q" / "audio.int8.onnx")
    assert summary["ops"].get("DequantizeLinear", 0) > 0


def test_an_encoder_slow_with_the_layers_kept_ships_fp32_measured_as_shipped(
    tiny_store, tmp_path, monkeypatch
):
    """Audio's fully quantised model times twice as fast, but with the layers the search keeps in
    fp32 no faster than fp32: audio ships fp32 whole, and the search segments are measured again
    as the export ships them (the last trial)."""
    from avarnet.apps import quantize as q

    def timed(fp32, int8, feeds, threads=0):
        speedup = 1.0 if int8.name == "audio.int8.onnx" else 2.0
        return {"fp32_ms": 2.0, "int8_ms": 2.0 / speedup, "speedup": speedup, "batches": 1}

    monkeypatch.setattr(q, "encoder_speed", timed)
    ckpt, out = _quantize_ckpt(tiny_store, tmp_path), tmp_path / "q"
    options = q.QuantizeOptions(threads=1, target_agreement=1.0)  # audio layers are kept
    report = q.quantize_checkpoint(ckpt, tiny_store, out, options)
    search = report["search"]
    assert any(k["model"] == "audio" for k in search["kept_fp32"])
    assert search["speed"]["audio"]["saving"] == 0.25
    assert search["speed_shipped"]["audio"]["saving"] == 0
    assert search["kept_fp32_whole"] == ["audio"]
    assert search["trials"][-1]["trial"] == "as shipped: audio fp32 whole"
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files["audio_int8"] == "audio.onnx" and files["video_int8"] == "video.int8.onnx"
    assert not (out / "audio.int8.onnx").exists() and (out / "video.int8.onnx").is_file()


def test_encoder_speed_times_both_models_on_the_calibration_inputs(tmp_path):
    from avarnet.apps.quantize import QuantizeError, encoder_speed, quantise_static

    src = attention_like_graph(tmp_path / "g.onnx")
    feeds = [
        {"x": np.random.default_rng(i).standard_normal((1, 4, 8), np.float32)} for i in range(4)
    ]
    int8 = quantise_static(src, tmp_path / "g.int8.onnx", tmp_path / "c.json", feeds, ("MatMul",))
    speed = encoder_speed(src, int8, feeds, threads=1)
    assert speed["fp32_ms"] > 0 and speed["int8_ms"] > 0 and speed["batches"] == 4
    assert speed["speedup"] > 0
    with pytest.raises(QuantizeError, match="no calibration inputs"):
        encoder_speed(src, int8, [], threads=1)


def test_the_search_measures_on_validation_then_unread_training_clips(tiny_store):
    from avarnet.apps.quantize import calibration_segments, search_clips

    store = FeatureStore.open(tiny_store)
    spec = store.spec
    _, calibration = calibration_segments(store, spec, 2, None)
    val = sum(e.T for e in store.split("val"))
    clips, counts = search_clips(store, val + 1000, None, spec, calibration)
    assert counts["val"] == val and counts["train"] > 0  # all of val, then training clips
    ids = [e.id for e, _ in clips]
    assert ids[: len(store.split("val"))] == [e.id for e in store.split("val")]
    assert not {e.id for e in calibration} & set(ids)  # never a clip the calibration read
    assert len(ids) == len(store.split("val")) + len(store.split("train")) - len(calibration)
    assert sum(len(s) for _, s in clips) == sum(counts.values())
    few, counts = search_clips(store, 1, None, spec, calibration)  # enough on val alone
    assert list(counts) == ["val"] and len(few) == 1


def test_node_groups_follow_the_layers():
    from avarnet.apps.quantize import node_group

    assert node_group("/model/wav2vec2/encoder/layers.3/attention/q_proj/MatMul") == (
        "model/wav2vec2/encoder/layers.3"
    )
    assert node_group("/model/mobilevit/conv_stem/convolution/Conv") == (
        "model/mobilevit/conv_stem/convolution"
    )
    assert node_group("/model/wav2vec2/feature_extractor/conv_layers.0/conv/Conv") == (
        "model/wav2vec2/feature_extractor/conv_layers.0"
    )
    assert node_group("MatMul_12") == "MatMul_12"


def test_a_store_without_its_videos_is_one_line(tiny_store, tmp_path, capsys):
    ckpt = tmp_path / "c.ckpt"
    save_checkpoint(ckpt, untrained_checkpoint(FeatureStore.open(tiny_store).spec))
    args = ["quantize", str(ckpt), str(tiny_store), "--out", str(tmp_path / "q")]
    assert main([*args, "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and "Traceback" not in err[0]


def attention_like_graph(path: Path) -> Path:
    """x (1, 4, 8) -> q = x W (a constant weight) -> q q^T: one MatMul of two activations."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8), np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["q"], name="/model/layers.0/proj/MatMul"),
        helper.make_node("Transpose", ["q"], ["k"], name="/model/layers.0/T", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k"], ["scores"], name="/model/layers.0/scores/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def quantised_tensors(path: Path) -> set[str]:
    """The tensors a graph runs through QuantizeLinear (activations; weights are stored int8)."""
    import onnx

    return {n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"}


def test_static_int8_quantises_only_constant_weight_matmuls_and_keeps_what_is_excluded(tmp_path):
    """A MatMul of two activations (an attention's scores) belongs to no group a search can keep
    in fp32, so it is never quantised; excluding every group leaves the fp32 graph."""
    from avarnet.apps.quantize import quantisable_groups, quantise_static

    src = attention_like_graph(tmp_path / "g.onnx")
    assert quantisable_groups(src, ("MatMul",)) == {
        "model/layers.0": ["/model/layers.0/proj/MatMul"]
    }
    feeds = [
        {"x": np.random.default_rng(i).standard_normal((1, 4, 8), np.float32)} for i in range(4)
    ]
    cache = tmp_path / "calibration.json"
    int8 = quantise_static(src, tmp_path / "int8.onnx", cache, feeds, ("MatMul",))
    assert "x" in quantised_tensors(int8)  # the weight MatMul's input: quantised
    assert not {"k", "scores"} & quantised_tensors(int8)  # the activations' MatMul: not
    kept = quantise_static(
        src,
        tmp_path / "kept.onnx",
        cache,
        None,
        ("MatMul",),
        exclude=["/model/layers.0/proj/MatMul"],
    )
    assert not quantised_tensors(kept)
    assert kept.read_bytes() == src.read_bytes()
