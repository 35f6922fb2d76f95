"""Weak-supervision benchmark suite: several independent regimes, every model and objective, 3 seeds.

Each regime writes an XD-Violence dataset in the official formats (five 1024-d crop files and a
128-d VGGish file per video, the four list files, and the test truth as ``gt.npy`` or
``annotations.txt``), imports it with :func:`avarnet.apps.xdv.import_official`, trains every registered
model with every objective through :func:`avarnet.weak.train_weak` and scores it with
:func:`avarnet.weak.evaluate_weak`. One regime (``raw``) goes through raw video instead: synthetic
untrimmed videos -> ``avarnet extract`` with tiny random backbones -> ``xdv import --extracted``.

The feature generators are deliberately unlike each other (and unlike the unit-test features):

* ``shift``: Gaussian snippets with slow (AR(1)) drift and a per-video scene offset; an event adds
  a class direction spread over all dimensions, with a one-snippet ramp at each end.
* ``sparse``: non-negative (softplus) features like post-ReLU I3D / VGGish outputs; an event raises
  a few class-specific dimensions.
* ``heavy``: a slow low-dimensional latent mixed into every dimension (correlated features) plus
  Student-t noise (heavy tails); an event moves the latent.
* ``change``: a smooth AR(1) process that an event switches to a flickering one with the same
  marginal: each snippet alone looks normal, only change over time shows the event.
* ``pooled``: ReLU of a slow latent plus AR(1) noise and a per-video scene offset on every
  dimension (like pooled CNN outputs); hard negatives resemble the violent classes in part.
* ``lag``: the sound of an event leads or lags its picture by 2-4 snippets.
* ``audio``: violent events are heard only, distractors seen only.

Violent classes share part of their signature (as fights, shootings and riots share motion and
loudness); distractor events (activity that is not violent) have their own.

Regimes vary what matters for localisation: event length (a few snippets to nearly all of the
video), 1-3 events, events touching the start or end, distractor events in normal videos,
XD-Violence's class imbalance, audio-only and video-only events, annotation boundaries off the
evidence (label noise), evidence in change over time, hard negatives, audio out of sync.

Every run uses ``avarnet xdv train``'s defaults (``WeakConfig()``) unless ``--epochs``,
``--local-epochs``, ``--batch-size``, ``--lr`` or ``--centre-crop-only`` say otherwise, on
``--data-seeds`` independently drawn data sets per regime times ``--seeds`` model seeds.

    python benchmarks/xdv_suite.py --out runs/xdv_suite               # all regimes, writes the doc
    python benchmarks/xdv_suite.py --quick --out /tmp/xdv_suite_quick  # smoke run

Results are appended to ``OUT/results.jsonl`` run by run, so an interrupted suite resumes; the
tables go to ``OUT/tables.md`` and, unless ``--no-doc``, to ``docs/weak-supervision.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avarnet.apps.xdv import FRAMES_PER_SNIPPET, NUM_CROPS, import_official
from avarnet.io import atomic_write_text
from avarnet.models import list_models
from avarnet.weak import WeakConfig, evaluate_weak, train_weak

DV, DA = 1024, 128  # official I3D and VGGish widths
DOC = Path(__file__).resolve().parents[1] / "docs" / "weak-supervision.md"

# XD-Violence's class frequencies among violent training videos (first code), roughly.
XD_CLASS_SHARE = {"B1": 0.24, "B2": 0.27, "B4": 0.2, "B5": 0.07, "B6": 0.1, "G": 0.12}
CODES = tuple(XD_CLASS_SHARE)

OFF = {"smooth_weight": 0.0, "sparsity_weight": 0.0, "reversal_weight": 0.0,
       "permutation_weight": 0.0}  # fmt: skip
OBJECTIVES: dict[str, dict] = {
    # the reference: the top-k MIL term alone, the model trained directly
    "mil": {"objective": "mil", "layers": 0} | OFF,
    # the defaults before this suite existed: MIL + smoothness + sparsity + reversal, MTCN with
    # ten dilated layers per stage (dilation up to 512)
    "old-default": {
        "objective": "mil",
        "layers": 10,
        "smooth_weight": 0.1,
        "sparsity_weight": 0.1,
        "reversal_weight": 1.0,
        "permutation_weight": 0.0,
    },  # fmt: skip
    # consistency under random reorderings of the snippets
    "permutation": {"objective": "mil", "layers": 0} | OFF | {"permutation_weight": 1.0},
    # per-snippet MIL scorer, then the model trained on its pseudo-labels (+ MIL)
    "refine": {"objective": "refine", "layers": 0} | OFF,
}


# -- generators -------------------------------------------------------------------------------


HARD = "H"  # a hard negative: non-violent high-motion activity that partly resembles violence
NON_VIOLENT = ("A", HARD)


@dataclass(frozen=True)
class Event:
    start: int  # snippet
    end: int  # snippet, exclusive
    code: str  # XD code ("A" for a distractor: activity that is not violent; "H" a hard negative)

    @property
    def violent(self) -> bool:
        return self.code not in NON_VIOLENT


@dataclass(frozen=True)
class Plan:
    name: str
    T: int
    events: tuple[Event, ...]

    @property
    def violent(self) -> bool:
        return any(e.violent for e in self.events)


class Generator:
    """Features of one family: ``background(rng, T)`` and ``add_event(rng, v, a, event)``."""

    def __init__(self, seed: int, unimodal: dict[str, str] | None = None):
        rng = np.random.default_rng([seed, 99])
        self.unimodal = unimodal or {}  # code -> "audio" | "video": the other sense carries nothing
        # violent classes share part of their signature (motion, loudness), distractors do not
        common_v, common_a = unit(rng, DV), unit(rng, DA)
        self.dirs = {c: (unit_mix(common_v, unit(rng, DV), c), unit_mix(common_a, unit(rng, DA), c))
                     for c in (*CODES, *NON_VIOLENT)}  # fmt: skip
        shared_v, shared_a = rng.choice(DV, 12, replace=False), rng.choice(DA, 3, replace=False)
        self.dims = {}
        for c in (*CODES, *NON_VIOLENT):
            own_v, own_a = rng.choice(DV, 12, replace=False), rng.choice(DA, 3, replace=False)
            self.dims[c] = (np.union1d(own_v, shared_v) if c not in NON_VIOLENT else own_v,
                            np.union1d(own_a, shared_a) if c not in NON_VIOLENT else own_a)  # fmt: skip
        self.rng_seed = seed

    def senses(self, code: str) -> tuple[float, float]:
        kind = self.unimodal.get(code)
        return (0.0 if kind == "audio" else 1.0), (0.0 if kind == "video" else 1.0)


def unit(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.normal(size=d)
    return (v / np.linalg.norm(v)).astype(np.float32)


def unit_mix(common: np.ndarray, own: np.ndarray, code: str) -> np.ndarray:
    """A violent class's direction: 0.8 shared + 0.6 its own; a distractor's: its own only; a hard
    negative's: 0.5 shared + 0.87 its own (it partly resembles every violent class)."""
    w = {"A": 0.0, HARD: 0.5}.get(code, 0.8)
    v = w * common + math.sqrt(1 - w * w) * own
    return (v / np.linalg.norm(v)).astype(np.float32)


