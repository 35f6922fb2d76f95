"""Shared fixtures: tiny backbones saved with save_pretrained, small synthetic datasets."""

from __future__ import annotations

import gc
import json
import os
import subprocess
from pathlib import Path

import launcher
import numpy as np
import pytest

# The shared real recordings (../shared/fixtures beside the checkout; AVARNET_SHARED_FIXTURES elsewhere).
SHARED_FIXTURES = Path(
    os.environ.get(
        "AVARNET_SHARED_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    )
)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtestloop(session):
    """Commands' forkserver: a fork of this worker, before any test starts a thread. Not in
    pytest-xdist's controller: it runs no test, and its imports would slow the workers' start."""
    controller = session.config.pluginmanager.hasplugin("dsession")
    if not session.config.option.collectonly and not controller:
        launcher.start_here()
    yield


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> tuple[Path, Path]:
    from backbone_factory import save_tiny_backbones

    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


def small_dataset(
    root: Path, classes: tuple[str, ...], clips_per_class: int, seed: int, duration
) -> Path:
    """Synthetic 96x64 clips in ROOT/<class>/, without a progress bar."""
    from avarnet.synth import synthesize_dataset

    synthesize_dataset(
        root,
        clips_per_class=clips_per_class,
        seed=seed,
        duration=duration,
        size=(96, 64),
        classes=classes,
        progress=False,
    )
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 classes x 3 short clips of the synthetic generator."""
    root = tmp_path_factory.mktemp("data") / "ds"
    return small_dataset(
        root, ("crash", "normal", "pain"), clips_per_class=3, seed=7, duration=(2.0, 3.0)
    )


def untrained_checkpoint(
    spec,
    classes=("crash", "normal", "pain"),
    seq_len: int = 4,
    std: float = 0.5,
    centred: bool = False,
):
    """A seeded, untrained MTCN over features made as ``spec`` says (L = ``seq_len``): for tests
    that need a checkpoint to run, not a good one. ``std`` scales the normaliser (a small one
    magnifies feature changes); ``centred`` uses a zero mean instead of a seeded random one."""
    import torch

    from avarnet.checkpoint import Checkpoint
    from avarnet.config import ModelConfig, TrainConfig
    from avarnet.data import Normalizer
    from avarnet.models import create_model

    cfg = ModelConfig(input_dim=spec.video_dim + spec.audio_dim, num_classes=len(classes), hidden=16,
                      stages=2, layers=3, heads=2, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    mean = np.random.default_rng(0).normal(0, 0.1, cfg.input_dim).astype(np.float32)
    norm = Normalizer(
        np.zeros_like(mean) if centred else mean, np.full(cfg.input_dim, std, np.float32)
    )
    return Checkpoint(model, cfg, TrainConfig(seq_len=seq_len), list(classes), spec, norm, None, {})


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; a command's --threads must not leak into other tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_gc():
    """A fresh interpreter's garbage-collection thresholds, for a test that measures memory in-process
    (the test workers collect young objects less often)."""
    before = gc.get_threshold()
    gc.set_threshold(*launcher.GC_THRESHOLDS)
    gc.collect()
    yield
    gc.set_threshold(*before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def strict_load(text: str):
    """json.loads that refuses NaN / Infinity literals, as strict parsers do."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def error_lines(stderr: str, command: str) -> list[str]:
    """The lines of ``stderr`` that ``avarnet COMMAND`` reports an error with."""
    return [line for line in stderr.splitlines() if line.startswith(f"avarnet {command}: ")]


TINY_CLASSES = ("crash", "normal", "pain")
TINY_SEQ_LEN = 4


def make_tiny_extractor(tiny_backbones, segment_seconds: float = 1.0):
    """An Extractor over the tiny backbones (1 frame per segment)."""
    from avarnet.encoders import AudioEncoder, VideoEncoder
    from avarnet.extract import build_spec
    from avarnet.features import Extractor

    vdir, adir = tiny_backbones
    v = VideoEncoder.load(str(vdir), device="cpu")
    a = AudioEncoder.load(str(adir), device="cpu")
    return Extractor(build_spec(v, a, "pretrained", 0, segment_seconds, 1), v, a)


@pytest.fixture(scope="session")
def tiny_ckpt_path(tiny_backbones, tmp_path_factory) -> Path:
    """An untrained checkpoint over the tiny backbones' features (classes TINY_CLASSES, L = 4)."""
    from avarnet.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    spec = make_tiny_extractor(tiny_backbones).spec
    save_checkpoint(path, untrained_checkpoint(spec, TINY_CLASSES, TINY_SEQ_LEN))
    return path


FAST_TRAIN = dict(epochs=25, batch_size=16, seed=0, device="cpu", lr=3e-3)
SMALL_MODEL = dict(hidden=16, stages=2, layers=3, heads=2)


@pytest.fixture(scope="session")
def factory_store(tmp_path_factory):
    """feature_factory's store: 3 classes x 9 clips with a known signal in each sense."""
    from feature_factory import make_store

    return make_store(tmp_path_factory.mktemp("feats") / "s", per_class=9)


@pytest.fixture(scope="session")
def trained(factory_store, tmp_path_factory):
    """A small MTCN trained on ``factory_store`` (FAST_TRAIN, SMALL_MODEL)."""
    from avarnet.config import TrainConfig
    from avarnet.train import train

    out = tmp_path_factory.mktemp("run")
    return train(factory_store, out, TrainConfig(**FAST_TRAIN), SMALL_MODEL, progress=False)


def rewrite_checkpoint(
    src: Path,
    dst: Path,
    meta: dict | None = None,
    tensors: dict | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A copy of a checkpoint with metadata entries / tensors replaced or dropped."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        m = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    m.update(meta or {})
    t.update(tensors or {})
    for k in drop:
        m.pop(k, None)
        t.pop(k, None)
    save_file(t, str(dst), metadata=m)
    return dst


MEMORY_CAP = 3 * 1024**3  # address space of every capped subprocess


def run_capped(
    argv: list[str], cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run ``argv`` (``python -m avarnet ...`` or ``python -c ...``) in a process of its own with
    its address space capped at MEMORY_CAP, on one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return launcher.run(argv, env=env, cwd=cwd, timeout=timeout, memory_cap=MEMORY_CAP)


def backbone_args(tiny_backbones) -> list[str]:
    """The CLI options that select the tiny backbones, on the CPU."""
    vdir, adir = tiny_backbones
    return ["--video-backbone", str(vdir), "--audio-backbone", str(adir), "--device", "cpu"]


def extract_argv(tiny_backbones, data: Path, out: Path, *extra: str) -> list[str]:
    """``avarnet -q extract DATA --out OUT`` with the tiny backbones."""
    return ["-q", "extract", str(data), "--out", str(out), *backbone_args(tiny_backbones), *extra]


@pytest.fixture(scope="session")
def tiny_store(tiny_backbones, tiny_dataset, tmp_path_factory) -> Path:
    """``tiny_dataset`` extracted in-process through the CLI with the tiny pretrained backbones."""
    from avarnet.cli import main

    feats = tmp_path_factory.mktemp("tiny_store") / "feats"
    assert main(extract_argv(tiny_backbones, tiny_dataset, feats, "--workers", "0")) == 0
    return feats


def backbones(tiny_backbones) -> dict:
    """Library keyword arguments that select the tiny backbones, on the CPU, without progress."""
    vdir, adir = tiny_backbones
    return {
        "video_backbone": str(vdir),
        "audio_backbone": str(adir),
        "device": "cpu",
        "progress": False,
    }


@pytest.fixture(scope="session")
def mixed_dataset(tmp_path_factory) -> Path:
    """Good clips (two longer than one 10-s audio chunk) with hostile files mixed into the classes,
    for the extraction engines' tests (the Ray test sets the hostile files aside, then back)."""
    import media_factory as mf

    root, long = tmp_path_factory.mktemp("mixed") / "ds", tmp_path_factory.mktemp("long")
    small_dataset(root, ("crash", "normal"), clips_per_class=2, seed=5, duration=(2.0, 3.5))
    small_dataset(long, ("pain",), clips_per_class=2, seed=6, duration=(11.0, 12.5))
    (root / "pain").mkdir()
    for p in (long / "pain").iterdir():
        p.rename(root / "pain" / p.name)
    for make in (mf.video_no_audio, mf.short_clip, mf.one_fps_clip, mf.unicode_name_clip):
        make(root / "normal")
    for make in (mf.empty_file, mf.text_as_mp4, mf.truncated_mp4, mf.audio_only):
        make(root / "crash")
    return root


@pytest.fixture(scope="session")
def in_process_store(mixed_dataset, tiny_backbones, tmp_path_factory) -> Path:
    """``mixed_dataset`` extracted by the single-thread engine: what the other engines must write."""
    from avarnet.extract import extract_dataset

    out = tmp_path_factory.mktemp("single") / "feats"
    r = extract_dataset(mixed_dataset, out, workers=0, **backbones(tiny_backbones))
    assert r.done == 10 and len(r.failures) == 4
    return out


CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never `playwright install`
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright, for one test module's pages (module-scoped: a second
    sync Playwright may not start while one runs)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium (/usr/bin/chromium) is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def write_event_clip(path: Path, seconds: float) -> Path:
    """The synthetic scene with a crash event (96 x 64, 10 fps, 16 kHz): scores change over time."""
    from avarnet.synth import render_clip, write_av

    frames, audio = render_clip("crash", np.random.default_rng(3), seconds, 10.0, (96, 64), 16_000)
    write_av(path, frames, 10.0, audio, 16_000)
    return path


def tiny_checkpoint(extractor):
    """An untrained (seeded) temporal model over ``extractor``'s features (TINY_CLASSES, L = 4)."""
    return untrained_checkpoint(extractor.spec, TINY_CLASSES, TINY_SEQ_LEN)


def cli(*args: str) -> list[str]:
    """CLI arguments for a quiet run on the CPU (``stream`` on one thread)."""
    threads = ["--threads", "1"] if args[0] == "stream" else []
    return ["-q", *args, "--device", "cpu", *threads]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def predict_argv(video, checkpoint, out, *extra: str) -> list[str]:
    """``avarnet -q predict VIDEO --checkpoint CKPT --out OUT``."""
    return ["-q", "predict", str(video), "--checkpoint", str(checkpoint), "--out", str(out), *extra]


def pytest_collection_modifyitems(session, config, items):
    """Within each module, the slow tests first: a worker that ends on a module ends on its quick
    tests, which another worker can take over, rather than on one long test."""
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path, i)
    items.sort(key=lambda it: (first[it.path], it.get_closest_marker("slow") is None))
