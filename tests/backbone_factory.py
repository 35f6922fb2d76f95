"""Tiny MobileViT and Wav2Vec2 backbones saved like hub checkpoints (for tests and offline
benchmarks: ``VideoEncoder.load(dir)`` / ``AudioEncoder.load(dir)`` take them as they take
downloaded ones)."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VIDEO_DIR, TINY_AUDIO_DIR = "tiny-mobilevit", "tiny-wav2vec2"
TINY_PREPROCESSOR = (
    '{"image_processor_type": "MobileViTImageProcessor", "size": {"shortest_edge": 72}, '
    '"crop_size": {"height": 64, "width": 64}, "do_flip_channel_order": true, "do_rescale": true, '
    '"rescale_factor": 0.00392156862745098, "do_center_crop": true, "do_resize": true}'
)


def save_tiny_backbones(root: Path) -> tuple[Path, Path]:
    """A tiny MobileViT and a tiny Wav2Vec2 under ``root``, seeded random weights, saved with
    ``save_pretrained``. Returns (video folder, audio folder)."""
    from transformers import (
        MobileViTConfig,
        MobileViTModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    torch.manual_seed(0)
    vdir, adir = root / TINY_VIDEO_DIR, root / TINY_AUDIO_DIR
    vcfg = MobileViTConfig(
        image_size=64,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
        num_attention_heads=2,
        patch_size=2,
    )
    MobileViTModel(vcfg).save_pretrained(vdir)
    (vdir / "preprocessor_config.json").write_text(TINY_PREPROCESSOR)
    acfg = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(acfg).save_pretrained(adir)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(adir)
    return vdir, adir