def ar1(rng: np.random.Generator, T: int, d: int, rho: float) -> np.ndarray:
    """(T, d) stationary AR(1) noise with unit variance."""
    e = rng.normal(size=(T, d)).astype(np.float32)
    out = np.empty_like(e)
    out[0] = e[0]
    s = math.sqrt(1 - rho * rho)
    for t in range(1, T):
        out[t] = rho * out[t - 1] + s * e[t]
    return out


def ramp(T: int, ev: Event) -> np.ndarray:
    """(T,) event envelope: 1 inside, 0.6 on its first and last snippet when it has 4 or more."""
    w = np.zeros(T, np.float32)
    w[ev.start : ev.end] = 1.0
    if ev.end - ev.start >= 4:
        w[ev.start] = w[ev.end - 1] = 0.6
    return w


class ShiftGenerator(Generator):
    """Gaussian drift + scene offset; events add a dense class direction."""

    strength = (8.0, 6.0)  # norm of the shift in video / audio space

    def background(self, rng, T):
        v = ar1(rng, T, DV, 0.6) + rng.normal(0, 0.2, DV).astype(np.float32)
        a = ar1(rng, T, DA, 0.6) + rng.normal(0, 0.2, DA).astype(np.float32)
        return v, a

    def add_event(self, rng, v, a, ev):
        w = ramp(len(v), ev)[:, None]
        gv, ga = self.senses(ev.code)
        dv, da = self.dirs[ev.code]
        amp = rng.uniform(0.8, 1.2)
        v += gv * amp * self.strength[0] * w * dv
        a += ga * amp * self.strength[1] * w * da


class SparseGenerator(Generator):
    """Non-negative softplus features; events raise a few class dimensions."""

    def background(self, rng, T):
        v = np.logaddexp(0, rng.normal(-1.0, 1.0, (T, DV))).astype(np.float32)
        a = np.logaddexp(0, rng.normal(-0.5, 1.0, (T, DA))).astype(np.float32)
        return v, a

    def add_event(self, rng, v, a, ev):
        w = (np.arange(len(v)) >= ev.start) & (np.arange(len(v)) < ev.end)
        gv, ga = self.senses(ev.code)
        iv, ia = self.dims[ev.code]
        v[np.ix_(w, iv)] += gv * rng.uniform(0.6, 1.0)
        a[np.ix_(w, ia)] += ga * rng.uniform(0.6, 1.0)


