"""Weakly supervised anomaly detection: multiple-instance training from video-level labels.

Untrimmed benchmarks such as XD-Violence label training videos as a whole (violent or not) while
the test truth is per frame. Every temporal model of the registry trains here the same way: its
two-way head (``normal``, ``anomaly``) gives a per-snippet anomaly logit a_t = l_anomaly - l_normal;
the video's logit is the mean of its top-k snippet logits, k = floor(T / topk_divisor) + 1, and
binary cross-entropy ties it to the video label (the MIL objective of the XD-Violence reference
code). Optional terms, named :class:`WeakConfig` fields: smoothness, the mean squared difference of
neighbouring snippet scores; sparsity, the mean snippet score of violent videos (Sultani et al.,
CVPR 2018); consistency of the scores under time reversal or a random reordering of the snippets.
Every stage of a multi-stage model is trained; the last one scores.

The default objective, ``refine``, trains in two stages (after MIST, Feng et al., CVPR 2021): a
per-snippet scorer learns from the MIL term alone, then the model learns from the scorer's snippet
probabilities as soft pseudo-labels plus the MIL term. The scorer reads each snippet, the snippet
minus its video's mean and the snippet's local roughness (change within two snippets), so it
cannot fire a few snippets away from the evidence, which a model with a whole-video receptive
field can learn to do under MIL; ``objective="mil"`` trains the model by MIL directly (the
reference).

A snippet's anomaly score is sigmoid(a_t) = p(anomaly); at test time the whole video is scored at
once and the scores of the visual crops are averaged. Frame scores repeat each snippet's score over
its frames (16 for the official features) and are compared with the frame truth of the store.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import Checkpoint, save_checkpoint
from .config import (
    NORMAL_CLASS,
    SCORER_INPUTS,
    WEAK_OBJECTIVES,
    DictMixin,
    ModelConfig,
    TrainConfig,
)
from .data import MODALITIES, Normalizer, missing_mask, select_inputs
from .inference import anomaly_scores, model_input, step_probabilities
from .io import write_json
from .metrics import frame_level_metrics, snippet_to_frame_scores
from .models import count_parameters, create_model
from .parallel import Ranks, start, usable_cores
from .progress import progress_bar
from .runtime import precision_autocast, resolve_device
from .store import Entry, FeatureStore, StoreError
from .train import (
    BEST_CHECKPOINT,
    TrainError,
    TrainResult,
    adam,
    fit,
    model_config_for,
    run_epoch,
    seed_everything,
)

log = logging.getLogger("avarnet")

WEAK_TASK = "weak-detection"  # Checkpoint.extra["task"] of weakly supervised detectors
WEAK_CLASSES = (NORMAL_CLASS, "anomaly")  # the two-way head; anomaly score = p(anomaly)
ANOMALY_INDEX = 1
EVAL_CHUNK = 4096  # snippets per forward pass when a whole video is scored
DEFAULT_PLOTS = 12  # per-video score curves written by evaluate_weak
METRICS_FILE = "metrics.json"
CURVES_DIR = "curves"
FLANK_MARGIN = 4  # snippets around each annotated event compared with the event by flank_check
OBJECTIVES = WEAK_OBJECTIVES
SCORER_HISTORY_FILE = "snippet_scorer_history.json"  # first stage of "refine"
SCORER_LR = 1e-3  # learning rate of the per-snippet scorer
SCORER_RESTART_SEED = 7919  # start r of the scorer draws its weights from seed + r * this
SCORER_TRIAL_EPOCHS = 5  # epochs each start of the scorer trains before one is kept
# Fewest training batches an epoch needs before training is split over processes by default:
# starting them takes a few seconds, an epoch of this many full-length batches of 32 about half a
# minute. Cautious: two processes were faster at 19 batches an epoch too (docs/weak-supervision.md).
PARALLEL_MIN_BATCHES = 64
HEADLINE_AP = "frame_pr_auc"  # the AP published XD-Violence numbers use
AP_DEFINITIONS = {
    "frame_pr_auc": "headline AP, as published XD-Violence code (XDVioDet, RTFM) computes it: "
    "sklearn.metrics.auc(recall, precision) on precision_recall_curve over all test frames "
    "(trapezoid rule between operating points)",
    "frame_ap": "step-wise AP: scikit-learn average_precision_score over all test frames "
    "(sum over thresholds of (R_n - R_{n-1}) * P_n, no interpolation)",
    "frame_roc_auc": "scikit-learn roc_auc_score over all test frames",
}


@dataclass(frozen=True)
class WeakConfig(DictMixin):
    """Weakly supervised (multiple-instance) training settings."""

    model: str = "mtcn"
    modality: str = "fused"  # "fused" | "audio" | "video"
    fusion: str = "early"
    epochs: int = 50
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    max_seq_len: int = 200  # longer training videos are subsampled uniformly to this many snippets
    topk_divisor: int = 16  # k = T // topk_divisor + 1 snippets pooled per video
    # "refine": a per-snippet scorer trained by MIL first, then the model trained on its snippet
    # scores as soft pseudo-labels (+ the MIL term); "mil": the model trained by MIL directly
    objective: str = "refine"
    smooth_weight: float = 0.0  # weight of the mean squared difference of neighbouring scores
    sparsity_weight: float = 0.0  # weight of the mean score of violent videos
    # weight of the mean squared gap between the scores of a video and of its time reversal (mapped
    # back): keeps the scores on the snippets that carry the evidence
    reversal_weight: float = 0.0
    # the same gap under a random reordering of each video's snippets
    permutation_weight: float = 0.0
    layers: int = 0  # dilated layers per MTCN stage (receptive field); 0: ModelConfig's default
    local_epochs: int = 30  # epochs of the per-snippet scorer ("refine")
    local_hidden: int = 128  # width of the per-snippet scorer
    # what the per-snippet scorer reads: "context" (the snippet, the snippet minus its video's
    # mean, its local roughness) or "snippet" (the snippet alone)
    scorer_inputs: str = "context"
    # scorers started from different initial weights, SCORER_TRIAL_EPOCHS epochs each; the one
    # with the lowest validation MIL loss trains on to local_epochs
    scorer_restarts: int = 3
    pseudo_weight: float = 1.0  # weight of the pseudo-label term ("refine")
    all_crops: bool = True  # every visual crop is a training sample (official practice)
    autocast: str = "fp32"  # "bf16": the model runs under bfloat16 autocast (loss in float32)
    prefetch: int = 4  # batches read and collated ahead on a background thread (0: inline)
    modality_dropout: float = 0.0  # probability of blanking one sense per training video
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    early_stop_patience: int = 10
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # CPU threads in all (0: every usable core)
    # CPU training processes, each on its share of every batch (gradients averaged); 0: two where
    # two or more cores are free and an epoch has PARALLEL_MIN_BATCHES batches, else one
    processes: int = 0


# -- objective ---------------------------------------------------------------------------------


def anomaly_logit(logits: torch.Tensor) -> torch.Tensor:
    """(..., 2) two-way logits (or log-probabilities) -> (...) log-odds of the anomaly class."""
    return logits[..., ANOMALY_INDEX] - logits[..., 1 - ANOMALY_INDEX]


def topk_counts(lengths: torch.Tensor, divisor: int) -> torch.Tensor:
    """k = floor(T / divisor) + 1 per video (never more than T); lengths (B,) -> (B,)."""
    return torch.minimum(lengths // divisor + 1, lengths.clamp(min=1))


def topk_pool(a: torch.Tensor, mask: torch.Tensor, divisor: int) -> torch.Tensor:
    """Mean of the k largest valid values per row: a (B, L), mask (B, L) -> (B,)."""
    B, L = a.shape
    k = topk_counts(mask.sum(1), divisor)  # (B,)
    ranked = a.masked_fill(~mask, float("-inf")).sort(dim=1, descending=True).values  # (B, L)
    take = torch.arange(L, device=a.device)[None, :] < k[:, None]  # (B, L)
    return torch.where(take, ranked, torch.zeros_like(ranked)).sum(1) / k.to(a.dtype)


def reversed_order(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) index map reversing each row's valid prefix; padding keeps its place."""
    B, L = mask.shape
    n = mask.sum(1, keepdim=True)  # (B, 1)
    t = torch.arange(L, device=mask.device)[None, :].expand(B, L)  # (B, L)
    return torch.where(t < n, n - 1 - t, t)


