"""Backbone wrappers: loading rules, preprocessing, random-weight health, audio framing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    MobileViTConfig,
    MobileViTImageProcessorPil,
    MobileViTModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from avarnet.encoders import (
    AudioEncoder,
    EncoderLoadError,
    VideoEncoder,
    resolve_device,
)

TINY_IMAGE = 64
TINY_SHORTEST_EDGE = 72
TINY_VIDEO_DIM = 48
TINY_AUDIO_DIM = 32
HEALTHY_ABS = 1e-6  # well above float32 denormals (< 1.2e-38) and vanished activations


def tiny_mobilevit_config() -> MobileViTConfig:
    return MobileViTConfig(
        image_size=TINY_IMAGE,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 24, TINY_VIDEO_DIM],
        num_attention_heads=2,
        patch_size=2,
    )


def tiny_wav2vec2_config() -> Wav2Vec2Config:
    # conv_kernel / conv_stride stay at wav2vec2-base's values: hop 320, receptive field 400
    return Wav2Vec2Config(
        hidden_size=TINY_AUDIO_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )


def synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: noisy backgrounds with a coloured disc or square each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        cy, cx = (
            rng.integers(height // 4, 3 * height // 4),
            rng.integers(width // 4, 3 * width // 4),
        )
        radius = rng.integers(height // 10, height // 4)
        if i % 2:
            shape = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        else:
            shape = (abs(yy - cy) < radius) & (abs(xx - cx) < radius)
        image = np.broadcast_to(rng.uniform(0, 255, 3), (height, width, 3)).copy()
        image[shape] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 10, image.shape)
        frames[i] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny MobileViT with its image processor (shortest edge 72, crop 64)."""
    folder = tmp_path_factory.mktemp("mobilevit")
    torch.manual_seed(1)
    MobileViTModel(tiny_mobilevit_config()).save_pretrained(folder)
    MobileViTImageProcessorPil(
        size={"shortest_edge": TINY_SHORTEST_EDGE},
        crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE},
        do_flip_channel_order=False,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Wav2Vec2 with its feature extractor config."""
    folder = tmp_path_factory.mktemp("wav2vec2")
    torch.manual_seed(2)
    Wav2Vec2Model(tiny_wav2vec2_config()).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16_000).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def audio(audio_dir: Path) -> AudioEncoder:
    return AudioEncoder.load(str(audio_dir), device="cpu")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --------------------------------------------------------------------------- devices


def test_resolve_device_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")


# --------------------------------------------------------------------------- pretrained loading


def test_video_from_local_folder(video_dir: Path) -> None:
    encoder = VideoEncoder.load(str(video_dir), device="cpu")
    assert (encoder.weights, encoder.source, encoder.dim) == ("pretrained", str(video_dir), 48)
    assert (encoder.image_size, encoder.resize_shortest_edge) == (TINY_IMAGE, TINY_SHORTEST_EDGE)
    assert encoder.flip_channel_order is False
    assert encoder.describe() == {}
    assert_same_weights(encoder.model, MobileViTModel.from_pretrained(video_dir))
    features = encoder.encode(synthetic_frames(5, 72, 96), batch_size=2)
    assert features.shape == (5, TINY_VIDEO_DIM) and features.dtype == np.float32
    assert encoder.encode(np.zeros((0, 72, 96, 3), dtype=np.uint8)).shape == (0, TINY_VIDEO_DIM)


def test_video_encode_batching_does_not_change_features(video_dir: Path) -> None:
    encoder = VideoEncoder.load(str(video_dir), device="cpu")
    frames = synthetic_frames(5, 72, 96)
    np.testing.assert_allclose(
        encoder.encode(frames, batch_size=2), encoder.encode(frames, batch_size=5), atol=1e-5
    )


def test_missing_preprocessor_falls_back_to_mobilevit_small(tmp_path: Path) -> None:
    MobileViTModel(tiny_mobilevit_config()).save_pretrained(tmp_path)
    encoder = VideoEncoder.load(str(tmp_path), device="cpu")
    assert (encoder.image_size, encoder.resize_shortest_edge, encoder.flip_channel_order) == (
        256,
        288,
        True,
    )


def test_audio_from_local_folder(audio_dir: Path, audio: AudioEncoder) -> None:
    assert (audio.weights, audio.dim, audio.sample_rate, audio.hop) == (
        "pretrained",
        TINY_AUDIO_DIM,
        16_000,
        320,
    )
    assert_same_weights(audio.model, Wav2Vec2Model.from_pretrained(audio_dir))
    assert audio.encode_chunk(np.zeros(16_000, dtype=np.float32)).shape == (49, TINY_AUDIO_DIM)


@pytest.mark.parametrize(
    ("encoder_cls", "setting"),
    [(VideoEncoder, "video_backbone"), (AudioEncoder, "audio_backbone")],
)
def test_unreachable_hub_id_names_both_remedies(
    monkeypatch: pytest.MonkeyPatch, encoder_cls: type, setting: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderLoadError) as info:
        encoder_cls.load("no-such-org/no-such-model", device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "no-such-org/no-such-model" in message and "pretrained weights" in message
    assert "random weights" in message and "--weights" not in message
    assert f"local folder DIR as the {setting.replace('_', ' ')}" in message
    assert info.value.remedies == (f"{setting}=DIR", "weights=random")
    assert info.value.__cause__ is not None


def test_wrong_model_type_and_missing_folder(video_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match="expected 'wav2vec2'"):
        AudioEncoder.load(str(video_dir), device="cpu")
    with pytest.raises(EncoderLoadError, match="no such folder"):
        VideoEncoder.load(str(tmp_path / "absent"), device="cpu")


def test_unknown_weights_mode_rejected() -> None:
    with pytest.raises(ValueError, match="weights"):
        VideoEncoder.load(weights="imagenet", device="cpu")


# --------------------------------------------------------------------------- preprocessing


def test_preprocess_resizes_crops_flips_and_scales(video_dir: Path) -> None:
    encoder = VideoEncoder.load(str(video_dir), device="cpu")
    frames = np.zeros((2, 144, 200, 3), dtype=np.uint8)  # shortest edge 144 -> 72
    frames[..., 0] = 255  # pure red
    pixels = encoder.preprocess(frames)
    assert pixels.shape == (2, 3, TINY_IMAGE, TINY_IMAGE) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[:, 0], torch.ones(2, TINY_IMAGE, TINY_IMAGE))  # RGB kept
    assert pixels[:, 1:].abs().max() == 0

    encoder.flip_channel_order = True
    flipped = encoder.preprocess(frames)
    torch.testing.assert_close(flipped[:, 2], torch.ones(2, TINY_IMAGE, TINY_IMAGE))  # BGR


def test_preprocess_takes_the_centre(video_dir: Path) -> None:
    encoder = VideoEncoder.load(str(video_dir), device="cpu")
    frame = np.zeros((1, TINY_SHORTEST_EDGE, 100, 3), dtype=np.uint8)  # no resize needed
    frame[:, 4:68, 18:82] = 255  # exactly the 64x64 centre crop
    pixels = encoder.preprocess(frame)
    torch.testing.assert_close(pixels, torch.ones(1, 3, TINY_IMAGE, TINY_IMAGE))


# --------------------------------------------------------------------------- random weights


def test_random_weights_are_seeded_and_leave_global_rng_alone(video_dir: Path) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = VideoEncoder.load(str(video_dir), weights="random", seed=7, device="cpu")
    assert torch.equal(torch.rand(1), expected_next)
    b = VideoEncoder.load(str(video_dir), weights="random", seed=7, device="cpu")
    c = VideoEncoder.load(str(video_dir), weights="random", seed=8, device="cpu")
    assert_same_weights(a.model, b.model)
    conv_a, conv_c = (e.model.conv_stem.convolution.weight for e in (a, c))
    assert not torch.equal(conv_a, conv_c)
    # architecture and preprocessing from the folder, weights not from its checkpoint
    assert a.dim == TINY_VIDEO_DIM and a.resize_shortest_edge == TINY_SHORTEST_EDGE
    saved = MobileViTModel.from_pretrained(video_dir).conv_stem.convolution.weight
    assert not torch.equal(conv_a, saved)


def test_random_init_recipe(video_dir: Path) -> None:
    encoder = VideoEncoder.load(str(video_dir), weights="random", device="cpu")
    for module in encoder.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    stem = encoder.model.conv_stem.convolution
    fan_out = stem.out_channels * stem.kernel_size[0] * stem.kernel_size[1]
    assert stem.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.3)


def test_known_hub_ids_build_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dims = {
        "apple/mobilevit-x-small": 384,
        "apple/mobilevit-xx-small": 320,
    }
    for source, dim in dims.items():
        encoder = VideoEncoder.load(source, weights="random", device="cpu")
        assert encoder.dim == dim and encoder.image_size == 256
    with pytest.raises(EncoderLoadError, match="random weights"):
        VideoEncoder.load("no-such-org/no-such-model", weights="random", device="cpu")


def test_calibrate_and_bn_state_round_trip(video_dir: Path) -> None:
    frames = synthetic_frames(6, 72, 80)
    calibrated = VideoEncoder.load(str(video_dir), weights="random", seed=3, device="cpu")
    assert calibrated.calibrate([frames[:3], frames[3], frames[4:]], batch_size=4) == 6
    assert calibrated.describe() == {
        "seed": 3,
        "init": "kaiming_normal(fan_out, relu); bn gamma=1, beta=0",
        "calibration_frames": 6,
    }
    restored = VideoEncoder.load(str(video_dir), weights="random", seed=3, device="cpu")
    before = restored.encode(frames)
    restored.load_bn_state(calibrated.bn_state(), calibration_frames=6)
    after = restored.encode(frames)
    np.testing.assert_array_equal(after, calibrated.encode(frames))
    assert not np.allclose(before, after)  # the statistics matter
    assert restored.describe() == calibrated.describe()
    with pytest.raises(ValueError, match="does not fit"):
        restored.load_bn_state({"conv_stem.normalization.running_mean": torch.zeros(8)})


def test_calibrate_refuses_pretrained_and_empty_input(video_dir: Path) -> None:
    with pytest.raises(ValueError, match="random weights"):
        VideoEncoder.load(str(video_dir), device="cpu").calibrate(synthetic_frames(2, 72, 72))
    random_encoder = VideoEncoder.load(str(video_dir), weights="random", device="cpu")
    with pytest.raises(ValueError, match="at least one frame"):
        random_encoder.calibrate([])


@pytest.fixture(scope="module")
def full_size_frames() -> np.ndarray:
    return synthetic_frames(14, 256, 256, seed=5)  # already the crop size: no resize


def test_full_size_random_mobilevit_sees(full_size_frames: np.ndarray) -> None:
    encoder = VideoEncoder.load(weights="random", seed=0, device="cpu")  # mobilevit-small, offline
    assert encoder.dim == 640
    assert encoder.calibrate(full_size_frames[:8], batch_size=8) == 8
    features = encoder.encode(full_size_frames[8:], batch_size=6)  # held-out frames
    assert features.shape == (6, 640)
    assert np.isfinite(features).all()
    assert np.mean(np.abs(features) > HEALTHY_ABS) > 0.99  # no zeros, no denormals
    assert features.std(axis=0).mean() > 1e-2  # images are told apart


def test_transformers_default_init_vanishes(full_size_frames: np.ndarray) -> None:
    """Why the recipe exists: BatchNorm gamma ~ N(0, 0.02) shrinks features to ~0."""
    torch.manual_seed(0)
    plain = MobileViTModel(MobileViTConfig()).eval()
    pixels = torch.from_numpy(full_size_frames[:4]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        features = plain(pixel_values=pixels).pooler_output
    assert features.abs().max().item() < 1e-20


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize("num_samples", [400, 719, 720, 1_000, 3_999, 16_000])
def test_audio_frame_count(audio: AudioEncoder, num_samples: int) -> None:
    samples = np.random.default_rng(0).normal(size=num_samples).astype(np.float32)
    features = audio.encode_chunk(samples)
    expected = (num_samples - 400) // 320 + 1
    assert features.shape == (expected, TINY_AUDIO_DIM) and features.dtype == np.float32
    assert audio.num_frames(num_samples) == expected


def test_audio_short_and_empty_chunks(audio: AudioEncoder) -> None:
    short = np.random.default_rng(1).normal(size=100).astype(np.float32)
    assert audio.encode_chunk(short).shape == (1, TINY_AUDIO_DIM)
    assert audio.num_frames(100) == 1
    assert audio.encode_chunk(np.zeros(0, dtype=np.float32)).shape == (0, TINY_AUDIO_DIM)


def test_audio_is_gain_invariant(audio: AudioEncoder) -> None:
    samples = 0.1 * np.random.default_rng(2).normal(size=4_000).astype(np.float32)
    np.testing.assert_allclose(
        audio.encode_chunk(samples), audio.encode_chunk(3 * samples), atol=1e-4
    )


def test_audio_frame_times(audio: AudioEncoder) -> None:
    times = audio.frame_times(5, offset_seconds=10.0)
    np.testing.assert_allclose(np.diff(times), 0.02)
    assert times[0] == pytest.approx(10.0 + 200 / 16_000)  # centre of the first 400 samples


def test_random_audio_from_config_folder(audio_dir: Path) -> None:
    a = AudioEncoder.load(str(audio_dir), weights="random", seed=4, device="cpu")
    b = AudioEncoder.load(str(audio_dir), weights="random", seed=4, device="cpu")
    assert_same_weights(a.model, b.model)
    assert a.dim == TINY_AUDIO_DIM and a.describe()["seed"] == 4
    features = a.encode_chunk(np.random.default_rng(3).normal(size=8_000).astype(np.float32))
    assert np.isfinite(features).all() and features.std() > 0.1  # Wav2Vec2's own init keeps scale


# --------------------------------------------------------------------------- runtime


def test_audio_encode_batch_equals_one_window_at_a_time(audio: AudioEncoder) -> None:
    rng = np.random.default_rng(5)
    windows = [rng.normal(0, 0.1, n).astype(np.float32) for n in (8_000, 0, 8_000, 250, 12_000)]
    batched = audio.encode_batch(windows)
    assert [len(f) for f in batched] == [audio.num_frames(len(w)) for w in windows]
    for w, got in zip(windows, batched, strict=True):
        alone = audio.encode_chunk(w)
        assert got.shape == alone.shape
        np.testing.assert_allclose(got, alone, atol=1e-5)
    # each window is normalised on its own: a louder neighbour in the batch changes nothing
    louder = audio.encode_batch([windows[0], 50 * windows[2]])
    np.testing.assert_allclose(louder[0], batched[0], atol=1e-5)


def test_video_forward_is_the_batch_method(video_dir: Path) -> None:
    enc = VideoEncoder.load(str(video_dir), device="cpu")
    frames = np.random.default_rng(6).integers(0, 255, (3, 50, 70, 3), dtype=np.uint8)
    np.testing.assert_allclose(enc.forward(enc.preprocess(frames)), enc.encode(frames), atol=1e-6)


# --------------------------------------------------------------------------- the defaults stay as they were


def test_default_backbones_are_bit_identical_to_the_plain_models(
    video_dir: Path, audio_dir: Path
) -> None:
    """MobileViT and Wav2Vec2 through the encoder interface give exactly what the bare models give
    on the preprocessing they always had (resize, crop, flip, /255; zero-mean unit-variance audio),
    and record nothing new in the feature spec (old stores and checkpoints compare equal)."""
    import torch.nn.functional as F
    from transformers import MobileViTModel, Wav2Vec2Model

    video = VideoEncoder.load(str(video_dir), device="cpu")
    audio = AudioEncoder.load(str(audio_dir), device="cpu")
    assert video.entry == {} and audio.entry == {} and video.kind == "frame"
    frames = synthetic_frames(3, 90, 120, seed=5)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(72, 96), mode="bilinear", antialias=True, align_corners=False)
    x = x[..., 4:68, 16:80] * (1.0 / 255.0)
    with torch.inference_mode():
        expected = MobileViTModel.from_pretrained(video_dir).eval()(pixel_values=x).pooler_output
    assert torch.equal(torch.from_numpy(video.encode(frames)), expected)
    samples = np.random.default_rng(6).normal(size=5000).astype(np.float32)
    norm = (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)
    with torch.inference_mode():
        model = Wav2Vec2Model.from_pretrained(audio_dir).eval()
        hidden = model(input_values=torch.from_numpy(norm[None].astype(np.float32)))
    assert torch.equal(torch.from_numpy(audio.encode_chunk(samples)), hidden.last_hidden_state[0])


def test_specs_without_encoder_fields_still_load() -> None:
    from avarnet.config import FeatureSpec, spec_problem

    old = {k: v for k, v in FeatureSpec().to_dict().items() if not k.endswith("_encoder")}
    spec = FeatureSpec.from_dict(old)
    assert spec == FeatureSpec() and spec.video_encoder == spec.audio_encoder == {}
    assert spec_problem(spec) is None
    assert "video_encoder" in spec_problem(spec.replace(video_encoder="onnx"))


# --------------------------------------------------------------------------- any transformers model


def test_other_image_family_matches_its_own_processor(tmp_path: Path) -> None:
    """A ViT folder loads through AutoModel, takes its processor's rescale and mean/std, and gives
    its pooler output; the feature spec entry says so."""
    import encoder_factory as ef
    from transformers import AutoImageProcessor, ViTModel

    folder = ef.save_tiny_vit(tmp_path / "vit")
    encoder = VideoEncoder.load(str(folder), device="cpu")
    assert encoder.entry["model_type"] == "vit" and encoder.entry["pooling"] == "pooler_output"
    assert encoder.dim == 16 and encoder.image_size == 32
    frames = synthetic_frames(2, 32, 32, seed=7)  # already the model's size: no resampling
    pixels = AutoImageProcessor.from_pretrained(folder)(list(frames), return_tensors="pt")
    with torch.inference_mode():
        expected = ViTModel.from_pretrained(folder).eval()(**pixels).pooler_output
    np.testing.assert_allclose(encoder.encode(frames), expected.numpy(), atol=1e-5)


def test_other_waveform_family_and_wrong_sense(tmp_path: Path, video_dir: Path) -> None:
    import encoder_factory as ef

    folder = ef.save_tiny_hubert(tmp_path / "hubert")
    audio = AudioEncoder.load(str(folder), device="cpu")
    assert audio.entry == {"backend": "transformers", "kind": "waveform", "model_type": "hubert"}
    assert (audio.hop, audio.receptive_field, audio.dim) == (320, 400, 16)
    assert audio.encode_chunk(np.zeros(16_000, np.float32)).shape == (49, 16)
    with pytest.raises(EncoderLoadError, match="another image model"):
        VideoEncoder.load(str(folder), device="cpu")
    random = AudioEncoder.load(str(folder), weights="random", seed=3, device="cpu")
    assert random.describe() == {"seed": 3, "init": "transformers default init"}
