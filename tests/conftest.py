"""Shared fixtures: tiny backbones saved with save_pretrained, small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from avarnet.encoders import save_tiny_backbones  # noqa: F401  (tests import it from here too)

# The shared real recordings (../shared/fixtures beside the checkout; AVARNET_SHARED_FIXTURES elsewhere).
SHARED_FIXTURES = Path(
    os.environ.get(
        "AVARNET_SHARED_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    )
)


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 classes x 3 short clips of the synthetic generator."""
    from avarnet.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("data") / "ds"
    synthesize_dataset(
        root,
        clips_per_class=3,
        seed=7,
        duration=(2.0, 3.0),
        size=(96, 64),
        classes=("crash", "normal", "pain"),
        progress=False,
    )
    return root


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; a command's --threads must not leak into other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
