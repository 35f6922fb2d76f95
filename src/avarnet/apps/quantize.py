"""Static int8 for the ONNX fast path, calibrated on the user's own store and judged by decisions.

``avarnet quantize CKPT FEATS --out DIR`` writes an export folder (:mod:`avarnet.export`) whose
int8 encoders (``video.int8.onnx``, ``audio.int8.onnx``, what ``stream --runtime onnx --precision
int8`` loads) are quantised statically:

1. **Calibration** on the store's training split: segments of its videos (read from the dataset
   folder the store records) are run through the fp32 export exactly as a stream runs them, and
   every input each encoder receives is kept; ONNX Runtime's ``quantize_static`` takes its
   activation ranges (MinMax) from them. Weights are int8 per output channel, activations uint8
   per tensor, in QDQ form (Conv, MatMul with a constant weight, Gemm).
2. **Speed**: each encoder's fully quantised model is timed against its fp32 model on the
   calibration inputs (and again after the search, with the layers it kept in fp32). One whose
   int8 does not save ``min_saving`` of the two fp32 encoders' time per segment stays fp32 whole
   (the export's ``*_int8`` entry names the fp32 file): it would move decisions and save little.
3. **Search** on held-out segments (the validation split, or the test split when there is none,
   then unread training clips), over the encoders that stay int8:
   the per-segment labels of the int8 path are compared with fp32's, both with the windows
   evaluation uses and with the windows a stream uses (the lower of the two counts), and each
   int8 encoder's features with fp32's (the lowest cosine similarity over the segments). A
   candidate passes when its labels agree on ``target_agreement`` of the segments and no
   segment's features fall below ``min_cosine``. When the fully quantised encoders fail, each
   encoder is quantised alone (the other in fp32); one that passes alone stays int8. Every node
   group (a layer: ``.../layers.3``, ``.../conv_stem/convolution``, ...) of the others is
   quantised alone and measured. Groups are kept in fp32 one at a time until a candidate passes:
   while labels disagree, the group that moves them most alone (label changes, then the mean
   change of the class probabilities); once they agree, the group that moves the features most
   alone, of an encoder still below ``min_cosine``. The search measures on the validation split's
   segments, topped up with training clips the calibration did not read up to
   ``search_segments``. The feature floor is there because label agreement on these segments
   does not carry over: the model is confident on the training clips that top them up, so few of
   them sit near a decision boundary, and a candidate that agreed on 0.992 of them with features
   down to cosine 0.92 agreed on 0.967 of the test split's segments (docs/live.md).
4. **Report** on the test split (``DIR/quantization.json``): per-segment label agreement with
   fp32, the clip accuracy and macro F1 of fp32 and int8 and their change (offline and live
   windows), and the features' cosine similarity to fp32 beside them.

Features are computed with the export's live spec, as ``stream`` computes them, for both
precisions: the comparison isolates what quantisation changes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..checkpoint import Checkpoint, load_checkpoint
from ..config import INT8_MIN_COSINE, INT8_MIN_SAVING
from ..encoders.onnx import onnx_session
from ..errors import AvarnetError
from ..evaluate import check_compatible
from ..export import FILES, INT8_FILES, MANIFEST, OnnxBundle, export_checkpoint, load_onnx
from ..features import BATCH_SEGMENTS, SegmentEncoder, cosine
from ..inference import clip_probabilities, model_input, step_probabilities
from ..media import Segment, SegmentSource
from ..metrics import classification_metrics
from ..runtime import configure_cpu
from ..store import Entry, FeatureStore

log = logging.getLogger("avarnet")

REPORT = "quantization.json"
FORMAT = "avarnet-quantization-1"
ENCODERS = ("video", "audio")
OP_TYPES = ("Conv", "MatMul", "Gemm")  # the compute; element-wise ops stay fp32
DEFAULT_TARGET = 0.99
SPEED_BATCHES = 8  # calibration inputs each timing round runs
SPEED_ROUNDS = 3  # alternating rounds; each model's fastest round counts
METHOD = {  # what the report says of the quantisation
    "quantisation": "static, QDQ (onnxruntime.quantization.quantize_static)",
    "weights": "int8, per output channel",
    "activations": "uint8, per tensor, MinMax ranges from the calibration inputs",
}
LAYER = re.compile(r".*[._]\d+$")  # a numbered block: layers.3, layer.0, conv_layers.1


class QuantizeError(AvarnetError):
    """Quantisation cannot run on this checkpoint and store; one line."""


@dataclass(frozen=True)
class QuantizeOptions:
    """What :func:`quantize_checkpoint` does."""

    calibration_segments: int = 64  # training-split segments whose encoder inputs calibrate
    search_segments: int = 256  # held-out segments the exclusion search measures on
    target_agreement: float = DEFAULT_TARGET  # per-segment label agreement to reach
    data_root: Path | None = None  # the dataset folder (default: the one the store records)
    audio_context_seconds: float | None = None  # live look-back (default: the checkpoint's)
    threads: int = 0  # ONNX Runtime and torch threads (0: their defaults)
    op_types: tuple[str, ...] = OP_TYPES
    min_saving: float = INT8_MIN_SAVING  # share of fp32 encoder time int8 must save (0: any)
    min_cosine: float = INT8_MIN_COSINE  # lowest segment cosine of int8 features (0: labels only)


@dataclass
class Measure:
    """How far one int8 candidate's decisions are from fp32's on a set of clips."""

    agreement_offline: float  # fraction of segments with the same label (evaluate's windows)
    agreement_live: float  # the same with a stream's windows
    probability_change: float  # mean total-variation distance of the segment probabilities
    segments: int
    cosine_min: dict[str, float] = field(default_factory=dict)  # per int8 encoder, over segments

    @property
    def agreement(self) -> float:
        return min(self.agreement_offline, self.agreement_live)

    def below(self, min_cosine: float) -> list[str]:
        """The int8 encoders whose features fall below ``min_cosine`` on some segment."""
        return [k for k in ENCODERS if self.cosine_min.get(k, 1.0) < min_cosine]

    def passes(self, options: QuantizeOptions) -> bool:
        return self.agreement >= options.target_agreement and not self.below(options.min_cosine)

    def to_dict(self) -> dict[str, Any]:
        return {
            "agreement": round(self.agreement, 6),
            "agreement_offline": round(self.agreement_offline, 6),
            "agreement_live": round(self.agreement_live, 6),
            "probability_change": round(self.probability_change, 6),
            "cosine_min": {k: round(v, 6) for k, v in self.cosine_min.items()},
            "segments": self.segments,
        }


# ----------------------------------------------------------------------------- graph


def node_group(name: str) -> str:
    """The layer a node belongs to, read from its exported name: the path up to the first
    numbered block (``/model/wav2vec2/encoder/layers.3/attention/q_proj/MatMul`` ->
    ``model/wav2vec2/encoder/layers.3``), else the path without the op (``.../conv_stem/
    convolution``); a name without a path is its own group."""
    parts = [p for p in name.split("/") if p]
    for i, part in enumerate(parts):
        if LAYER.match(part):
            return "/".join(parts[: i + 1])
    return "/".join(parts[:-1]) or name


def quantisable_groups(path: Path, op_types: Sequence[str]) -> dict[str, list[str]]:
    """{group: node names} of the nodes of an ONNX file that static int8 would quantise, in graph
    order (MatMuls only where one input is a constant weight, as quantised)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in op_types or not node.name:
            continue
        if node.op_type == "MatMul" and not any(i in constants for i in node.input):
            continue
        groups.setdefault(node_group(node.name), []).append(node.name)
    return groups


