"""Spectrogram-input audio models of the transformers backend (AST, Whisper's encoder, CLAP): tiny
models saved with their feature extractors, as audio encoders end to end (extract -> train ->
predict -> stream), recorded in the feature spec and refused where they do not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, error_lines, write_event_clip
from test_any_encoder import round_trip

from avarnet.cli import main
from avarnet.encoders import AudioEncoder, EncoderLoadError, check_backbone
from avarnet.store import FeatureStore

RATE = 16_000
PATCH, HOP = 15_360, 7_680  # 0.96 s every 0.48 s at 16 kHz


def save_tiny_ast(folder: Path, seed: int = 11) -> Path:
    """A tiny AST (16 mel bins, 100 frames: 1.015 s) with its feature extractor."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(seed)
    config = ASTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_mel_bins=16,
        max_length=100,
    )
    ASTModel(config).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=16, max_length=100).save_pretrained(folder)
    return folder


def tiny_whisper_config():
    from transformers import WhisperConfig

    return WhisperConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=16,
        max_source_positions=50,  # 100 mel frames: a 1-s chunk
        max_target_positions=8,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )


def save_tiny_whisper(folder: Path, seed: int = 12, extractor: bool = True) -> Path:
    """A tiny Whisper (16 mel bins, 1-s chunks) with its feature extractor (``extractor``)."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(seed)
    WhisperModel(tiny_whisper_config()).save_pretrained(folder)
    if extractor:
        WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(folder)
    return folder


CLAP_AUDIO = {
    "window_size": 4,
    "num_mel_bins": 16,
    "spec_size": 64,
    "hidden_size": 16,
    "projection_dim": 8,
    "depths": [1, 1],
    "num_attention_heads": [1, 2],
    "patch_embeds_hidden_size": 8,
    "num_hidden_layers": 2,
}


def save_tiny_clap(folder: Path, seed: int = 13) -> Path:
    """A tiny CLAP (HTSAT audio side, 16 mel bins, 16 kHz, 1-s inputs) with its feature extractor."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(seed)
    audio = dict(CLAP_AUDIO)
    text = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "vocab_size": 100}  # fmt: skip
    ClapModel(ClapConfig(audio_config=audio, text_config=text, projection_dim=8)).save_pretrained(
        folder
    )
    ClapFeatureExtractor(
        feature_size=16,
        sampling_rate=RATE,
        hop_length=160,
        max_length_s=1,
        fft_window_size=400,
        frequency_max=8000,
    ).save_pretrained(folder)
    return folder


