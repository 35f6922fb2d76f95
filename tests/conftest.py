"""Shared fixtures: tiny backbones saved with save_pretrained, small synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def save_tiny_backbones(root: Path) -> tuple[Path, Path]:
    """A tiny MobileViT and a tiny Wav2Vec2, randomly initialised and saved like hub checkpoints."""
    from transformers import (
        MobileViTConfig,
        MobileViTModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    torch.manual_seed(0)
    vdir, adir = root / "tiny-mobilevit", root / "tiny-wav2vec2"
    vcfg = MobileViTConfig(
        image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
        num_attention_heads=2, patch_size=2,
    )
    MobileViTModel(vcfg).save_pretrained(vdir)
    (vdir / "preprocessor_config.json").write_text(
        '{"image_processor_type": "MobileViTImageProcessor", "size": {"shortest_edge": 72}, '
        '"crop_size": {"height": 64, "width": 64}, "do_flip_channel_order": true, "do_rescale": true, '
        '"rescale_factor": 0.00392156862745098, "do_center_crop": true, "do_resize": true}'
    )
    acfg = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(acfg).save_pretrained(adir)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(adir)
    return vdir, adir


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 classes x 3 short clips of the synthetic generator."""
    from avarnet.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("data") / "ds"
    synthesize_dataset(root, clips_per_class=3, seed=7, duration=(2.0, 3.0), size=(96, 64),
                       classes=("crash", "normal", "pain"), progress=False)
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