def reorder(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, idx[b, t]] for x (B, L, ...) and an index map idx (B, L)."""
    B, L = idx.shape
    return x.gather(1, idx.view(B, L, *([1] * (x.dim() - 2))).expand_as(x))


def reverse_valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse each row's valid prefix in time, padding left in place: x (B, L, ...), mask (B, L)."""
    return reorder(x, reversed_order(mask))


def order_gap(
    model: torch.nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    logits: torch.Tensor,
    idx: torch.Tensor,
) -> torch.Tensor:
    """Mean squared gap between last-stage scores of x and of its snippets reordered by idx (mapped back).

    The MIL loss cannot tell where in a violent video the high scores are, and a model with a wide
    receptive field can learn to fire next to the evidence instead (a few snippets early or late).
    A detector that reads each snippet's own evidence gives the same scores after reordering and
    mapping back; a shifted one does not, and pays for it here (a detector firing symmetrically on
    both sides of the evidence is invariant to reversal, so that term does not catch it).
    x: (B, L, D); mask: (B, L); logits: (S, B, L, 2) of x; idx: (B, L) permutation per row.
    """
    p = torch.sigmoid(anomaly_logit(logits[-1]))  # (B, L)
    moved = model(reorder(x, idx), mask)  # (S, B, L, 2) in the new order
    p_moved = torch.sigmoid(anomaly_logit(moved[-1]))  # (B, L)
    back = reorder(p_moved, idx.argsort(dim=1))  # (B, L) in the original order
    return ((p - back) ** 2)[mask].mean()