SAVERS = {"ast": save_tiny_ast, "whisper": save_tiny_whisper, "clap": save_tiny_clap}
MODEL_TYPES = {"ast": "audio-spectrogram-transformer", "whisper": "whisper", "clap": "clap"}
DIMS = {"ast": 16, "whisper": 16, "clap": 8}
POOLING = {"ast": "pooler_output", "whisper": "mean_over_audio_frames", "clap": "audio_embeds"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("spectrogram")
    return {name: str(save(root / name)) for name, save in SAVERS.items()}


def sounds(seconds: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A 440-Hz tone and white noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.3, t.size).astype(np.float32)
    return tone, noise


@pytest.mark.parametrize("family", list(SAVERS))
def test_loads_as_an_audio_encoder_of_patches(family, models):
    enc = AudioEncoder.load(models[family], device="cpu")
    assert enc.kind == "spectrogram" and enc.dim == DIMS[family]
    assert (enc.receptive_field, enc.hop, enc.sample_rate) == (PATCH, HOP, RATE)
    entry = enc.entry
    assert entry["backend"] == "transformers" and entry["kind"] == "spectrogram"
    assert entry["model_type"] == MODEL_TYPES[family] and entry["pooling"] == POOLING[family]
    assert entry["patch_seconds"] == 0.96 and entry["hop_seconds"] == 0.48
    assert entry["feature_extractor"]["sampling_rate"] == RATE
    assert len(enc.digest()) == 64
    tone, noise = sounds()
    # one vector per patch, as many as the waveform contract says, placed at the patch centres
    feats = enc.encode_chunk(tone)
    assert feats.shape == (enc.num_frames(tone.size), enc.dim) == (3, DIMS[family])
    np.testing.assert_allclose(enc.frame_times(3), [0.48, 0.96, 1.44])
    # a batch gives what each window gives alone
    both = enc.encode_batch([tone, noise])
    np.testing.assert_allclose(both[0], feats, rtol=1e-4, atol=1e-5)
    # features follow the sound: a tone and noise give different vectors (well above rounding)
    gap = np.abs(both[0] - both[1]).max(axis=1)
    assert np.isfinite(both[1]).all() and (gap > 1e-3).all(), gap


@pytest.mark.parametrize("family", list(SAVERS))
def test_a_patch_gives_the_vector_transformers_gives(family, models):
    """One patch through the model's own AutoFeatureExtractor and model, pooled as documented."""
    from transformers import AutoFeatureExtractor, AutoModel

    folder = models[family]
    patch = sounds()[1][:PATCH]
    inputs = AutoFeatureExtractor.from_pretrained(folder)(
        patch, sampling_rate=RATE, return_tensors="pt"
    )
    model = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        if family == "ast":
            want = model(**inputs).pooler_output
        elif family == "whisper":  # 48 of the 50 encoder frames (320 samples each) hold the patch
            want = model.encoder(**inputs).last_hidden_state[:, :48].mean(1)
        else:  # no fusion: the first channel, the patch's mel spectrogram
            inputs["input_features"] = inputs["input_features"][:, :1]
            want = model.get_audio_features(**inputs).pooler_output
    got = AudioEncoder.load(folder, device="cpu").encode_chunk(patch)
    assert got.shape == (1, DIMS[family])
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("projection", [True, False])
def test_clap_audio_model_alone(projection, tmp_path):
    """A CLAP audio model saved alone: its projected embedding, or its pooler output."""
    from transformers import ClapAudioConfig, ClapAudioModel, ClapAudioModelWithProjection

    folder = save_tiny_clap(tmp_path / "full")
    config = ClapAudioConfig(**CLAP_AUDIO)
    cls = ClapAudioModelWithProjection if projection else ClapAudioModel
    torch.manual_seed(5)
    cls(config).save_pretrained(tmp_path / "audio")
    (tmp_path / "audio" / "preprocessor_config.json").write_text(
        (folder / "preprocessor_config.json").read_text()
    )
    enc = AudioEncoder.load(str(tmp_path / "audio"), device="cpu")
    assert enc.entry["model_type"] == "clap_audio_model"
    assert (enc.entry["pooling"], enc.dim) == (
        ("audio_embeds", 8) if projection else ("pooler_output", 16)
    )
    assert enc.encode_chunk(sounds()[0]).shape == (3, enc.dim)


def test_whisper_pools_the_frames_of_the_audio_not_of_the_padding(models):
    enc = AudioEncoder.load(models["whisper"], device="cpu")
    # a 0.96-s patch of a 1-s chunk (50 encoder frames of 320 samples): the first 48 frames
    assert enc.model.real_frames == 48
    x = enc.extractor([sounds()[0][:PATCH]], sampling_rate=RATE, return_tensors="pt")
    x = x["input_features"]
    with torch.inference_mode():
        hidden = enc.model.model(input_features=x).last_hidden_state[0]
        pooled = enc.model(input_features=x)[0]
    torch.testing.assert_close(pooled, hidden[:48].mean(0))
    assert not torch.allclose(pooled, hidden.mean(0))


def test_random_weights_without_a_feature_extractor_use_the_familys_default(tmp_path, models):
    folder = save_tiny_whisper(tmp_path / "bare", extractor=False)
    a = AudioEncoder.load(str(folder), weights="random", seed=3, device="cpu")
    b = AudioEncoder.load(str(folder), weights="random", seed=3, device="cpu")
    c = AudioEncoder.load(str(folder), weights="random", seed=4, device="cpu")
    # the default extractor of the model's config: 1-s chunks of 16 mel bins, as the saved one
    saved = AudioEncoder.load(models["whisper"], device="cpu")
    assert a.entry == saved.entry
    assert a.describe() == {"seed": 3, "init": "transformers default init"}
    tone = sounds()[0]
    np.testing.assert_array_equal(a.encode_chunk(tone), b.encode_chunk(tone))  # seeded
    assert not np.allclose(a.encode_chunk(tone), c.encode_chunk(tone))


def test_a_feature_extractor_that_does_not_fit_the_model_is_refused(tmp_path):
    from transformers import ASTFeatureExtractor

    folder = save_tiny_ast(tmp_path / "ast")
    ASTFeatureExtractor(num_mel_bins=16, max_length=64).save_pretrained(folder)
    with pytest.raises(
        EncoderLoadError, match="gives 64 frames of 16 mel bins, the model takes 100"
    ):
        AudioEncoder.load(str(folder), device="cpu")


def test_spec_refuses_another_spectrogram_model(models):
    ast = AudioEncoder.load(models["ast"], device="cpu")
    whisper = AudioEncoder.load(models["whisper"], device="cpu")
    with pytest.raises(EncoderLoadError, match="model_type, pooling") as err:
        check_backbone(whisper, "audio", ast.dim, ast.digest(), ast.entry)
    assert "\n" not in str(err.value)
    # same settings, other weights: refused by the digest
    other = AudioEncoder.load(models["ast"], device="cpu")
    next(other.model.parameters()).add_(1.0)
    with pytest.raises(EncoderLoadError, match="weights or config differ"):
        check_backbone(other, "audio", ast.dim, ast.digest(), ast.entry)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> Path:
    return write_event_clip(tmp_path_factory.mktemp("clip") / "event.mp4", 3.0)


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> str:
    import encoder_factory as ef

    return f"onnx:{ef.save_onnx_encoder('frame', tmp_path_factory.mktemp('frame'))}"


@pytest.mark.parametrize("family", ["ast", "whisper"])
def test_round_trip(family, models, vit, tiny_dataset, clip_path, tmp_path):
    """extract -> train -> stream / predict --causal with a spectrogram audio encoder."""
    result = round_trip(vit, models[family], tiny_dataset, clip_path, tmp_path)
    spec = result["spec"]
    assert spec.audio_encoder == AudioEncoder.load(models[family], device="cpu").entry
    assert spec.audio_encoder["kind"] == "spectrogram" and spec.audio_dim == DIMS[family]
    assert len(spec.audio_backbone_sha256) == 64 and spec.sample_rate == RATE
    store = FeatureStore.open(tmp_path / "feats")
    tensors = store.load(store.entries[0])
    assert tensors["audio_mask"].any() and np.abs(tensors["audio"]).sum() > 0
    segments, predicted = result["segments"], result["prediction"]["segments"]
    assert len(segments) == len(predicted) > 0
    for s, p in zip(segments, predicted, strict=True):
        assert (s["start"], s["end"]) == (p["start"], p["end"])
        assert s["anomaly_score"] == pytest.approx(p["anomaly_score"], abs=1e-4)


def test_ast_store_refuses_a_whisper_backbone_and_export_refuses_in_one_line(
    models, vit, tiny_dataset, clip_path, tmp_path, capsys
):
    feats, run = tmp_path / "feats", tmp_path / "run"
    argv = ["-q", "extract", str(tiny_dataset), "--out", str(feats), "--video-backbone", vit,
            "--audio-backbone", models["ast"], "--workers", "0", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert main(cli("train", str(feats), "--out", str(run), "--epochs", "1", "--seq-len", "4")) == 0
    capsys.readouterr()
    # predicting on the store's features with another audio backbone: one line, exit 2
    argv = ["predict", str(clip_path), "--checkpoint", str(run / "best.ckpt"),
            "--out", str(tmp_path / "pred"), "--audio-backbone", models["whisper"]]  # fmt: skip
    code = main(cli(*argv))
    stderr = capsys.readouterr().err
    err = error_lines(stderr, "predict")
    assert code == 2 and len(err) == 1 and "Traceback" not in stderr, stderr
    assert "audio backbone" in err[0] and "not the encoder these features were made with" in err[0]
    # export: the feature extractor runs outside the model, so no ONNX file: one line, exit 2
    code = main(["-q", "export", str(run / "best.ckpt"), "--out", str(tmp_path / "x")])
    stderr = capsys.readouterr().err
    err = error_lines(stderr, "export")
    assert code == 2 and len(err) == 1 and "Traceback" not in stderr, stderr
    assert "spectrogram model (audio-spectrogram-transformer)" in err[0]
    assert "no ONNX export" in err[0] and not (tmp_path / "x").exists()


def test_an_unsupported_audio_model_is_refused_in_one_line(vit, tiny_dataset, tmp_path, capsys):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=8, image_size=16, patch_size=8)).save_pretrained(tmp_path / "v")  # fmt: skip
    argv = ["-q", "extract", str(tiny_dataset), "--out", str(tmp_path / "o"),
            "--video-backbone", vit, "--audio-backbone", str(tmp_path / "v"),
            "--device", "cpu"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    err = error_lines(stderr, "extract")
    assert len(err) == 1 and "Traceback" not in stderr, stderr
    assert "audio_backbone" in err[0] and "'vit' model" in err[0]
    assert "spectrogram model (audio-spectrogram-transformer, whisper, clap" in err[0]