def graph_summary(path: str | Path) -> dict[str, Any]:
    """What an ONNX file holds that quantisation changes: ``ops``, the number of nodes of each
    quantisation op type (QuantizeLinear, DequantizeLinear, QLinear*, *Integer), and
    ``weight_bytes``, the bytes of its initialisers per element type (FLOAT, INT8, ...)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    ops: dict[str, int] = {}
    for node in model.graph.node:
        kind = node.op_type
        if "quantize" in kind.lower() or kind.startswith("QLinear") or kind.endswith("Integer"):
            ops[kind] = ops.get(kind, 0) + 1
    weight_bytes: dict[str, int] = {}
    for init in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type)
        weight_bytes[name] = weight_bytes.get(name, 0) + numpy_helper.to_array(init).nbytes
    return {"ops": ops, "weight_bytes": weight_bytes}


@contextlib.contextmanager
def _quiet_onnxruntime():
    """ONNX Runtime's quantisation tools log advice on the root logger; keep the output ours."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(before)


def pre_process(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended preparation for static quantisation: constant folding and
    graph optimisation (so that e.g. convolution biases are initialisers), shapes inferred."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet_onnxruntime():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


# ----------------------------------------------------------------------------- calibration


class _Recorder:
    """An ONNX Runtime session that keeps a copy of every input it is given."""

    def __init__(self, session, feeds: list[dict[str, np.ndarray]]) -> None:
        self._session = session
        self._feeds = feeds

    def run(self, names, feeds, *args, **kwargs):
        self._feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self._session.run(names, feeds, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def _holder(encoder) -> Any:
    """The object whose ``session`` attribute an ONNX encoder runs (the encoder, or its model)."""
    for obj in (encoder, getattr(encoder, "model", None)):
        if obj is not None and getattr(obj, "session", None) is not None:
            return obj
    raise QuantizeError(f"{type(encoder).__name__} does not run in ONNX Runtime")


def _reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    return Feeds()


def quantise_static(
    src: Path,
    dst: Path,
    cache: Path,
    feeds: list[dict[str, np.ndarray]] | None,
    op_types: Sequence[str] = OP_TYPES,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> Path:
    """``quantize_static`` of ``src`` into ``dst``: QDQ, int8 weights per channel, uint8
    activations with MinMax ranges from ``feeds`` (computed once, then read from ``cache``).
    ``only``: quantise these nodes alone; ``exclude``: keep these in fp32.

    The nodes quantised are named to ONNX Runtime one by one (those of
    :func:`quantisable_groups`): left to itself it also quantises MatMuls of two activations (an
    attention's scores and their product with the values), which no group holds, so no search
    could keep them in fp32. Nothing left to quantise: ``dst`` is a copy of ``src``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    if not cache.is_file() and not feeds:
        raise QuantizeError(f"{src.name}: no calibration inputs were recorded")
    excluded = sorted(set(exclude))
    if only is None:
        groups = quantisable_groups(src, op_types)
        only = [n for names in groups.values() for n in names if n not in set(excluded)]
    only = sorted(set(only) - set(excluded))
    if not only:  # ONNX Runtime reads an empty list as "every node"
        shutil.copyfile(src, dst)
        return dst
    with _quiet_onnxruntime():
        ort_quantize_static(
            str(src),
            str(dst),
            None if cache.is_file() else _reader(feeds or []),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=only,
            nodes_to_exclude=excluded or None,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True},
            calibration_cache_path=str(cache),
        )
    return dst


def encoder_speed(
    fp32: Path, int8: Path, feeds: Sequence[dict[str, np.ndarray]], threads: int = 0
) -> dict[str, float]:
    """Milliseconds per call of an encoder's fp32 and int8 models on ``SPEED_BATCHES`` of its
    calibration inputs, and the speed-up (fp32 time / int8 time). The two run in alternating
    rounds after a warm-up call each, and each model's fastest round counts: on shared cores the
    slower rounds measure the neighbours."""
    if not feeds:
        raise QuantizeError(f"{fp32.name}: no calibration inputs to time it on")
    sample = spread(feeds, SPEED_BATCHES)
    sessions = {"fp32": onnx_session(fp32, threads), "int8": onnx_session(int8, threads)}
    for session in sessions.values():
        session.run(None, sample[0])
    best = {k: math.inf for k in sessions}
    for _ in range(SPEED_ROUNDS):
        for k, session in sessions.items():
            t = time.perf_counter()
            for feed in sample:
                session.run(None, feed)
            best[k] = min(best[k], (time.perf_counter() - t) / len(sample))
    return {
        "fp32_ms": float(f"{best['fp32'] * 1e3:.4g}"),
        "int8_ms": float(f"{best['int8'] * 1e3:.4g}"),
        "speedup": round(best["fp32"] / best["int8"], 3),
        "batches": len(sample),
    }


# ----------------------------------------------------------------------------- clips


def media_path(store: FeatureStore, entry: Entry, data_root: Path | None) -> Path:
    """Where a store entry's video is: ``data_root`` (or the dataset folder the store records)
    joined with the entry's source."""
    root = data_root if data_root is not None else store.info.get("data_root")
    if not root:
        raise QuantizeError(
            f"{store.root}: the store does not record its dataset folder; give the folder its "
            "videos are in"
        )
    path = Path(root) / entry.source
    if not path.is_file():
        raise QuantizeError(
            f"{path}: not found (calibration reads the store's videos; give the dataset folder)"
        )
    return path


def spread(items: Sequence, n: int) -> list:
    """Up to ``n`` items of a sequence, evenly spaced, in order."""
    if n >= len(items):
        return list(items)
    return (
        [items[round(i * (len(items) - 1) / max(1, n - 1))] for i in range(n)]
        if n > 1
        else [items[len(items) // 2]]
    )


def read_segments(path: Path, spec, skip: int = 0, limit: int | None = None) -> list[Segment]:
    """Consecutive segments of a file as a stream cuts them: ``limit`` of them after ``skip``."""
    out: list[Segment] = []
    for i, seg in enumerate(SegmentSource(path, spec)):
        if i < skip:
            continue
        out.append(seg)
        if limit is not None and len(out) >= limit:
            break
    return out


def calibration_segments(
    store: FeatureStore, spec, n: int, data_root: Path | None
) -> tuple[list[list[Segment]], list[Entry]]:
    """Runs of consecutive segments from the middle of evenly spread training clips, ``n`` in
    all (as far as the clips hold them); and the clips read."""
    train = store.split("train")
    if not train:
        raise QuantizeError(f"{store.root} has no training videos to calibrate on")
    clips = spread(train, n)
    per_clip = max(1, math.ceil(n / len(clips)))
    runs, total = [], 0
    for entry in clips:
        skip = max(0, (entry.T - per_clip) // 2)
        run = read_segments(media_path(store, entry, data_root), spec, skip, per_clip)
        run = run[: max(0, n - total)]
        if run:
            runs.append(run)
            total += len(run)
    return runs, clips


def search_clips(
    store: FeatureStore,
    n_segments: int,
    data_root: Path | None,
    spec,
    calibration: Sequence[Entry],
) -> tuple[list[tuple[Entry, list[Segment]]], dict[str, int]]:
    """The clips the exclusion search measures on, and their segments per split: the validation
    split's (the test split's when there is none), then, while fewer than ``n_segments``, whole
    training clips the calibration did not read. A choice of layers made on a few held-out clips
    did not carry over: on 88 validation segments it reached 0.99 and moved 7 % of the test
    segments' labels (docs/live.md)."""
    split = "val" if store.split("val") else "test"
    clips = held_out_clips(store, store.split(split), n_segments, data_root, spec)
    counts = {split: sum(len(s) for _, s in clips)}
    if counts[split] < n_segments:
        read = {e.id for e in calibration}
        unread = [e for e in store.split("train") if e.id not in read]
        more = held_out_clips(store, unread, n_segments - counts[split], data_root, spec)
        if more:
            clips += more
            counts["train"] = sum(len(s) for _, s in more)
    return clips, counts


def held_out_clips(
    store: FeatureStore,
    entries: Sequence[Entry],
    n_segments: int,
    data_root: Path | None,
    spec,
) -> list[tuple[Entry, list[Segment]]]:
    """Whole clips of ``entries`` (evenly spread over them) until ``n_segments`` segments."""
    if n_segments < 1 or not entries:
        return []
    total_t = sum(e.T for e in entries) or 1
    share = max(1, round(len(entries) * min(1.0, n_segments / total_t)))
    out, total = [], 0
    for entry in spread(entries, share):
        segments = read_segments(media_path(store, entry, data_root), spec)
        if segments:
            out.append((entry, segments))
            total += len(segments)
        if total >= n_segments:
            break
    return out


# ----------------------------------------------------------------------------- measuring


def encode_clip(bundle: OnnxBundle, segments: list[Segment], context: float) -> dict:
    """A clip's features as ``Extractor.causal`` computes them (batches of BATCH_SEGMENTS)."""
    encoder = SegmentEncoder(bundle.extractor, context)
    parts = [
        encoder.encode(segments[i : i + BATCH_SEGMENTS])
        for i in range(0, len(segments), BATCH_SEGMENTS)
    ]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


@dataclass
class Scored:
    """One clip's features and per-segment probabilities (offline and live windows)."""

    features: dict[str, np.ndarray]
    offline: np.ndarray  # (T, C)
    live: np.ndarray  # (T, C)


def score(ckpt: Checkpoint, features: dict[str, np.ndarray]) -> Scored:
    x = model_input(ckpt, features)
    L = ckpt.train_config.seq_len
    return Scored(
        features,
        step_probabilities(ckpt.model, x, L),
        step_probabilities(ckpt.model, x, L, causal=True),
    )


def compare(reference: Sequence[Scored], candidate: Sequence[Scored]) -> Measure:
    """Per-segment agreement of the candidate's labels with the reference's, over all clips."""
    same_off, same_live, tv, n = 0, 0, 0.0, 0
    for r, c in zip(reference, candidate, strict=True):
        same_off += int((r.offline.argmax(1) == c.offline.argmax(1)).sum())
        same_live += int((r.live.argmax(1) == c.live.argmax(1)).sum())
        tv += float(0.5 * np.abs(r.live - c.live).sum(1).sum())
        n += len(r.live)
    n = max(n, 1)
    return Measure(same_off / n, same_live / n, tv / n, n)


@dataclass
class _Search:
    """The held-out clips, their fp32 scores and the sessions being swapped per trial."""

    ckpt: Checkpoint
    bundle: OnnxBundle
    clips: list[tuple[Entry, list[Segment]]]
    context: float
    reference: list[Scored]
    fp32_sessions: dict[str, Any]
    threads: int
    trials: list[dict] = field(default_factory=list)
    alone: dict[str, dict] = field(default_factory=dict)  # each encoder int8, the other fp32
    speed: dict[str, dict] = field(default_factory=dict)  # fp32 against all layers int8
    shipped: dict[str, dict] = field(default_factory=dict)  # fp32 against int8 with layers kept
    # why each group kept in fp32 was kept, in order: "labels" or "features"
    reasons: list[str] = field(default_factory=list)

    def measure(self, models: dict[str, Path | None], label: str) -> Measure:
        """Decisions with each encoder's given int8 file (None: fp32) against fp32's."""
        holders = {key: _holder(getattr(self.bundle.extractor, key)) for key in ENCODERS}
        try:
            for key, path in models.items():
                holders[key].session = (
                    self.fp32_sessions[key] if path is None else onnx_session(path, self.threads)
                )
            scored = [
                score(self.ckpt, encode_clip(self.bundle, segs, self.context))
                for _, segs in self.clips
            ]
        finally:
            for key in ENCODERS:
                holders[key].session = self.fp32_sessions[key]
        m = compare(self.reference, scored)
        m.cosine_min = {
            key: float(segment_cosines(self.reference, scored, key).min())
            for key, path in models.items()
            if path is not None
        }
        self.trials.append({"trial": label} | m.to_dict())
        log.info(
            "quantize: %s: agreement %.4f, cosine %s",
            label,
            m.agreement,
            " ".join(f"{k} {v:.4f}" for k, v in m.cosine_min.items()) or "-",
        )
        return m


# ----------------------------------------------------------------------------- the command


def _clip_metrics(
    y: np.ndarray, scored: Sequence[Scored], classes: list[str]
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for windows in ("offline", "live"):
        probs = np.stack([clip_probabilities(getattr(s, windows)) for s in scored])
        m = classification_metrics(y, probs, classes)
        prefix = "" if windows == "offline" else "live_"
        out[f"{prefix}accuracy"] = m["accuracy"]
        out[f"{prefix}f1"] = m["f1"]
    return out


def segment_cosines(
    reference: Sequence[Scored], candidate: Sequence[Scored], key: str
) -> np.ndarray:
    """The cosine similarity of each segment's ``key`` features to the reference's, all clips."""
    return np.concatenate(
        [
            cosine(c.features[key], r.features[key])
            for r, c in zip(reference, candidate, strict=True)
        ]
    )


def _cosines(reference: Sequence[Scored], candidate: Sequence[Scored]) -> dict:
    out = {}
    for key in ENCODERS:
        c = segment_cosines(reference, candidate, key)
        out[key] = {"mean": round(float(c.mean()), 6), "min": round(float(c.min()), 6)}
    return out


def held_out_report(
    ckpt: Checkpoint,
    store: FeatureStore,
    fp32: OnnxBundle,
    int8: OnnxBundle,
    context: float,
    data_root: Path | None,
) -> dict | None:
    """Agreement, accuracy and macro F1 (fp32, int8, change) and cosine on the test split."""
    entries = store.split("test")
    if not entries:
        return None
    index = {c: i for i, c in enumerate(ckpt.classes)}
    ref, cand, y = [], [], []
    for entry in entries:
        segments = read_segments(media_path(store, entry, data_root), fp32.extractor.spec)
        if not segments:
            continue
        ref.append(score(ckpt, encode_clip(fp32, segments, context)))
        cand.append(score(ckpt, encode_clip(int8, segments, context)))
        y.append(index[entry.label])
    if not ref:
        return None
    m = compare(ref, cand)
    y_true = np.array(y)
    a, b = _clip_metrics(y_true, ref, ckpt.classes), _clip_metrics(y_true, cand, ckpt.classes)
    change = {
        k: None if a[k] is None or b[k] is None else round(float(b[k]) - float(a[k]), 6) for k in a
    }
    return {
        "split": "test",
        "clips": len(ref),
        **m.to_dict(),
        "fp32": a,
        "int8": b,
        "change": change,
        "cosine": _cosines(ref, cand),
    }


def _file_sizes(folder: Path, files: dict[str, str]) -> dict:
    out = {}
    for key in ENCODERS:
        a, b = folder / files[key], folder / files[f"{key}_int8"]
        fp32, int8 = graph_summary(a), graph_summary(b)
        out[key] = {
            "fp32_bytes": a.stat().st_size,
            "int8_bytes": b.stat().st_size,
            "fp32_weight_bytes": sum(fp32["weight_bytes"].values()),
            "int8_weight_bytes": sum(int8["weight_bytes"].values()),
            "int8_ops": int8["ops"],
        }
    return out


def quantize_checkpoint(
    checkpoint: str | Path | Checkpoint,
    feats: str | Path | FeatureStore,
    out: str | Path,
    options: QuantizeOptions = QuantizeOptions(),
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Export ``checkpoint`` to ``out`` with statically quantised int8 encoders (see the module
    docstring); writes ``OUT/quantization.json`` and returns its content."""
    say = progress or (lambda msg: None)
    start = time.perf_counter()
    if not 0 < options.target_agreement <= 1:
        raise QuantizeError(f"target agreement {options.target_agreement} is not in (0, 1]")
    if not 0 <= options.min_cosine <= 1:
        raise QuantizeError(f"minimum cosine {options.min_cosine} is not in [0, 1]")
    configure_cpu(options.threads)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    store = feats if isinstance(feats, FeatureStore) else FeatureStore.open(feats)
    check_compatible(ckpt, store)
    for split in ("train", "val", "test"):  # every video read is where it is said to be
        for entry in store.split(split):
            media_path(store, entry, options.data_root)
    out = Path(out)
    say("export (fp32)")
    export_checkpoint(ckpt, out, int8=False, audio_context_seconds=options.audio_context_seconds)
    manifest_path = out / MANIFEST
    manifest = io.loads(manifest_path.read_text(encoding="utf-8"))
    fp32 = load_onnx(out, "fp32", options.threads)
    spec = fp32.extractor.spec
    context = spec.audio_context_seconds
    holders = {key: _holder(getattr(fp32.extractor, key)) for key in ENCODERS}
    sessions = {key: holders[key].session for key in ENCODERS}

    say("calibration (training split)")
    feeds: dict[str, list[dict[str, np.ndarray]]] = {key: [] for key in ENCODERS}
    runs, calibration_clips = calibration_segments(
        store, spec, options.calibration_segments, options.data_root
    )
    for key in ENCODERS:
        holders[key].session = _Recorder(sessions[key], feeds[key])
    try:
        for run in runs:
            encode_clip(fp32, run, context)
    finally:
        for key in ENCODERS:
            holders[key].session = sessions[key]
    calibration = {
        "split": "train",
        "clips": len(calibration_clips),
        "segments": sum(map(len, runs)),
        "batches": {key: len(feeds[key]) for key in ENCODERS},
    }

    say("held-out segments")
    clips, search_counts = search_clips(
        store, options.search_segments, options.data_root, spec, calibration_clips
    )
    if not clips:
        raise QuantizeError(f"{store.root}: no held-out segments to measure decisions on")
    reference = [score(ckpt, encode_clip(fp32, segs, context)) for _, segs in clips]
    search = _Search(ckpt, fp32, clips, context, reference, sessions, options.threads)

    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=out))
    try:
        sources = {key: pre_process(out / FILES[key], work / f"{key}.pre.onnx") for key in ENCODERS}
        excluded, groups, ranking, full = _search(search, out, sources, work, feeds, options, say)
        say("int8 models")
        _write_int8(search, out, sources, work, excluded, groups, feeds, options)
        ships = quantised(search, options)
        if any(k in search.shipped and k not in ships for k in ENCODERS):  # not what was searched
            say("search: as shipped")
            search.measure(
                {k: out / INT8_FILES[k] for k in ships},
                f"as shipped: {', '.join(k for k in ENCODERS if k not in ships)} fp32 whole",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest["files"] = dict(manifest["files"]) | {  # an encoder kept fp32 whole: its fp32 file
        f"{key}_int8": INT8_FILES[key] if key in ships else FILES[key] for key in ENCODERS
    }
    io.write_json(manifest_path, manifest)
    int8 = load_onnx(out, "int8", options.threads)
    say("test split")
    test = held_out_report(ckpt, store, fp32, int8, context, options.data_root)
    report = {
        "format": FORMAT,
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, Checkpoint) else None,
        "features": str(store.root),
        "feature_spec": spec.to_dict(),
        "method": METHOD | {"op_types": list(options.op_types)},
        "calibration": calibration,
        "search": {
            "split": next(iter(search_counts)),
            "segments_per_split": search_counts,
            "clips": len(clips),
            "segments": sum(len(s) for _, s in clips),
            "target_agreement": options.target_agreement,
            "min_saving": options.min_saving,
            "speed": search.speed,
            "speed_shipped": search.shipped,
            "kept_fp32_whole": [k for k in ENCODERS if k not in ships],
            "all_quantised": full.to_dict(),
            "encoders_alone": search.alone,
            "groups": ranking,
            "min_cosine": options.min_cosine,
            "kept_fp32": [
                {"model": k, "group": g, "nodes": len(groups[k][g]), "for": why}
                for (k, g), why in zip(excluded, search.reasons, strict=True)
            ],
            "trials": search.trials,
        },
        "test": test,
        "files": _file_sizes(out, manifest["files"]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    io.write_json(out / REPORT, report)
    return report


def saving(search: _Search, timing: dict) -> float:
    """The share of the fp32 encoders' time per segment (both encoders, as first timed) that an
    encoder's int8 model saves."""
    total = sum(search.speed[k]["fp32_ms"] for k in ENCODERS)
    return (timing["fp32_ms"] - timing["int8_ms"]) / total


def quantised(search: _Search, options: QuantizeOptions) -> list[str]:
    """The encoders whose int8 saves enough time to ship (all of them before both are timed, or
    with ``min_saving`` 0): fully quantised, and again with the layers the search kept in fp32."""
    if options.min_saving <= 0 or len(search.speed) < len(ENCODERS):
        return list(ENCODERS)
    return [
        k
        for k in ENCODERS
        if all(
            saving(search, t[k]) >= options.min_saving
            for t in (search.speed, search.shipped)
            if k in t
        )
    ]


def _write_int8(
    search: _Search,
    out: Path,
    sources: dict[str, Path],
    work: Path,
    excluded: list[tuple[str, str]],
    groups: dict[str, dict[str, list[str]]],
    feeds: dict[str, list],
    options: QuantizeOptions,
) -> None:
    """``OUT/*.int8.onnx`` of the encoders that ship int8, the groups the search kept in fp32
    left out; one that no longer saves enough time with them is timed out (its file removed)."""
    for key in ENCODERS:  # no stale int8 file of an earlier run beside one kept fp32 whole
        (out / INT8_FILES[key]).unlink(missing_ok=True)
    for key in quantised(search, options):
        nodes = [n for k, g in excluded for n in groups[k][g] if k == key]
        quantise_static(
            sources[key],
            out / INT8_FILES[key],
            work / f"{key}.calibration.json",
            None,
            options.op_types,
            exclude=nodes,
        )
        if nodes:  # with layers kept in fp32: still fast enough to ship?
            timing = encoder_speed(
                out / FILES[key], out / INT8_FILES[key], feeds[key], options.threads
            )
            search.shipped[key] = timing | {"saving": round(saving(search, timing), 4)}
            if key not in quantised(search, options):
                (out / INT8_FILES[key]).unlink()


def _search(
    search: _Search,
    out: Path,
    sources: dict[str, Path],
    work: Path,
    feeds: dict[str, list],
    options: QuantizeOptions,
    say: Callable[[str], None],
) -> tuple[list[tuple[str, str]], dict[str, dict[str, list[str]]], list[dict], Measure]:
    """(groups kept in fp32, every quantisable group, the per-group ranking, the measure of the
    candidate with every encoder fast enough in int8 fully quantised)."""
    groups = {key: quantisable_groups(sources[key], options.op_types) for key in ENCODERS}
    caches = {key: work / f"{key}.calibration.json" for key in ENCODERS}
    built: dict[tuple[str, tuple], Path] = {}

    def model(key: str, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None):
        tag = ("only",) + only if only is not None else exclude
        if (key, tag) not in built:
            nodes = [n for g in (only if only is not None else exclude) for n in groups[key][g]]
            path = work / f"{key}.{len(built)}.onnx"
            quantise_static(
                sources[key],
                path,
                caches[key],
                feeds[key],
                options.op_types,
                only=nodes if only is not None else None,
                exclude=nodes if only is None else (),
            )
            built[(key, tag)] = path
        return built[(key, tag)]

    def drop(key: str, tag: tuple) -> None:  # a candidate no later trial needs (they are large)
        if tag:
            built.pop((key, tag)).unlink(missing_ok=True)

    say("speed: fp32 against int8 on the calibration inputs")
    for key in ENCODERS:
        search.speed[key] = encoder_speed(out / FILES[key], model(key), feeds[key], search.threads)
    for key in ENCODERS:
        search.speed[key]["saving"] = round(saving(search, search.speed[key]), 4)
        log.info(
            "quantize: %s int8 saves %.3f of the encoders' time", key, search.speed[key]["saving"]
        )
    fast = quantised(search, options)
    say("search: all layers int8" + ("" if fast == list(ENCODERS) else f" ({', '.join(fast)})"))
    full = search.measure(
        {key: model(key) for key in fast},
        "all layers int8" if fast == list(ENCODERS) else f"{', '.join(fast) or 'none'} int8",
    )
    if full.passes(options):
        return [], groups, [], full
    # An encoder that passes alone stays int8 throughout; the layers of the others are searched
    # (of both when each passes alone but not the two together).
    alone: dict[str, Measure] = {}
    if len(fast) > 1:
        say("search: each encoder alone")
        alone = {key: search.measure({key: model(key)}, f"{key} alone int8") for key in fast}
        search.alone = {key: m.to_dict() for key, m in alone.items()}
    suspects = [k for k in alone if not alone[k].passes(options)]
    say("search: each layer alone")
    measured = []
    for key in suspects or fast:
        for g in groups[key]:
            m = search.measure({key: model(key, only=(g,))}, f"{key} {g} alone")
            drop(key, ("only", g))
            measured.append((key, g, m))
    by_labels = sorted(measured, key=lambda t: (t[2].agreement, -t[2].probability_change))
    by_features = sorted(by_labels, key=lambda t: t[2].cosine_min[t[0]])
    ranking = [{"model": k, "group": g} | m.to_dict() for k, g, m in by_labels]  # worst first
    excluded: list[tuple[str, str]] = []
    m = full
    while len(excluded) < len(measured):
        if m.agreement < options.target_agreement:
            reason, pool = "labels", by_labels
        else:
            reason, pool = (
                "features",
                [t for t in by_features if t[0] in m.below(options.min_cosine)],
            )
        left = [(k, g) for k, g, _ in pool if (k, g) not in excluded]
        if not left:
            break
        key, g = left[0]
        before = tuple(x for kk, x in excluded if kk == key)
        excluded.append((key, g))
        search.reasons.append(reason)
        if before:
            drop(key, before)
        kept = {k: tuple(x for kk, x in excluded if kk == k) for k in fast}
        say(f"search: {len(excluded)} layer(s) in fp32")
        m = search.measure(
            {k: model(k, exclude=kept[k]) for k in fast},
            f"{len(excluded)} layer(s) kept fp32 (last: {key} {g}, for the {reason})",
        )
        if m.passes(options):
            break
    return excluded, groups, ranking, full


def _lowest(trial: dict) -> str:
    cos = trial.get("cosine_min") or {}
    return " / ".join(f"{k} {v:.4f}" for k, v in cos.items()) or "n/a (all fp32)"


def summary_lines(report: dict) -> list[str]:
    """What ``avarnet quantize`` prints: the layers kept in fp32, agreement, accuracy change."""
    s = report["search"]
    kept = ", ".join(f"{k['model']} {k['group']}" for k in s["kept_fp32"]) or "none"
    lines = [
        f"calibrated on {report['calibration']['segments']} training segments; "
        f"layers kept in fp32: {kept}",
        f"{s['split']} ({s['segments']} segments): all layers int8 agree on "
        f"{s['all_quantised']['agreement']:.4f} of segment labels (target {s['target_agreement']}), "
        f"features down to cosine {_lowest(s['all_quantised'])} (floor {s['min_cosine']})",
    ]
    if s["kept_fp32"]:
        last = s["trials"][-1]
        shipped = " (as shipped)" if last["trial"].startswith("as shipped") else ""
        lines.append(
            f"  with the layers kept{shipped}: {last['agreement']:.4f} of segment labels, features "
            f"down to cosine {_lowest(last)}"
        )
    t = report["test"]
    if t is None:
        lines.append("test split: empty (no accuracy change measured)")
    else:

        def f(v):
            return "n/a" if v is None else f"{v:.4f}"

        lines.append(
            f"test ({t['clips']} clips, {t['segments']} segments): label agreement with fp32 "
            f"{f(t['agreement_offline'])} offline, {f(t['agreement_live'])} live; "
            f"cosine video {t['cosine']['video']['min']:.4f} / audio "
            f"{t['cosine']['audio']['min']:.4f} (min)"
        )
        for w, p in (("offline", ""), ("live", "live_")):
            lines.append(
                f"  {w:7s} accuracy {f(t['fp32'][p + 'accuracy'])} -> "
                f"{f(t['int8'][p + 'accuracy'])} ({f(t['change'][p + 'accuracy'])}), macro F1 "
                f"{f(t['fp32'][p + 'f1'])} -> {f(t['int8'][p + 'f1'])} ({f(t['change'][p + 'f1'])})"
            )
    for key, sizes in report["files"].items():
        speed = s.get("speed_shipped", {}).get(key) or s.get("speed", {}).get(key)
        timed = (
            f"int8 {speed['int8_ms']:.1f} ms against fp32 {speed['fp32_ms']:.1f} ms a call, "
            f"saving {100 * speed['saving']:.1f} % of the encoders' time"
            if speed
            else ""
        )
        if key in s.get("kept_fp32_whole", ()):
            lines.append(f"{key}: kept fp32 whole: {timed} ({100 * s['min_saving']:g} % asked)")
        else:
            lines.append(
                f"{key}: weights {sizes['fp32_weight_bytes'] / 1e6:.2f} MB fp32 -> "
                f"{sizes['int8_weight_bytes'] / 1e6:.2f} MB int8" + (f"; {timed}" if timed else "")
            )
    return lines


__all__ = [
    "Measure",
    "QuantizeError",
    "QuantizeOptions",
    "encoder_speed",
    "graph_summary",
    "node_group",
    "quantisable_groups",
    "quantise_static",
    "quantize_checkpoint",
    "summary_lines",
]