class HeavyGenerator(Generator):
    """Latent mixed into every dimension (correlated) + Student-t noise (heavy tails); an event
    moves the latent."""

    latent = 16
    df = 2.5

    def __init__(self, seed, unimodal=None):
        super().__init__(seed, unimodal)
        rng = np.random.default_rng([seed, 7])
        self.mix_v = rng.normal(0, 1 / math.sqrt(self.latent), (self.latent, DV)).astype(np.float32)
        self.mix_a = rng.normal(0, 1 / math.sqrt(self.latent), (self.latent, DA)).astype(np.float32)
        common = unit(rng, self.latent)
        self.zdir = {c: 5.0 * unit_mix(common, unit(rng, self.latent), c)
                     for c in (*CODES, *NON_VIOLENT)}  # fmt: skip

    def background(self, rng, T):
        z = ar1(rng, T, self.latent, 0.9)  # (T, latent)
        noise = lambda d: rng.standard_t(self.df, (T, d)).astype(np.float32) * 0.6  # noqa: E731
        return z @ self.mix_v * 2.0 + noise(DV), z @ self.mix_a * 2.0 + noise(DA)

    def add_event(self, rng, v, a, ev):
        w = ramp(len(v), ev)[:, None]
        gv, ga = self.senses(ev.code)
        dz = self.zdir[ev.code] * rng.uniform(0.8, 1.2)
        v += gv * w * (dz @ self.mix_v * 2.0)
        a += ga * w * (dz @ self.mix_a * 2.0)


class ChangeGenerator(Generator):
    """Evidence only in change over time: the background is a smooth AR(1) process (rho 0.95); an
    event switches it to a flickering one (rho -0.8) with the same unit-variance Gaussian marginal,
    so every snippet alone looks normal and only its neighbours tell."""

    def background(self, rng, T):
        return ar1(rng, T, DV, 0.95), ar1(rng, T, DA, 0.95)

    def add_event(self, rng, v, a, ev):
        n = ev.end - ev.start
        gv, ga = self.senses(ev.code)
        rho = -0.8 if ev.violent else 0.5  # distractors change pace too, but not like this
        if gv:
            v[ev.start : ev.end] = ar1(rng, n, DV, rho)
        if ga:
            a[ev.start : ev.end] = ar1(rng, n, DA, rho)


class PooledGenerator(Generator):
    """Like pooled CNN outputs: ReLU of a slow 32-d latent mixed into every dimension, plus AR(1)
    noise per dimension and a per-video scene offset on every dimension (larger than an event's
    effect on most dimensions); an event moves the latent. Hard negatives (code H) move it along a
    direction that shares half of the violent classes' common part."""

    latent = 32

    def __init__(self, seed, unimodal=None):
        super().__init__(seed, unimodal)
        rng = np.random.default_rng([seed, 11])
        k = self.latent
        self.mix_v = rng.normal(0, 1 / math.sqrt(k), (k, DV)).astype(np.float32)
        self.mix_a = rng.normal(0, 1 / math.sqrt(k), (k, DA)).astype(np.float32)
        common = unit(rng, k)
        self.zdir = {c: 4.0 * unit_mix(common, unit(rng, k), c) for c in (*CODES, *NON_VIOLENT)}

    def _features(self, rng, z, mix, d):
        T = len(z)
        scene = rng.normal(0, 0.8, d).astype(np.float32)  # per video, every dimension
        return np.maximum(z @ mix + scene + 0.5 * ar1(rng, T, d, 0.7), 0).astype(np.float32)

    def background(self, rng, T):
        z = ar1(rng, T, self.latent, 0.9)
        self._z = z  # events move the latent; features are rebuilt in finish()
        self._scene_rng = np.random.default_rng(rng.integers(1 << 62))
        return np.zeros((T, DV), np.float32), np.zeros((T, DA), np.float32)

    def add_event(self, rng, v, a, ev):
        w = np.zeros(len(v), np.float32)
        w[ev.start : ev.end] = rng.uniform(0.8, 1.2)
        gv, ga = self.senses(ev.code)
        self._events.append((w[:, None] * self.zdir[ev.code], gv, ga))

    def begin(self):
        self._events = []

    def finish(self, v, a):
        zv = self._z + sum((dz * gv for dz, gv, _ in self._events), np.zeros_like(self._z))
        za = self._z + sum((dz * ga for dz, _, ga in self._events), np.zeros_like(self._z))
        r = self._scene_rng
        v[:] = self._features(r, zv, self.mix_v, DV)
        a[:] = self._features(r, za, self.mix_a, DA)


class LagGenerator(Generator):
    """Audio that leads or lags the picture: i.i.d. Gaussian snippets around a per-video offset;
    an event adds its class direction to the picture over its span and to the sound over the span
    moved by 2-4 snippets (earlier or later, per event)."""

    def background(self, rng, T):
        v = rng.normal(0, 1, (T, DV)).astype(np.float32) + rng.normal(0, 0.5, DV).astype(np.float32)
        a = rng.normal(0, 1, (T, DA)).astype(np.float32) + rng.normal(0, 0.5, DA).astype(np.float32)
        return v, a

    def add_event(self, rng, v, a, ev):
        T = len(v)
        dv, da = self.dirs[ev.code]
        lag = int(rng.integers(2, 5)) * (1 if rng.random() < 0.5 else -1)
        v[ev.start : ev.end] += 6.0 * dv
        s, e = max(0, ev.start + lag), min(T, ev.end + lag)
        if s < e:
            a[s:e] += 5.0 * da