def reversal_gap(
    model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    """:func:`order_gap` for the time reversal of each video."""
    return order_gap(model, x, mask, logits, reversed_order(mask))


def random_order(mask: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) index map shuffling each row's valid prefix at random; padding keeps its place."""
    B, L = mask.shape
    keys = torch.rand(B, L, generator=gen).to(mask.device)  # (B, L) in [0, 1)
    t = torch.arange(L, device=mask.device)[None, :].expand(B, L)
    return torch.where(mask, keys, 2.0 + t.to(keys.dtype)).argsort(dim=1)


def permutation_gap(
    model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    """:func:`order_gap` for a random reordering of each video: unlike reversal, it also charges
    a detector that fires symmetrically on both sides of the evidence."""
    return order_gap(model, x, mask, logits, random_order(mask))


def pseudo_label_loss(
    logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of every stage's snippet logits against soft snippet targets, summed
    over stages. logits: (S, B, L, 2); mask: (B, L); target: (B, L) in [0, 1]."""
    a = anomaly_logit(logits)  # (S, B, L)
    per = F.binary_cross_entropy_with_logits(a, target.expand_as(a), reduction="none")
    return per[:, mask].mean(dim=1).sum()


def mil_loss(
    logits: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, cfg: WeakConfig
) -> torch.Tensor:
    """MIL objective summed over stages.

    logits: (S, B, L, 2); mask: (B, L) True at valid snippets; y: (B,) video labels in {0, 1}.
    """
    S = logits.shape[0]
    pair = mask[:, 1:] & mask[:, :-1]  # (B, L-1) both neighbours valid
    violent = mask & (y[:, None] > 0.5)  # (B, L)
    loss = logits.new_zeros(())
    for s in range(S):
        a = anomaly_logit(logits[s])  # (B, L)
        loss = loss + F.binary_cross_entropy_with_logits(topk_pool(a, mask, cfg.topk_divisor), y)
        p = torch.sigmoid(a)  # (B, L)
        if cfg.smooth_weight > 0 and pair.any():
            loss = loss + cfg.smooth_weight * ((p[:, 1:] - p[:, :-1]) ** 2)[pair].mean()
        if cfg.sparsity_weight > 0 and violent.any():
            loss = loss + cfg.sparsity_weight * p[violent].mean()
    return loss


def weak_objective(
    model: torch.nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    y: torch.Tensor,
    cfg: WeakConfig,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """The full loss of one batch: MIL (+ smoothness, sparsity) + order consistency terms, and the
    pseudo-label term when snippet targets (B, L) are given."""
    logits = model(x, mask)  # (S, B, L, 2)
    loss = mil_loss(logits, mask, y, cfg)
    if cfg.reversal_weight > 0:
        loss = loss + cfg.reversal_weight * reversal_gap(model, x, mask, logits)
    if cfg.permutation_weight > 0:
        loss = loss + cfg.permutation_weight * permutation_gap(model, x, mask, logits)
    if target is not None and cfg.pseudo_weight > 0:
        loss = loss + cfg.pseudo_weight * pseudo_label_loss(logits, mask, target)
    return loss


# -- per-snippet scorer ("refine", first stage) ---------------------------------------------


class SnippetScorer(torch.nn.Module):
    """A two-layer perceptron on each snippet's features: its score can only come from the snippet
    (and, with ``context``, from how it differs from its video and its close neighbours), never
    from evidence a few snippets away. Output: two-way logits (1, B, L, 2) like the registered
    models (normal logit 0).

    ``context`` adds two views of each snippet to its features: the snippet minus its video's
    mean (a per-video scene offset cancels) and its local roughness, log(1 + the mean squared
    change between neighbouring snippets within ``ROUGHNESS_WINDOW`` snippets) (evidence that is
    only in change over time)."""

    def __init__(self, input_dim: int, hidden: int, dropout: float = 0.3, context: bool = False):
        super().__init__()
        self.context = context
        self.net = torch.nn.Sequential(
            torch.nn.Linear(input_dim * (3 if context else 1), hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.context:
            x = torch.cat([x, *snippet_context(x, mask)], dim=-1)
        a = self.net(x).squeeze(-1).masked_fill(~mask, 0.0)  # (B, L)
        return torch.stack([torch.zeros_like(a), a], dim=-1)[None]  # (1, B, L, 2)


ROUGHNESS_WINDOW = 5  # snippets over which SnippetScorer's local roughness is averaged


def snippet_context(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x minus its video's mean, local roughness), both (B, L, D), 0 at padded snippets.

    Roughness at t: log(1 + the mean of (x[u] - x[u-1])^2 over the valid pairs u within
    ``ROUGHNESS_WINDOW // 2`` snippets of t), 0 for a one-snippet video. The logarithm keeps a
    large step (an event's edge) from dwarfing the snippet's own features: with the plain mean
    the scorer stayed at chance on a regime with such steps (docs/weak-supervision.md)."""
    m = mask[..., None].to(x.dtype)  # (B, L, 1)
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
    pair = m[:, 1:] * m[:, :-1]  # (B, L-1, 1): both neighbours valid
    d2 = F.pad((x[:, 1:] - x[:, :-1]) ** 2 * pair, (0, 0, 1, 0))  # (B, L, D): change into t
    w = ROUGHNESS_WINDOW
    total = F.avg_pool1d(d2.transpose(1, 2), w, 1, w // 2, count_include_pad=True)  # (B, D, L)
    count = F.avg_pool1d(
        F.pad(pair, (0, 0, 1, 0)).transpose(1, 2), w, 1, w // 2, count_include_pad=True
    )
    rough = torch.log1p(total / count.clamp(min=1e-6)).transpose(1, 2)  # (B, L, D)
    return (x - mean) * m, rough * m


# -- data --------------------------------------------------------------------------------------


AUTOCAST_DTYPES = ("fp32", "bf16")
BUCKET_POOL = 50  # batches whose samples are sorted by length together (LengthBatches)


def autocast_for(precision: str, device: torch.device):
    """The autocast context of a training step (``WeakConfig.autocast``): runtime's one rule, so
    bf16 is refused with one line where the device lacks it."""
    return precision_autocast(precision, device, ("fp32", "bf16"))


class MaskDropout(torch.nn.Module):
    """Inverted dropout like :class:`torch.nn.Dropout` (zero with probability p, scale the rest by
    1 / (1 - p)), drawing a uniform mask instead of ``bernoulli_``: on CPU that halves the cost,
    which is otherwise a tenth of a weak MTCN step."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        keep = torch.rand(x.shape, device=x.device, dtype=torch.float32) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def cheap_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every :class:`torch.nn.Dropout` of ``model`` by :class:`MaskDropout` (same p, same
    distribution; dropout has no parameters, so checkpoints are unchanged). In place; returns it."""
    for name, child in model.named_children():
        if type(child) is torch.nn.Dropout:
            setattr(model, name, MaskDropout(child.p))
        else:
            cheap_dropout(child)
    return model


class LengthBatches(Sampler):
    """Batches of samples of similar length, so a batch is padded to little more than its own
    longest sample (not the data set's).

    Each epoch the samples are shuffled, cut into pools of ``BUCKET_POOL`` batches, sorted by
    length within a pool, cut into batches, and the batches shuffled. Without a generator the
    order is fixed: sorted by length (validation, scoring).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator=None):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.generator = batch_size, generator

    def _batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if self.generator is None:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i : i + bs].tolist() for i in range(0, n, bs)]
        order = torch.randperm(n, generator=self.generator).numpy()
        span, batches = bs * BUCKET_POOL, []
        for s in range(0, n, span):
            pool = order[s : s + span]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i : i + bs].tolist() for i in range(0, len(pool), bs)]
        perm = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in perm]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        n, bs, span = len(self.lengths), self.batch_size, self.batch_size * BUCKET_POOL
        if self.generator is None:
            return math.ceil(n / bs)
        return sum(math.ceil(min(span, n - s) / bs) for s in range(0, n, span))


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Prefetch:
    """Iterates a DataLoader on a background thread, ``depth`` batches ahead, so reading,
    normalising and collating the next batches overlaps the training step (file reads and numpy
    release the GIL). An error in the loader is raised in the consumer."""

    def __init__(self, loader: DataLoader, depth: int):
        self.loader, self.depth = loader, depth

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        if self.depth < 1:
            yield from self.loader
            return
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for b in self.loader:
                    if not put(b):
                        return
                put(_END)
            except BaseException as e:  # handed to the consumer, raised there
                put(_Failed(e))

        thread = threading.Thread(target=work, name="weak-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            stop.set()
            thread.join()


def video_label(entry: Entry) -> int:
    """Binary video label: ``extra["binary"]`` when the store has it, else label != normal."""
    extra = entry.extra or {}
    return int(extra["binary"]) if "binary" in extra else int(entry.label != NORMAL_CLASS)


def crop_count(entry: Entry) -> int:
    return int((entry.extra or {}).get("crops", 1))


def read_tensors(store: FeatureStore, entry: Entry, crop: int = 0) -> dict[str, np.ndarray]:
    """video (T, Dv) of one crop (0 = centre), audio (T, Da), audio_mask (T,), frame_labels if any."""
    path = store.root / entry.file
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            out = {k: f.get_tensor(k) for k in ("audio", "audio_mask", "frame_labels") if k in keys}
            out["video"] = f.get_slice("video_crops")[crop] if crop > 0 else f.get_tensor("video")
    except FileNotFoundError:
        raise StoreError(f"feature file missing: {path}") from None
    except Exception as e:
        raise StoreError(f"cannot read feature file {path}: {e}") from None
    return out


def fit_stream_normalizer(
    store: FeatureStore, entries: Sequence[Entry], modality: str
) -> Normalizer:
    """:meth:`Normalizer.fit_stream` over the centre crop of ``entries``, one video in memory at a
    time; segments without audio are left out, as in :func:`avarnet.train.fit_normalizer`."""

    def arrays():
        for e in entries:
            t = read_tensors(store, e)
            x = select_inputs(t, modality)
            blank = missing_mask(t, modality)
            keep = None if blank is None else ~blank.any(1)
            yield x[keep] if keep is not None and keep.any() else x

    return Normalizer.fit_stream(arrays())


def uniform_indices(T: int, max_len: int) -> np.ndarray:
    """All of 0..T-1, or ``max_len`` of them spread evenly (the reference code's uniform_extract)."""
    if T <= max_len:
        return np.arange(T)
    return np.linspace(0, T - 1, max_len).astype(np.int64)


class WeakDataset(Dataset):
    """One sample per (video, crop): normalised input (l, D) with l <= max_len, and the video label.

    ``targets`` (item index -> (l,) snippet targets), when set, adds a ``target`` to each sample.
    """

    def __init__(
        self,
        store: FeatureStore,
        entries: Sequence[Entry],
        modality: str,
        norm: Normalizer,
        max_len: int,
        all_crops: bool,
    ):
        self.store, self.modality, self.norm, self.max_len = store, modality, norm, max_len
        crops = all_crops and modality != "audio"
        self.items = [(e, c) for e in entries for c in (range(crop_count(e)) if crops else [0])]
        self.targets: dict[int, np.ndarray] | None = None

    def lengths(self) -> list[int]:
        """Training length of every sample (after subsampling to max_len), from the index."""
        return [min(e.T, self.max_len) for e, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        entry, crop = self.items[i]
        t = read_tensors(self.store, entry, crop)
        x = self.norm(select_inputs(t, self.modality), missing_mask(t, self.modality))  # (T, D)
        out = {
            "x": x[uniform_indices(len(x), self.max_len)],
            "y": float(video_label(entry)),
            "i": i,
        }
        if self.targets is not None:
            out["target"] = self.targets[i]
        return out


def weak_collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Samples of :class:`WeakDataset` -> x (B, L, D) zero-padded to the batch's longest, mask
    (B, L), y (B,), i (B,) and target (B, L) when the samples carry one. Filled in numpy: padding
    each sample with ``F.pad`` first cost 20-40 times as much for (200, 1152) samples."""
    lengths = [len(b["x"]) for b in batch]
    B, L, D = len(batch), max(lengths), batch[0]["x"].shape[1]
    x = np.zeros((B, L, D), np.float32)
    mask = np.zeros((B, L), bool)
    target = np.zeros((B, L), np.float32) if "target" in batch[0] else None
    for j, (b, n) in enumerate(zip(batch, lengths, strict=True)):
        x[j, :n] = b["x"]
        mask[j, :n] = True
        if target is not None:
            target[j, :n] = b["target"]
    out = {
        "x": torch.from_numpy(x),
        "mask": torch.from_numpy(mask),
        "y": torch.tensor([b["y"] for b in batch], dtype=torch.float32),
        "i": torch.tensor([b["i"] for b in batch], dtype=torch.int64),
    }
    if target is not None:
        out["target"] = torch.from_numpy(target)
    return out


# -- training ----------------------------------------------------------------------------------


def as_train_config(cfg: WeakConfig) -> TrainConfig:
    """The checkpoint's TrainConfig: model, inputs and optimiser of a weak run (seq_len = max_seq_len)."""
    return TrainConfig(
        model=cfg.model, modality=cfg.modality, fusion=cfg.fusion, seq_len=cfg.max_seq_len,
        window_stride=cfg.max_seq_len, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, smooth_weight=0.0, modality_dropout=cfg.modality_dropout,
        seed=cfg.seed, device=cfg.device, num_threads=cfg.num_threads,
    )  # fmt: skip


def _check_training_set(store: FeatureStore, entries: Sequence[Entry], cfg: WeakConfig) -> None:
    if cfg.modality not in MODALITIES:
        raise TrainError(f"unknown modality {cfg.modality!r}; use one of {MODALITIES}")
    if not entries:
        raise TrainError(f"{store.root} has no training videos")
    labels = {video_label(e) for e in entries}
    if labels != {0, 1}:
        raise TrainError(
            f"weak training needs normal and violent training videos; {store.root} has only {labels}"
        )
    if cfg.topk_divisor < 1 or cfg.max_seq_len < 1:
        raise TrainError("topk_divisor and max_seq_len must be >= 1")
    if cfg.objective not in OBJECTIVES:
        raise TrainError(f"unknown objective {cfg.objective!r}; use one of {OBJECTIVES}")
    if cfg.layers < 0:
        raise TrainError("layers must be >= 0 (0: the model's default)")
    if cfg.scorer_inputs not in SCORER_INPUTS:
        raise TrainError(f"unknown scorer inputs {cfg.scorer_inputs!r}; use one of {SCORER_INPUTS}")
    if cfg.scorer_restarts < 1:
        raise TrainError("scorer_restarts must be >= 1")
    if cfg.objective == "refine" and cfg.local_epochs < 1:
        raise TrainError("the refine objective needs local_epochs >= 1")
    if cfg.autocast not in AUTOCAST_DTYPES:
        raise TrainError(f"unknown autocast type {cfg.autocast!r}; use one of {AUTOCAST_DTYPES}")
    if cfg.prefetch < 0:
        raise TrainError("prefetch must be >= 0 (0: read batches on the training thread)")
    if cfg.processes < 0 or cfg.num_threads < 0:
        raise TrainError("processes and num_threads must be >= 0 (0: chosen for this machine)")


def training_processes(cfg: WeakConfig, device: torch.device, samples: int) -> tuple[int, int]:
    """(processes, torch threads in each) of a run over ``samples`` training samples.

    On CPU, by default two single-threaded processes (each on half of every batch) where two or
    more cores are free and an epoch has at least PARALLEL_MIN_BATCHES batches: on two cores they
    kept both busy where one process with two threads did not (docs/weak-supervision.md).
    """
    cores = cfg.num_threads or usable_cores()
    if device.type != "cpu":
        if cfg.processes > 1:
            raise TrainError(f"processes > 1 trains on CPU only, not on {device.type}")
        return 1, cores
    world = cfg.processes
    if world == 0:
        batches = math.ceil(samples / cfg.batch_size)
        world = 2 if cores >= 2 and batches >= PARALLEL_MIN_BATCHES else 1
    if world > cfg.batch_size:
        raise TrainError(f"{world} processes cannot share batches of {cfg.batch_size}")
    return world, max(1, cores // world)


@torch.no_grad()
def _loader_loss(
    model: torch.nn.Module,
    loader: DataLoader,
    cfg: WeakConfig,
    device: torch.device,
    ranks: Ranks = Ranks(),
) -> float:
    model.eval()
    loss = batch_objective(cfg, device)
    total, n = 0.0, 0
    for b in loader:
        total += float(loss(model, {k: v.to(device) for k, v in b.items()})) * len(b["y"])
        n += len(b["y"])
    total, n = ranks.sum(total, n)
    return total / max(n, 1)


def batch_objective(cfg: WeakConfig, device: torch.device | None = None):
    """The weak objective of one batch, as :func:`avarnet.train.fit` calls it; the model runs
    under :func:`autocast_for` ``cfg.autocast`` on ``device``, the loss terms in float32."""

    def loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        run = _at_precision(model, cfg.autocast, device)
        return weak_objective(run, b["x"], b["mask"], b["y"], cfg, b.get("target"))

    return loss


def _at_precision(model: torch.nn.Module, precision: str, device: torch.device | None):
    """``model`` itself, or a callable running it under autocast and returning float32 logits."""
    if device is None or isinstance(autocast_for(precision, device), nullcontext):
        return model

    def run(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with autocast_for(precision, device):
            out = model(x, mask)
        return out.float()

    return run


def _loaders(
    store: FeatureStore, cfg: WeakConfig, norm: Normalizer, ranks: Ranks = Ranks()
) -> tuple[DataLoader, DataLoader]:
    """Shuffled (video, crop) training samples; centre-crop validation videos (training ones if none)."""
    train_entries, val_entries = store.split("train"), store.split("val")
    if not val_entries:
        log.warning("no validation split: monitoring the training loss instead")
    g = torch.Generator().manual_seed(cfg.seed)
    args = (cfg.modality, norm, cfg.max_seq_len)
    train_ds = WeakDataset(store, train_entries, *args, all_crops=cfg.all_crops)
    val_ds = WeakDataset(store, val_entries or train_entries, *args, all_crops=False)
    return _bucketed(train_ds, cfg, g, ranks, lockstep=True), _bucketed(val_ds, cfg, None, ranks)


def _bucketed(
    ds: WeakDataset, cfg: WeakConfig, generator=None, ranks: Ranks = Ranks(), lockstep=False
) -> Prefetch:
    """Length-bucketed batches of ``ds`` (shuffled with a generator), this process's share of
    each (see :meth:`Ranks.shard`), read ahead on a thread."""
    sampler = ranks.shard(LengthBatches(ds.lengths(), cfg.batch_size, generator), lockstep)
    return Prefetch(DataLoader(ds, batch_sampler=sampler, collate_fn=weak_collate), cfg.prefetch)


def train_snippet_scorer(
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: WeakConfig,
    input_dim: int,
    video_dim: int,
    device: torch.device,
    progress: bool,
    ranks: Ranks = Ranks(),
) -> tuple[SnippetScorer, list[dict]]:
    """First stage of "refine": the per-snippet scorer trained by the MIL term alone.

    With ``cfg.scorer_restarts`` > 1, that many scorers from different initial weights train
    ``SCORER_TRIAL_EPOCHS`` epochs each, one after another; the one with the lowest validation MIL
    loss so far trains on to ``cfg.local_epochs``. Returns the kept scorer at its epoch of lowest
    validation MIL loss, and the history of every epoch (``restart`` numbers the scorers,
    ``kept`` marks the one returned).
    """
    restarts = cfg.scorer_restarts
    trial = min(cfg.local_epochs, SCORER_TRIAL_EPOCHS) if restarts > 1 else cfg.local_epochs
    runs = []
    for restart in range(restarts):
        if restart:  # the same initial weights in every process, its own dropout in each
            torch.manual_seed(cfg.seed + SCORER_RESTART_SEED * restart)
        run = _ScorerRun(cfg, input_dim, device, ranks, restart)
        run.train(trial, train_loader, val_loader, video_dim, progress)
        runs.append(run)
    kept = min(runs, key=lambda r: r.best)
    kept.train(cfg.local_epochs - trial, train_loader, val_loader, video_dim, progress)
    if kept.best_state is None:
        last = kept.history[-1]["val_loss"]
        raise TrainError(
            f"the snippet scorer reached no finite validation loss (last {last}); "
            "no checkpoint written"
        )
    if restarts > 1:
        log.info("snippet scorer: start %d of %d kept (validation MIL loss %.4f)",
                 kept.restart + 1, restarts, kept.best)  # fmt: skip
    history = [h | {"kept": r is kept} for r in runs for h in r.history]
    kept.scorer.load_state_dict(kept.best_state)
    return kept.scorer.eval(), history


class _ScorerRun:
    """One start of :func:`train_snippet_scorer`: a scorer, its optimiser, its lowest validation
    MIL loss so far, the weights of that epoch and the history."""

    def __init__(
        self, cfg: WeakConfig, input_dim: int, device: torch.device, ranks: Ranks, restart: int
    ):
        context = cfg.scorer_inputs == "context"
        self.scorer = SnippetScorer(input_dim, cfg.local_hidden, context=context).to(device)
        if device.type == "cpu":
            cheap_dropout(self.scorer)
        _rank_seed(cfg, ranks)
        self.opt = adam(self.scorer.parameters(), SCORER_LR, cfg.weight_decay, device)
        self.mil = cfg.replace(smooth_weight=0.0, sparsity_weight=0.0, reversal_weight=0.0,
                               permutation_weight=0.0)  # fmt: skip
        self.gen = torch.Generator().manual_seed(
            cfg.seed + 2 + ranks.rank + SCORER_RESTART_SEED * restart
        )
        self.device, self.ranks, self.restart = device, ranks, restart
        self.best, self.best_state, self.history = float("inf"), None, []

    def train(self, epochs: int, train_loader, val_loader, video_dim: int, progress: bool) -> None:
        cfg, ranks, device = self.mil, self.ranks, self.device
        first = len(self.history) + 1
        desc = f"weak snippet scorer {self.restart + 1}" if cfg.scorer_restarts > 1 else (
            "weak snippet scorer")  # fmt: skip
        bar = progress_bar(range(first, first + epochs), desc=desc, unit="epoch",
                           disable=not (progress and ranks.main) or epochs < 1)  # fmt: skip
        for epoch in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            train_loss = run_epoch(
                self.scorer, train_loader, self.opt, batch_objective(cfg, device), cfg, video_dim,
                device, self.gen, ranks,
            )  # fmt: skip
            seconds, (cpu,) = time.perf_counter() - t0, ranks.sum(time.process_time() - c0)
            val_loss = _loader_loss(self.scorer, val_loader, cfg, device, ranks)
            self.history.append({"restart": self.restart, "epoch": epoch, "train_loss": train_loss,
                                 "val_loss": val_loss, "seconds": seconds, "cpu_seconds": cpu})  # fmt: skip
            if val_loss < self.best - 1e-6:
                self.best = val_loss
                self.best_state = {
                    k: v.detach().clone() for k, v in self.scorer.state_dict().items()
                }


@torch.no_grad()
def pseudo_labels(
    scorer: torch.nn.Module,
    dataset: WeakDataset,
    cfg: WeakConfig,
    device: torch.device,
    ranks: Ranks = Ranks(),
) -> dict[int, np.ndarray]:
    """Soft snippet targets of every sample: the scorer's p(anomaly) in violent videos, 0 in
    normal ones (item index -> (l,) float32); each process scores its share, all get them all."""
    scorer.eval()
    out: dict[int, np.ndarray] = {}
    for b in _bucketed(dataset, cfg, None, ranks):
        x, mask = b["x"].to(device), b["mask"].to(device)
        p = torch.sigmoid(anomaly_logit(scorer(x, mask)[-1])).cpu().numpy()  # (B, L)
        for row, (i, y) in enumerate(zip(b["i"].tolist(), b["y"].tolist(), strict=True)):
            n = int(b["mask"][row].sum())
            out[i] = (p[row, :n] * float(y > 0.5)).astype(np.float32)
    return ranks.gather(out)


def _checkpoint(
    model, mcfg, cfg: WeakConfig, store: FeatureStore, norm, epoch: int, val_loss: float
):
    extra = {
        "task": WEAK_TASK,
        "weak_config": cfg.to_dict(),
        "best_epoch": epoch,
        "val_loss": val_loss,
    }
    tcfg = as_train_config(cfg)
    state = store.load_encoder_state()
    return Checkpoint(model, mcfg, tcfg, list(WEAK_CLASSES), store.spec, norm, state, extra)


def train_weak(
    feats: str | Path | FeatureStore,
    out: str | Path,
    cfg: WeakConfig = WeakConfig(),
    model_overrides: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a detector from video-level labels; writes ``OUT/best.ckpt`` and ``OUT/history.json``.

    The validation split (video-level labels only) drives early stopping through the training
    objective; frame-level truth is never used in training. On CPU the training may run in
    several processes (:func:`training_processes`), each on its share of every batch.
    """
    begin = time.time()
    store = feats if isinstance(feats, FeatureStore) else FeatureStore.open(feats)
    _check_training_set(store, store.split("train"), cfg)
    device = resolve_device(cfg.device)
    overrides = {"num_classes": len(WEAK_CLASSES)} | ({"layers": cfg.layers} if cfg.layers else {})
    mcfg = model_config_for(store, as_train_config(cfg), overrides | (model_overrides or {}))
    norm = fit_stream_normalizer(store, store.split("train"), cfg.modality)
    samples = len(WeakDataset(store, store.split("train"), cfg.modality, norm, cfg.max_seq_len,
                              cfg.all_crops))  # fmt: skip
    world, threads = training_processes(cfg, device, samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if world == 1:
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        history, best_epoch, best, params = _train_weak(
            Ranks(), store, out, cfg, mcfg, norm, device, progress, threads
        )
    else:
        log.info("training in %d processes of %d thread(s) each", world, threads)
        args = (store.root, out, cfg, mcfg, norm, device, progress, threads)
        history, best_epoch, best, params = start(_train_weak, args, world, threads)
    return TrainResult(
        out / BEST_CHECKPOINT, history, best_epoch, best, params, time.time() - begin
    )


def _rank_seed(cfg: WeakConfig, ranks: Ranks) -> None:
    """Give each of several processes its own dropout draws (one process keeps the seeded ones)."""
    if ranks.world > 1:
        torch.manual_seed(cfg.seed * 1000 + ranks.rank + 1)


def _train_weak(
    ranks: Ranks,
    store: FeatureStore | Path,
    out: Path,
    cfg: WeakConfig,
    mcfg: ModelConfig,
    norm: Normalizer,
    device: torch.device,
    progress: bool,
    threads: int,
) -> tuple[list[dict], int, float, int]:
    """The training of :func:`train_weak` in one of its processes: (history, best epoch, best
    validation loss, parameters); only the main process writes files."""
    if ranks.world > 1:
        torch.set_num_threads(threads)
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    seed_everything(cfg.seed)
    train_loader, val_loader = _loaders(store, cfg, norm, ranks)
    local_history: list[dict] = []
    if cfg.objective == "refine":
        scorer, local_history = train_snippet_scorer(
            train_loader, val_loader, cfg, mcfg.input_dim, mcfg.video_dim, device, progress, ranks
        )
        for loader in (train_loader, val_loader):
            loader.dataset.targets = pseudo_labels(scorer, loader.dataset, cfg, device, ranks)
        seed_everything(cfg.seed)
    model = create_model(mcfg).to(device)
    if device.type == "cpu":
        cheap_dropout(model)
    _rank_seed(cfg, ranks)
    if local_history and ranks.main:
        write_json(out / SCORER_HISTORY_FILE, local_history)
    # wall and process CPU time at the end of the last validation (or save): an epoch starts
    mark = [time.perf_counter(), time.process_time()]

    def validate(model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
        seconds, (cpu,) = time.perf_counter() - mark[0], ranks.sum(time.process_time() - mark[1])
        metrics = {"val_loss": _loader_loss(model, loader, cfg, device, ranks), "seconds": seconds,
                   "cpu_seconds": cpu}  # fmt: skip
        mark[:] = time.perf_counter(), time.process_time()
        return metrics

    def save(epoch: int, metrics: dict[str, float]) -> None:
        if ranks.main:
            ckpt = _checkpoint(model, mcfg, cfg, store, norm, epoch, metrics["val_loss"])
            save_checkpoint(out / BEST_CHECKPOINT, ckpt)
        mark[:] = time.perf_counter(), time.process_time()

    history, best_epoch, best = fit(
        model, train_loader, val_loader, batch_objective(cfg, device), validate, save, cfg,
        mcfg.video_dim, device, out, f"weak {mcfg.name}/{cfg.modality}", progress, ranks=ranks,
    )  # fmt: skip
    return history, best_epoch, best, count_parameters(model)


# -- scoring -----------------------------------------------------------------------------------


def is_weak(ckpt: Checkpoint) -> bool:
    return ckpt.extra.get("task") == WEAK_TASK


@torch.no_grad()
def sequence_probabilities(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Last-stage class probabilities (T, C) of a whole video x (T, D), in chunks of EVAL_CHUNK."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(x), EVAL_CHUNK):
        xb = torch.from_numpy(np.ascontiguousarray(x[s : s + EVAL_CHUNK]))[None].to(
            device
        )  # (1, l, D)
        mask = torch.ones(xb.shape[:2], dtype=torch.bool, device=device)  # (1, l)
        out.append(torch.softmax(model(xb, mask)[-1, 0].float(), dim=-1).cpu().numpy())  # (l, C)
    return np.concatenate(out)


def _crop_views(tensors: dict[str, np.ndarray], modality: str) -> list[dict[str, np.ndarray]]:
    """One tensor dict per visual crop (just the given one without crops or for audio-only models)."""
    crops = tensors.get("video_crops")
    if crops is None or modality == "audio":
        return [tensors]
    return [tensors | {"video": crops[k]} for k in range(len(crops))]


def snippet_scores(
    ckpt: Checkpoint, tensors: dict[str, np.ndarray], drop: str | None = None
) -> np.ndarray:
    """Anomaly score per snippet (T,), averaged over the visual crops.

    Weak detectors score the whole video at once (p(anomaly)); classifiers score windows of their
    training length and give 1 - p(normal).
    """
    from .evaluate import blank_sense

    total = None
    views = _crop_views(tensors, ckpt.modality)
    for view in views:
        x = model_input(ckpt, view)
        if drop:
            x = blank_sense(x, drop, ckpt)
        if is_weak(ckpt):
            s = sequence_probabilities(ckpt.model, x)[:, ANOMALY_INDEX]
        else:
            s = anomaly_scores(
                step_probabilities(ckpt.model, x, ckpt.train_config.seq_len), ckpt.classes
            )
        total = s.astype(np.float64) if total is None else total + s
    return (total / len(views)).astype(np.float32)


@dataclass
class VideoScores:
    """Scores of one video and its frame truth (None when the store has none for it)."""

    entry: Entry
    scores: np.ndarray  # (T,)
    frame_labels: np.ndarray | None  # (N,) uint8


def score_videos(
    ckpt: Checkpoint,
    store: FeatureStore,
    entries: Sequence[Entry],
    drop: str | None = None,
    progress: bool = False,
) -> list[VideoScores]:
    out = []
    for e in progress_bar(entries, desc="score", unit="video", disable=not progress):
        t = store.load(e)
        out.append(VideoScores(e, snippet_scores(ckpt, t, drop), t.get("frame_labels")))
    return out


def frame_arrays(
    videos: Sequence[VideoScores], segment_seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated frame truth (N,) and frame scores (N,) of the videos that have truth."""
    ys, ss = [], []
    for v in videos:
        if v.frame_labels is None:
            continue
        ys.append(v.frame_labels)
        ss.append(
            snippet_to_frame_scores(v.scores, len(v.frame_labels), v.entry.fps, segment_seconds)
        )
    if not ys:
        return np.zeros(0, np.uint8), np.zeros(0, np.float32)
    return np.concatenate(ys), np.concatenate(ss)


def classifier_frame_metrics(
    ckpt: Checkpoint, store: FeatureStore, entries: Sequence[Entry], drop: str | None = None
) -> dict:
    """frame_ap / frame_pr_auc / frame_roc_auc of a checkpoint on the entries with frame truth ({} if none)."""
    flagged = [e for e in entries if (e.extra or {}).get("frame_level")]
    videos = score_videos(ckpt, store, flagged or entries, drop)
    y, s = frame_arrays(videos, store.spec.segment_seconds)
    if not y.size:
        return {}
    n = sum(v.frame_labels is not None for v in videos)
    return frame_level_metrics(y, s) | {"frame_videos": n, "ap_definitions": AP_DEFINITIONS}


def untrimmed_metrics(
    ckpt: Checkpoint, store: FeatureStore, entries: Sequence[Entry], drop: str | None = None
) -> dict:
    """:func:`classifier_frame_metrics` for stores of untrimmed videos with frame truth, else {}
    (the ``extra`` hook of :func:`avarnet.evaluate.evaluate`)."""
    if not store.info.get("frame_level"):
        return {}
    return classifier_frame_metrics(ckpt, store, entries, drop)


# -- evaluation --------------------------------------------------------------------------------


def _video_level(videos: Sequence[VideoScores], divisor: int) -> dict:
    """Video AP / ROC-AUC with the video score = mean of its top-k snippet scores."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.array([video_label(v.entry) for v in videos])
    s = np.array([np.sort(v.scores)[::-1][: len(v.scores) // divisor + 1].mean() for v in videos])
    if len(set(y.tolist())) < 2:
        return {}
    return {
        "video_ap": float(average_precision_score(y, s)),
        "video_roc_auc": float(roc_auc_score(y, s)),
    }


def dilate(y: np.ndarray, margin: int) -> np.ndarray:
    """(N,) bool: True within ``margin`` steps of a True of y (N,)."""
    c = np.concatenate([[0], np.cumsum(y.astype(np.int64))])
    i = np.arange(len(y))
    return (c[np.minimum(i + margin + 1, len(y))] - c[np.maximum(i - margin, 0)]) > 0


def flank_check(
    videos: Sequence[VideoScores], segment_seconds: float, margin: int = FLANK_MARGIN
) -> dict:
    """Mean frame score inside the annotated events and in a margin of ``margin`` snippets around
    them (outside every event), over the videos with events.

    ``flank_firing`` is True when the margin scores higher than the events: the model has learned
    to fire next to the evidence (a wide receptive field can satisfy the MIL loss that way) and
    its frame AP is not a measure of detection. None where there is no margin to compare.
    """
    inside, near, per_video = [], [], 0
    for v in videos:
        if v.frame_labels is None or not v.frame_labels.any():
            continue
        y = v.frame_labels.astype(bool)
        s = snippet_to_frame_scores(v.scores, len(y), v.entry.fps, segment_seconds)
        frames = max(1, round(margin * v.entry.fps * segment_seconds))
        flank = dilate(y, frames) & ~y
        inside.append(s[y])
        if flank.any():
            near.append(s[flank])
            per_video += int(s[flank].mean() > s[y].mean())
    if not inside or not near:
        return {"margin_snippets": margin, "inside_mean": None, "margin_mean": None,
                "flank_firing": None, "videos_flank_firing": 0, "videos": len(inside)}  # fmt: skip
    inside_mean = float(np.concatenate(inside).mean())
    margin_mean = float(np.concatenate(near).mean())
    return {
        "margin_snippets": margin,
        "inside_mean": inside_mean,
        "margin_mean": margin_mean,
        "flank_firing": bool(margin_mean > inside_mean),
        "videos_flank_firing": per_video,
        "videos": len(near),
    }


def flank_warning(check: dict) -> str | None:
    """The one-line warning of a flank-firing run (None if the check passed or was undefined)."""
    if not check.get("flank_firing"):
        return None
    return (
        f"WARNING: scores are higher around the annotated events than inside them (mean "
        f"{check['margin_mean']:.3f} within {check['margin_snippets']} snippets of an event vs "
        f"{check['inside_mean']:.3f} inside; {check['videos_flank_firing']} of {check['videos']} "
        "videos): the model fires next to the evidence, so its frame AP does not measure detection"
    )


def _check_spec(ckpt: Checkpoint, store: FeatureStore) -> None:
    from .evaluate import EvaluateError

    ours, theirs = ckpt.spec.replace(random_init={}), store.spec.replace(random_init={})
    if ours != theirs:
        raise EvaluateError(f"checkpoint features ({ours}) differ from the store's ({theirs})")


def _plot_curves(
    videos: Sequence[VideoScores], segment_seconds: float, folder: Path, limit: int
) -> list[str]:
    """Score curves of up to ``limit`` videos, violent ones first; returns the file names."""
    from .plots import plot_score_curve

    folder.mkdir(parents=True, exist_ok=True)
    ranked = sorted(videos, key=lambda v: -video_label(v.entry))[:limit]
    names = []
    for v in ranked:
        name = (v.entry.extra or {}).get("name", v.entry.id)
        fname = f"{v.entry.id.replace('/', '_')}.png"
        plot_score_curve(v.scores, segment_seconds, folder / fname, v.frame_labels, v.entry.fps,
                         title=f"{name[:90]}  [{v.entry.label}]")  # fmt: skip
        names.append(fname)
    return names


def evaluate_weak(
    checkpoint: str | Path | Checkpoint,
    feats: str | Path | FeatureStore,
    split: str = "test",
    out: str | Path | None = None,
    drop: str | None = None,
    device: str = "auto",
    plots: int = DEFAULT_PLOTS,
    progress: bool = True,
) -> dict:
    """Frame- and video-level detection metrics of any checkpoint on a split with frame truth.

    Writes ``OUT/metrics.json``, ``OUT/curves/*.png`` (score curves, truth shaded) and
    ``OUT/report.html`` (PR / ROC and score curves on one page) when ``out`` is given. A constant score is reported alongside as the chance baseline of each metric.
    """
    from .evaluate import EvaluateError, open_inputs

    ckpt, store = open_inputs(checkpoint, feats, device)
    _check_spec(ckpt, store)
    entries = store.split(split)
    if not entries:
        raise EvaluateError(f"split {split!r} of {store.root} is empty")
    videos = score_videos(ckpt, store, entries, drop, progress)
    y, s = frame_arrays(videos, store.spec.segment_seconds)
    if not y.size:
        raise EvaluateError(f"split {split!r} of {store.root} has no frame-level truth")
    divisor = int(ckpt.extra.get("weak_config", {}).get("topk_divisor", WeakConfig.topk_divisor))
    metrics = frame_level_metrics(y, s) | _video_level(videos, divisor)
    check = flank_check(videos, store.spec.segment_seconds)
    metrics |= {
        "flank_check": check,
        "warnings": [w for w in [flank_warning(check)] if w],
        "constant_baseline": frame_level_metrics(y, np.zeros_like(s)),
        "headline": HEADLINE_AP,
        "ap_definitions": AP_DEFINITIONS,
        "n": len(videos),
        "frame_videos": sum(v.frame_labels is not None for v in videos),
        "split": split,
        "dropped_sense": drop,
        "checkpoint": None if isinstance(checkpoint, Checkpoint) else str(checkpoint),
        "task": ckpt.extra.get("task", "classification"),
        "features": str(store.root),
        "model": ckpt.model_config.name,
        "modality": ckpt.modality,
        "fusion": ckpt.model_config.fusion,
        "feature_spec": store.spec.to_dict(),
        "weights": store.spec.weights,
        "videos": [_video_record(v) for v in videos],
    }
    if out is not None:
        out = Path(out)
        metrics["curves"] = _plot_curves(
            videos, store.spec.segment_seconds, out / CURVES_DIR, plots
        )
        write_json(out / METRICS_FILE, metrics)
        from .report import write_detection_report

        write_detection_report(out, metrics, videos, y, s, store.spec.segment_seconds, limit=plots)
    return metrics


def _video_record(v: VideoScores) -> dict:
    return {
        "id": v.entry.id,
        "name": (v.entry.extra or {}).get("name"),
        "label": v.entry.label,
        "binary": video_label(v.entry),
        "max_score": float(v.scores.max()),
        "mean_score": float(v.scores.mean()),
    }


__all__ = [
    "WeakConfig",
    "WEAK_CLASSES",
    "classifier_frame_metrics",
    "evaluate_weak",
    "mil_loss",
    "snippet_scores",
    "topk_pool",
    "train_weak",
]