class AudioOnlyGenerator(Generator):
    """Audio-only events: Laplace snippets in both senses; violent events are heard only (the
    picture holds nothing), distractors are seen only."""

    def background(self, rng, T):
        v = rng.laplace(0, 1, (T, DV)).astype(np.float32)
        a = rng.laplace(0, 1, (T, DA)).astype(np.float32)
        return v, a

    def add_event(self, rng, v, a, ev):
        dv, da = self.dirs[ev.code]
        amp = rng.uniform(0.8, 1.2)
        if ev.violent:
            a[ev.start : ev.end] += amp * 5.0 * da
        else:
            v[ev.start : ev.end] += amp * 6.0 * dv


GENERATORS: dict[str, type[Generator]] = {
    "shift": ShiftGenerator,
    "sparse": SparseGenerator,
    "heavy": HeavyGenerator,
    "change": ChangeGenerator,
    "pooled": PooledGenerator,
    "lag": LagGenerator,
    "audio": AudioOnlyGenerator,
}


# -- regimes: how events are laid out -----------------------------------------------------------


def place(rng, T: int, lengths: list[int], gap: int = 2) -> list[tuple[int, int]] | None:
    """Non-overlapping spans of the given lengths at random places (None if they do not fit)."""
    for _ in range(200):
        spans = []
        for n in lengths:
            s = int(rng.integers(0, T - n + 1))
            if all(s >= e + gap or s + n + gap <= b for b, e in spans):
                spans.append((s, s + n))
        if len(spans) == len(lengths):
            return sorted(spans)
    return None


def pick_code(rng, share: dict[str, float] | None) -> str:
    if share is None:
        return str(rng.choice(CODES))
    p = np.array(list(share.values()))
    return str(rng.choice(list(share), p=p / p.sum()))


@dataclass(frozen=True)
class Regime:
    name: str
    generator: str
    what: str  # one line for the doc
    T: tuple[int, int] = (16, 56)
    events: tuple[int, int] = (1, 1)  # violent events per violent video
    length: tuple[float, float] = (0.1, 0.3)  # event length, fraction of the video
    min_len: int = 2
    edge: bool = False  # one event of each violent video touches the start or the end
    distractors: tuple[int, int] = (0, 0)  # non-violent activity events per video
    share: dict | None = None  # class frequencies; None: uniform
    violent_fraction: tuple[float, float] = (0.5, 0.5)  # train, test
    unimodal: dict = field(default_factory=dict)
    truth: str = "gt"  # "gt" (gt.npy) | "annotations" (annotations.txt)
    hard_negatives: tuple[int, int] = (0, 0)  # hard-negative events per normal video
    jitter: int = 0  # the evidence's boundaries move up to this many snippets from the annotation

    def plan(self, rng, i: int, split: str, violent: bool) -> Plan:
        T = int(rng.integers(self.T[0], self.T[1] + 1))
        n_dis = int(rng.integers(self.distractors[0], self.distractors[1] + 1))
        n_hard = (
            0 if violent else int(rng.integers(self.hard_negatives[0], self.hard_negatives[1] + 1))
        )
        for _ in range(100):
            k = int(rng.integers(self.events[0], self.events[1] + 1)) if violent else 0
            lengths = [max(self.min_len, round(T * rng.uniform(*self.length)) // max(k, 1))
                       for _ in range(k)]  # fmt: skip
            dis = [max(self.min_len, round(T * rng.uniform(0.05, 0.2)))
                   for _ in range(n_dis + n_hard)]  # fmt: skip
            spans = place(rng, T, lengths + dis)
            if spans is None:
                continue
            order = rng.permutation(len(spans))
            kinds = ["V"] * k + ["A"] * n_dis + [HARD] * n_hard
            evs = []
            for j, (s, e) in zip(order, spans, strict=True):
                code = pick_code(rng, self.share) if kinds[j] == "V" else kinds[j]
                evs.append(Event(s, e, code))
            if self.edge and k:
                violent_evs = [e for e in evs if e.violent]
                first = min(violent_evs, key=lambda e: e.start)
                last = max(violent_evs, key=lambda e: e.end)
                others = [e for e in evs if e is not first and e is not last]
                if rng.random() < 0.5 and all(
                    o.start >= first.end - first.start + 2 for o in others
                ):
                    first = Event(0, first.end - first.start, first.code)
                elif all(o.end <= T - (last.end - last.start) - 2 for o in others):
                    last = Event(T - (last.end - last.start), T, last.code)
                evs = sorted({first, last, *others}, key=lambda e: e.start)
            codes = list(dict.fromkeys(e.code for e in evs if e.violent))[:3]
            label = "-".join(codes + ["0"] * (3 - len(codes))) if codes else "A"
            name = f"Suite.{self.name}.{split}.{i:03d}__#{T}_label_{label}"
            return Plan(name, T, tuple(evs))
        raise RuntimeError(f"{self.name}: cannot place events in {T} snippets")


REGIMES: dict[str, Regime] = {r.name: r for r in [
    Regime("short", "shift", "1-3 short events (2-6 snippets each) per violent video",
           T=(40, 80), events=(1, 3), length=(0.04, 0.12), min_len=2),
    Regime("long", "sparse", "one event covering 50-95 % of the violent video",
           length=(0.5, 0.95), truth="annotations"),
    Regime("mid", "sparse", "one event covering 20-60 % (like the fixture that exposed the flank "
           "firing)", length=(0.2, 0.6)),
    Regime("edges", "shift", "1-2 events, one touching the start or the end of the video",
           events=(1, 2), length=(0.1, 0.5), edge=True),
    Regime("distractors", "heavy", "1-2 violent events; 1-2 non-violent activity events in every "
           "video (normal ones too)", events=(1, 2), length=(0.1, 0.4), distractors=(1, 2)),
    Regime("imbalance", "shift", "XD-Violence class shares (abuse 7 %), test set 5:3 violent, "
           "1-3 events of 5-60 %", events=(1, 3), length=(0.05, 0.6), share=XD_CLASS_SHARE,
           violent_fraction=(0.48, 0.62), truth="annotations"),
    Regime("unimodal", "sparse", "shooting/explosion/riot heard only, fighting/abuse/accident seen "
           "only", events=(1, 2), length=(0.1, 0.5),
           unimodal={"B2": "audio", "G": "audio", "B4": "audio", "B1": "video", "B5": "video",
                     "B6": "video"}),
    Regime("heavy", "heavy", "heavy tails (Student-t, 2.5 dof), correlated dimensions, "
           "1-3 events of 5-50 %", events=(1, 3), length=(0.05, 0.5)),
    Regime("jitter", "sparse", "label noise: each annotated boundary is up to 3 snippets off the "
           "evidence; 1-2 events of 10-40 %", events=(1, 2), length=(0.1, 0.4), jitter=3),
    Regime("change", "change", "evidence only in change over time (each snippet alone looks "
           "normal); 1-2 events of 10-40 %", events=(1, 2), length=(0.1, 0.4), min_len=3),
    Regime("pooled", "pooled", "pooled-CNN-like features (non-negative, autocorrelated, scene "
           "offset), 1-3 short events, hard negatives in normal videos", T=(40, 80),
           events=(1, 3), length=(0.04, 0.15), min_len=2, hard_negatives=(1, 2)),
    Regime("av-lag", "lag", "audio leads or lags the picture by 2-4 snippets; 1-2 events of "
           "10-40 %", events=(1, 2), length=(0.1, 0.4)),
    Regime("audio-only", "audio", "violent events heard only, distractors seen only; 1-2 events "
           "of 10-40 %", events=(1, 2), length=(0.1, 0.4), distractors=(0, 1)),
]}  # fmt: skip
RAW_REGIME = "raw"


def jittered(rng, ev: Event, jitter: int, T: int) -> Event:
    """Where the evidence of ``ev`` really is: each boundary moved by up to ``jitter`` snippets
    (the annotation keeps ``ev``); at least one snippet long, inside the video."""
    if jitter <= 0:
        return ev
    s = int(np.clip(ev.start + rng.integers(-jitter, jitter + 1), 0, T - 1))
    e = int(np.clip(ev.end + rng.integers(-jitter, jitter + 1), s + 1, T))
    return Event(s, e, ev.code)


def write_regime(root: Path, regime: Regime, n_train: int, n_test: int, seed: int) -> dict:
    """Official-format features, lists and truth of one regime under ``root``; returns the paths."""
    gen = GENERATORS[regime.generator](seed, regime.unimodal)
    rng = np.random.default_rng([seed, 1])
    paths = {}
    test_plans = []
    for split, n, frac in (("train", n_train, regime.violent_fraction[0]),
                           ("test", n_test, regime.violent_fraction[1])):  # fmt: skip
        folder = root / ("RGBTest" if split == "test" else "RGB")
        afolder = root / ("AudioTest" if split == "test" else "Audio")
        folder.mkdir(parents=True, exist_ok=True)
        afolder.mkdir(parents=True, exist_ok=True)
        n_violent = round(n * frac)
        flags = rng.permutation([True] * n_violent + [False] * (n - n_violent))
        rgb, aud = [], []
        for i, violent in enumerate(flags):
            plan = regime.plan(rng, i, split, bool(violent))
            v, a = gen.background(rng, plan.T)
            getattr(gen, "begin", lambda: None)()
            for ev in plan.events:
                gen.add_event(rng, v, a, jittered(rng, ev, regime.jitter, plan.T))
            getattr(gen, "finish", lambda v, a: None)(v, a)
            for k in range(NUM_CROPS):  # the corner crops see the same scene, slightly differently
                crop = v if k == 0 else v + rng.normal(0, 0.3, v.shape).astype(np.float32)
                np.save(folder / f"{plan.name}__{k}.npy", crop.astype(np.float32))
                rgb.append(str(folder / f"{plan.name}__{k}.npy"))
            np.save(afolder / f"{plan.name}__vggish.npy", a.astype(np.float32))
            aud.append(str(afolder / f"{plan.name}__vggish.npy"))
            if split == "test":
                test_plans.append(plan)
        tag = "_test" if split == "test" else ""
        (root / f"rgb{tag}.list").write_text("\n".join(rgb) + "\n")
        (root / f"audio{tag}.list").write_text("\n".join(aud) + "\n")
        paths[f"rgb{tag}"], paths[f"audio{tag}"] = (
            root / f"rgb{tag}.list",
            root / f"audio{tag}.list",
        )
    if regime.truth == "gt":
        parts = []
        for p in test_plans:
            y = np.zeros(p.T, np.float32)
            for ev in p.events:
                if ev.violent:
                    y[ev.start : ev.end] = 1
            parts.append(np.repeat(y, FRAMES_PER_SNIPPET))
        np.save(root / "gt.npy", np.concatenate(parts))
        paths["gt"] = root / "gt.npy"
    else:
        lines = []
        for p in test_plans:
            spans = [f"{ev.start * FRAMES_PER_SNIPPET} {ev.end * FRAMES_PER_SNIPPET}"
                     for ev in p.events if ev.violent]  # fmt: skip
            if spans:
                lines.append(f"{p.name}.mp4 " + " ".join(spans))
        (root / "annotations.txt").write_text("\n".join(lines) + "\n")
        paths["annotations"] = root / "annotations.txt"
    return paths


def build_store(out: Path, regime: Regime, n_train: int, n_test: int, seed: int) -> Path:
    store = out / "stores" / f"{regime.name}-d{seed}"
    if (store / "spec.json").exists():
        return store
    raw = out / "official" / f"{regime.name}-d{seed}"
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    p = write_regime(raw, regime, n_train, n_test, seed)
    import_official(store, p["rgb"], p["audio"], p["rgb_test"], p["audio_test"], gt=p.get("gt"),
                    annotations=p.get("annotations"), val_fraction=0.2, seed=seed,
                    progress=False)  # fmt: skip
    shutil.rmtree(raw)  # the store holds everything now
    return store


# -- path B: raw video ------------------------------------------------------------------------


def build_raw_store(out: Path, n_train: int, n_test: int, seconds: tuple[float, float],
                    seed: int) -> Path:  # fmt: skip
    """Synthetic untrimmed videos -> `avarnet extract` (tiny random backbones) -> XD store."""
    store = out / "stores" / f"{RAW_REGIME}-d{seed}"
    if (store / "spec.json").exists():
        return store
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent / "tests")]  # the tests' tiny backbones
    from backbone_factory import save_tiny_backbones
    from xdv_synthetic import SEGMENT_SECONDS, write_dataset

    from avarnet.apps.xdv import import_extracted
    from avarnet.extract import extract_dataset

    data, feats = out / f"raw_videos-d{seed}", out / f"raw_features-d{seed}"
    if not (data / "annotations.txt").exists():
        write_dataset(data, n_train, n_test, seconds, seed)
    vdir, adir = out / "backbones" / "tiny-mobilevit", out / "backbones" / "tiny-wav2vec2"
    if not ((vdir / "config.json").exists() and (adir / "config.json").exists()):
        vdir, adir = save_tiny_backbones(out / "backbones")
    extract_dataset(data, feats, weights="random", video_backbone=str(vdir),
                    audio_backbone=str(adir), segment_seconds=SEGMENT_SECONDS, device="cpu",
                    seed=seed, progress=False)  # fmt: skip
    import_extracted(feats, store, annotations=data / "annotations.txt", val_fraction=0.2,
                     seed=seed, progress=False)  # fmt: skip
    return store


# -- runs -------------------------------------------------------------------------------------


def run_key(regime: str, model: str, objective: str, seed: int, data_seed: int) -> str:
    return f"{regime}/d{data_seed}/{model}/{objective}/seed{seed}"


def weak_config(model: str, objective: str, seed: int, args: argparse.Namespace) -> WeakConfig:
    """The run's settings: ``avarnet xdv train``'s defaults (WeakConfig's) unless the command
    line of the suite overrides them."""
    given = {k: getattr(args, k) for k in ("epochs", "local_epochs", "batch_size", "lr", "processes")
             if getattr(args, k) is not None}  # fmt: skip
    return WeakConfig(model=model, seed=seed, device="cpu", num_threads=args.threads,
                      all_crops=not args.centre_crop_only, **given, **OBJECTIVES[objective])  # fmt: skip


def load_results(path: Path) -> dict[str, dict]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of an interrupted run
            out[r["key"]] = r
    return out


def one_run(store: Path, out: Path, regime: str, data_seed: int, model: str, objective: str,
            seed: int, args: argparse.Namespace) -> dict:  # fmt: skip
    cfg = weak_config(model, objective, seed, args)
    run_dir = out / "runs" / regime / f"d{data_seed}" / model / objective / f"seed{seed}"
    t = time.time()
    res = train_weak(store, run_dir, cfg, progress=False)
    m = evaluate_weak(res.checkpoint, store, out=None, progress=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    flank = m.get("flank_check") or {}
    return {
        "key": run_key(regime, model, objective, seed, data_seed),
        "regime": regime, "data_seed": data_seed, "model": model, "objective": objective,
        "seed": seed,
        "frame_ap": m["frame_ap"], "frame_pr_auc": m["frame_pr_auc"],
        "frame_roc_auc": m["frame_roc_auc"], "video_ap": m.get("video_ap"),
        "constant_ap": m["constant_baseline"]["frame_ap"],
        "constant_pr_auc": m["constant_baseline"]["frame_pr_auc"],
        "flank_firing": flank.get("flank_firing"),
        "best_epoch": res.best_epoch, "seconds": round(time.time() - t, 1),
    }  # fmt: skip


# -- tables -----------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if not len(v):
        return "—"
    return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def closed(ap: float, constant: float) -> float:
    """Fraction of the distance from the constant score's AP to 1 that ``ap`` covers."""
    return (ap - constant) / (1 - constant)


def spreads(rs: list[dict]) -> tuple[float, float]:
    """Std of frame AP over data seeds (of each data seed's mean over model seeds) and the mean
    std over model seeds within a data seed."""
    by_data: dict[int, list[float]] = {}
    for r in rs:
        by_data.setdefault(r.get("data_seed", 0), []).append(r["frame_ap"])
    means = [np.mean(v) for v in by_data.values()]
    within = [np.std(v) for v in by_data.values()]
    return float(np.std(means)), float(np.mean(within))


def worst_margin(rs: list[dict]) -> float:
    """The smallest frame AP - constant AP of any single run."""
    return min(r["frame_ap"] - r["constant_ap"] for r in rs)


def group(results: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in results:
        out.setdefault((r["regime"], r["model"], r["objective"]), []).append(r)
    return out


def regime_table(name: str, results: list[dict], models: list[str], objectives: list[str]) -> str:
    rows = [r for r in results if r["regime"] == name]
    if not rows:
        return ""
    g = group(rows)
    c_ap = float(np.mean([r["constant_ap"] for r in rows]))
    c_pr = float(np.mean([r["constant_pr_auc"] for r in rows]))
    lines = [
        "| model | objective | frame AP (sklearn) | frame PR-AUC (trapezoid) | frame ROC-AUC | "
        "video AP | gap closed | ± data / model seeds | worst run − constant | flank warnings | "
        "runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| constant score | — | {c_ap:.3f} | {c_pr:.3f} | 0.500 | — | 0 | — | — | — | — |",
    ]
    for model in models:
        for obj in objectives:
            rs = g.get((name, model, obj))
            if not rs:
                continue
            gap = np.mean([closed(r["frame_ap"], r["constant_ap"]) for r in rs])
            flank = sum(bool(r["flank_firing"]) for r in rs)
            sd_data, sd_model = spreads(rs)
            lines.append(
                f"| {model} | {obj} | {ms([r['frame_ap'] for r in rs])} | "
                f"{ms([r['frame_pr_auc'] for r in rs])} | {ms([r['frame_roc_auc'] for r in rs])} | "
                f"{ms([r['video_ap'] for r in rs])} | {gap:.2f} | {sd_data:.3f} / {sd_model:.3f} | "
                f"{worst_margin(rs):+.3f} | {flank}/{len(rs)} | {len(rs)} |"
            )
    return "\n".join(lines)


def summary_table(results: list[dict], regimes: list[str], models: list[str],
                  objectives: list[str]) -> str:  # fmt: skip
    """Mean frame AP per regime (3 seeds) and the worst regime's share of the gap closed."""
    g = group(results)
    present = [r for r in regimes if any(x["regime"] == r for x in results)]
    head = "| model | objective | " + " | ".join(present) + " | worst gap closed |"
    const = {r: float(np.mean([x["constant_ap"] for x in results if x["regime"] == r]))
             for r in present}  # fmt: skip
    lines = [
        head,
        "|---|---|" + "---|" * (len(present) + 1),
        "| constant score | — | " + " | ".join(f"{const[r]:.3f}" for r in present) + " | 0 |",
    ]
    for model in models:
        for obj in objectives:
            cells, gaps = [], []
            for reg in present:
                rs = g.get((reg, model, obj))
                if not rs:
                    cells.append("—")
                    continue
                ap = float(np.mean([r["frame_ap"] for r in rs]))
                cells.append(f"{ap:.3f}")
                gaps.append(float(np.mean([closed(r["frame_ap"], r["constant_ap"]) for r in rs])))
            if gaps:
                worst = f"**{min(gaps):.2f}**" if min(gaps) >= 0.5 else f"{min(gaps):.2f}"
                lines.append(f"| {model} | {obj} | " + " | ".join(cells) + f" | {worst} |")
    return "\n".join(lines)


def machine_line() -> str:
    cpu = platform.processor() or "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({cpu}), load average {load}"


def write_tables(
    out: Path,
    results: list[dict],
    regimes: list[str],
    models: list[str],
    objectives: list[str],
    args: argparse.Namespace,
    seconds: float,
) -> str:
    parts = ["## Summary: frame AP (scikit-learn), mean of the seeds", "",
             summary_table(results, regimes, models, objectives), ""]  # fmt: skip
    for name in regimes:
        table = regime_table(name, results, models, objectives)
        if table:
            what = REGIMES[name].what if name in REGIMES else RAW_WHAT
            gen = f"`{REGIMES[name].generator}` generator" if name in REGIMES else "raw video"
            parts += [f"### {name}: {what} ({gen})", "", table, ""]
    cmd = "python benchmarks/xdv_suite.py " + " ".join(sys.argv[1:])
    run_min = sum(r["seconds"] for r in results) / 60
    parts += [f"Command: `{cmd}`; {len(results)} runs, {run_min:.0f} min of training and "
              f"evaluation; {machine_line()} (shared machine)."]  # fmt: skip
    text = "\n".join(parts) + "\n"
    atomic_write_text(out / "tables.md", text)
    return text


RAW_WHAT = ("synthetic untrimmed videos (1-2 violent events of 3-8 s, crowd distractors) through "
            "`avarnet extract` with tiny random backbones")  # fmt: skip


def write_doc(tables: str) -> None:
    doc = DOC.read_text() if DOC.exists() else ""
    start, end = "<!-- suite tables: start -->", "<!-- suite tables: end -->"
    block = f"{start}\n{tables}{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc + "\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(DOC, doc)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/xdv_suite"))
    p.add_argument(
        "--regimes", nargs="+", default=[*REGIMES, RAW_REGIME], choices=[*REGIMES, RAW_REGIME]
    )
    p.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    p.add_argument(
        "--objectives",
        nargs="+",
        default=["refine"],
        choices=list(OBJECTIVES),
        help="objectives run for every model",
    )
    p.add_argument(
        "--mtcn-objectives",
        nargs="*",
        default=["mil", "old-default"],
        choices=list(OBJECTIVES),
        help="further objectives run for MTCN only",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds of MTCN with the default objective")
    p.add_argument(
        "--other-seeds",
        type=int,
        default=3,
        help="seeds of every other (model, objective) pair",
    )
    p.add_argument(
        "--train", type=int, default=120, help="training videos per regime (a fifth validates)"
    )
    p.add_argument("--test", type=int, default=40, help="test videos per regime")
    p.add_argument("--epochs", type=int, help="default: avarnet xdv train's")
    p.add_argument("--local-epochs", type=int, help="default: avarnet xdv train's")
    p.add_argument("--batch-size", type=int, help="default: avarnet xdv train's")
    p.add_argument("--lr", type=float, help="default: avarnet xdv train's")
    p.add_argument("--centre-crop-only", action="store_true", help="default: all five crops")
    p.add_argument("--data-seeds", type=int, default=3, help="datasets drawn per regime")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument(
        "--processes", type=int, help="training processes per run (default: xdv train's)"
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once (processes)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="smoke run: small data, MTCN and GRU, 1 seed"
    )
    p.add_argument("--no-doc", action="store_true", help=f"do not update {DOC.name}")
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="write the tables from OUT/results.jsonl without running anything",
    )
    args = p.parse_args()
    if args.quick:
        args.train, args.test, args.epochs, args.seeds, args.other_seeds = 40, 16, 10, 1, 1
        args.data_seeds = 1
        if args.models == list_models():
            args.models = ["mtcn", "gru"]
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    done = load_results(results_path)
    t0 = time.time()
    matrix = [(m, o) for m in args.models for o in args.objectives]
    matrix += [("mtcn", o) for o in args.mtcn_objectives
               if "mtcn" in args.models and o not in args.objectives]  # fmt: skip
    objectives = list(dict.fromkeys([*args.objectives, *args.mtcn_objectives]))
    seeds = {pair: args.seeds if pair == ("mtcn", args.objectives[0]) else args.other_seeds
             for pair in matrix}  # fmt: skip
    stores: dict[str, Path] = {}
    runs = []  # (regime, model, objective, seed), first what acceptance rests on, then by seed
    data_seeds = [args.data_seed + i for i in range(args.data_seeds)]
    for regime in [] if args.tables_only else args.regimes:
        for d in data_seeds:
            for model, obj in matrix:
                for seed in range(seeds[(model, obj)]):
                    if run_key(regime, model, obj, seed, d) not in done:
                        runs.append((regime, d, model, obj, seed))
    main_pair = ("mtcn", args.objectives[0])
    runs.sort(key=lambda r: (r[2:4] != main_pair, r[4], r[1], args.regimes.index(r[0])))
    for regime, d in dict.fromkeys(r[:2] for r in runs):  # stores first, in this process
        if regime == RAW_REGIME:
            raw = (16, 8) if args.quick else (24, 12)
            stores[(regime, d)] = build_raw_store(args.out, *raw, (20.0, 40.0), d)
        else:
            stores[(regime, d)] = build_store(args.out, REGIMES[regime], args.train, args.test, d)
    jobs = max(1, min(args.jobs, len(runs)))
    ctx = multiprocessing.get_context("spawn")  # no OpenMP state forked from this process
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = {pool.submit(one_run, stores[r[:2]], args.out, *r, args): r for r in runs}
        for n, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            done[r["key"]] = r
            with open(results_path, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"[{n}/{len(runs)}] {r['key']}: frame AP {r['frame_ap']:.3f} (constant "
                  f"{r['constant_ap']:.3f}) {r['seconds']:.0f}s", flush=True)  # fmt: skip
    wanted = [r for r in done.values() if r["regime"] in args.regimes
              and r.get("data_seed", 0) in data_seeds
              and r["seed"] < seeds.get((r["model"], r["objective"]), 0)]  # fmt: skip
    tables = write_tables(args.out, wanted, args.regimes, args.models, objectives, args,
                          time.time() - t0)  # fmt: skip
    print(tables)
    if not args.no_doc and not args.quick:
        write_doc(tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
