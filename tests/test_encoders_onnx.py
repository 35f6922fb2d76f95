"""ONNX encoders of every input kind, their manifests, and the log-mel front end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import encoder_factory as ef
import numpy as np
import pytest
import torch

from avarnet.cli import main
from avarnet.encoders import (
    AudioEncoder,
    EncoderLoadError,
    LogMelFrontEnd,
    ManifestError,
    OnnxClipEncoder,
    OnnxFrameEncoder,
    OnnxLogMelEncoder,
    OnnxWaveformEncoder,
    VideoEncoder,
)
from avarnet.encoders.logmel import hertz_to_mel


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {kind: ef.save_onnx_encoder(kind, root) for kind in ef.DIMS}


def frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x.astype(np.float32)})[0]


def test_frame_encoder_preprocesses_as_its_manifest_says(onnx_files):
    enc = VideoEncoder.load(f"onnx:{onnx_files['frame']}")
    assert isinstance(enc, OnnxFrameEncoder) and enc.kind == "frame" and enc.dim == ef.DIMS["frame"]
    assert enc.digest() == hashlib.sha256(onnx_files["frame"].read_bytes()).hexdigest()
    assert enc.entry["backend"] == "onnx" and enc.entry["input"]["mean"] == [0.5, 0.4, 0.3]
    x = frames(3)
    # by hand: shortest edge 48 -> 36, centre crop 32, [0, 1], (x - mean) / std per channel
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(36, 48), mode="bilinear", antialias=True)
    t = t[:, :, 2:34, 8:40] / 255.0
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    t = (t - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    np.testing.assert_allclose(enc.encode(x), reference(onnx_files["frame"], t.numpy()), atol=1e-5)


def test_clip_encoder_gives_each_frame_its_clips_vector(onnx_files):
    enc = VideoEncoder.load(f"onnx:{onnx_files['clip']}")
    assert isinstance(enc, OnnxClipEncoder) and enc.clip_frames == ef.CLIP_FRAMES
    assert enc.clip_seconds == ef.CLIP_FRAMES / ef.CLIP_FPS
    x = frames(2 * ef.CLIP_FRAMES, 32, 32)
    out = enc.encode(x)
    assert out.shape == (2 * ef.CLIP_FRAMES, ef.DIMS["clip"])
    clips = (x.reshape(2, ef.CLIP_FRAMES, 32, 32, 3).transpose(0, 4, 1, 2, 3) / 255.0).astype(
        np.float32
    )  # (B, 3, T, S, S)
    expected = np.repeat(reference(onnx_files["clip"], clips), ef.CLIP_FRAMES, axis=0)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match="whole clips"):
        enc.encode(x[:3])


def test_waveform_encoder_frames_and_times(onnx_files):
    enc = AudioEncoder.load(f"onnx:{onnx_files['waveform']}")
    assert isinstance(enc, OnnxWaveformEncoder)
    assert (enc.hop, enc.receptive_field, enc.sample_rate) == (ef.WAVE_HOP, ef.WAVE_FIELD, 16_000)
    samples = np.random.default_rng(1).normal(size=8000).astype(np.float32)
    feats = enc.encode_chunk(samples)
    assert feats.shape == ((8000 - ef.WAVE_FIELD) // ef.WAVE_HOP + 1, ef.DIMS["waveform"])
    np.testing.assert_allclose(feats, enc.encode_chunk(3 * samples), atol=1e-5)  # normalised
    assert enc.encode_chunk(samples[:100]).shape == (1, ef.DIMS["waveform"])  # padded


def test_waveform_geometry_the_model_contradicts_names_the_fields(onnx_files, tmp_path):
    path = tmp_path / "w.onnx"
    path.write_bytes(onnx_files["waveform"].read_bytes())
    manifest = ef.manifest("waveform")
    manifest["input"]["hop"] = 160
    path.with_suffix(".json").write_text(json.dumps(manifest))
    enc = AudioEncoder.load(f"onnx:{path}")
    with pytest.raises(ManifestError, match=r"input\.hop / input\.receptive_field"):
        enc.encode_chunk(np.zeros(8000, np.float32))


def test_logmel_front_end_is_vggish_geometry():
    front = LogMelFrontEnd()
    assert (front.window_samples, front.hop_samples, front.fft_length) == (400, 160, 512)
    assert (front.patch_hop_samples, front.patch_receptive_field) == (15_360, 15_600)
    for n in (15_599, 15_600, 30_959, 30_960, 31_000, 160_000):
        frames = 1 + (n - 400) // 160  # VGGish: frames, then patches of 96 frames every 96
        assert (
            front.num_patches(n) == max(0, 1 + (frames - 96) // 96) == len(front.patches(n * [0.0]))
        )
    # a 1 kHz tone: the loudest band is the one centred nearest 1 kHz on the HTK mel scale
    t = np.arange(16_000) / 16_000
    spec = front.log_mel(0.5 * np.sin(2 * np.pi * 1000 * t))
    assert spec.shape == (98, 64)
    edges = np.linspace(hertz_to_mel(125.0), hertz_to_mel(7500.0), 66)
    assert int(spec.mean(0).argmax()) == int(np.abs(edges[1:-1] - hertz_to_mel(1000.0)).argmin())
    assert np.isclose(spec.min(), np.log(0.01), atol=1.0)  # silence floor: log(offset)


def test_logmel_encoder_one_vector_per_patch(onnx_files):
    enc = AudioEncoder.load(f"onnx:{onnx_files['logmel']}")
    assert isinstance(enc, OnnxLogMelEncoder) and enc.layout == "N1TF"  # read from the graph
    samples = np.random.default_rng(2).normal(size=40_000).astype(np.float32)
    feats = enc.encode_chunk(samples)
    assert feats.shape == (2, ef.DIMS["logmel"])
    patches = LogMelFrontEnd().patches(samples)[:, None]
    np.testing.assert_allclose(feats, reference(onnx_files["logmel"], patches), atol=1e-5)
    np.testing.assert_allclose(enc.frame_times(2), [15_600 / 2 / 16_000, (15_360 + 7_800) / 16_000])


def test_onnx_encoders_carry_their_own_weights(onnx_files):
    with pytest.raises(EncoderLoadError, match="carries its own weights"):
        VideoEncoder.load(f"onnx:{onnx_files['frame']}", weights="random")


# ------------------------------------------------------------------ faults: one line, exit 2


def _edit(change):
    def fault(manifest: dict) -> dict:
        change(manifest)
        return manifest

    return fault


MANIFEST_FAULTS = {
    "kind": _edit(lambda m: m.update(kind="image")),
    "licence": _edit(lambda m: m.pop("licence")),
    "source": _edit(lambda m: m.update(source=" ")),
    "input.image_size": _edit(lambda m: m["input"].pop("image_size")),
    "input.resize_shortest_edge": _edit(lambda m: m["input"].update(resize_shortest_edge="big")),
    "input.imagesize": _edit(lambda m: m["input"].update(imagesize=32)),
    "input.channel_order": _edit(lambda m: m["input"].update(channel_order="rbg")),
    "input.std": _edit(lambda m: m["input"].pop("std")),
    "input.mean": _edit(lambda m: m["input"].update(mean=[0.5, 0.5])),
    "input.name": _edit(lambda m: m["input"].update(name="pixels")),
    "output.dim": _edit(lambda m: m["output"].update(dim=7)),
    "output.name": _edit(lambda m: m["output"].update(name="features")),
    "output": _edit(lambda m: m.pop("output")),
    "format": _edit(lambda m: m.update(format="avarnet-encoder-9")),
    "audio kind": _edit(lambda m: m.update(kind="waveform")),
}


def _extract(data: Path, out: Path, video: str) -> list[str]:
    argv = ["extract", str(data), "--out", str(out / "f"), "--device", "cpu"]
    return argv + ["--video-backbone", video]


@pytest.mark.parametrize("fault", list(MANIFEST_FAULTS))
def test_bad_manifest_is_one_line_naming_the_field(
    fault, onnx_files, tiny_dataset, tmp_path, capsys
):
    path = tmp_path / "enc.onnx"
    path.write_bytes(onnx_files["frame"].read_bytes())
    manifest = MANIFEST_FAULTS[fault](ef.manifest("frame"))
    path.with_suffix(".json").write_text(json.dumps(manifest))
    assert main(_extract(tiny_dataset, tmp_path, f"onnx:{path}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert (fault.split()[-1] if fault != "audio kind" else "kind") in err[0]


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("absent", "no such ONNX file"),
        ("no manifest", "no manifest beside the ONNX file"),
        ("not json", "unreadable manifest"),
        ("not onnx", "not a loadable ONNX model"),
        ("unknown folder", "no such folder"),
        ("audio model as video", "expected 'mobilevit' or another image model"),
    ],
)
def test_unknown_encoder_is_one_line(problem, expected, onnx_files, tiny_dataset, tmp_path, capsys):
    path = tmp_path / "enc.onnx"
    source = f"onnx:{path}"
    if problem in ("no manifest", "not json"):
        path.write_bytes(onnx_files["frame"].read_bytes())
        if problem == "not json":
            path.with_suffix(".json").write_text("{kind: frame")
    elif problem == "not onnx":
        path.write_bytes(b"not a model")
        path.with_suffix(".json").write_text(json.dumps(ef.manifest("frame")))
    elif problem == "unknown folder":
        source = str(tmp_path / "no-such-model")
    elif problem == "audio model as video":
        source = str(ef.save_tiny_hubert(tmp_path / "hubert"))
    capsys.readouterr()
    assert main(_extract(tiny_dataset, tmp_path, source)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


# ------------------------------------------------------------------ the XD-Violence preset


def xdv_clip(path: Path, n_frames: int) -> Path:
    """A 24-fps clip (64 x 48) whose frames have a horizontal and a vertical gradient (so the five
    crops differ) and a level that changes per frame, with a 440 Hz tone at 16 kHz."""
    from avarnet.synth import write_av

    yy, xx = np.mgrid[:48, :64]
    frames = []
    for i in range(n_frames):
        f = np.stack([xx * 3, yy * 4, np.full_like(xx, (i * 9) % 200)], axis=-1)
        frames.append(f.astype(np.uint8))
    t = np.arange(round(n_frames / 24 * 16_000)) / 16_000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + t)).astype(np.float32)
    write_av(path, frames, 24.0, audio, 16_000)
    return path


def test_xdv_preset_gives_the_official_layout(tmp_path):
    from avarnet import media
    from avarnet.apps import xdv
    from avarnet.encoders.presets import XdvExtractor, xdv_gt_frames, xdv_snippets

    clip_path, logmel_path = ef.save_xdv_encoders(tmp_path / "encoders")
    video = VideoEncoder.load(f"onnx:{clip_path}")
    audio = AudioEncoder.load(f"onnx:{logmel_path}")
    extractor = XdvExtractor(video, audio)
    n_frames = 101  # 4.21 s at 24 fps: floor(100 / 16) = 6 snippets, 96 frames of truth
    path = xdv_clip(tmp_path / "v.mp4", n_frames)
    feats = extractor(path)
    assert feats.frames == n_frames and feats.snippets == xdv_snippets(n_frames) == 6
    assert feats.gt_frames == xdv_gt_frames(n_frames) == xdv.official_frame_count(n_frames) == 96
    assert feats.video_crops.shape == (5, 6, ef.DIMS["clip"])
    assert feats.audio.shape == (6, ef.DIMS["logmel"]) and np.abs(feats.audio).sum(1).min() > 0
    # the snippet grid: frames 16t .. 16t + 15 at 24 fps
    np.testing.assert_allclose(extractor.frame_times(2), (np.arange(32) + 0.5) / 24)
    # crop __0 is the centre crop, as the encoder alone takes it; the five crops all differ
    info = media.probe(path)
    frames = np.stack(
        list(media.read_frames(path, extractor.frame_times(6).tolist(), 40, info=info))
    )
    centre = video.encode(frames)[:: xdv.FRAMES_PER_SNIPPET]
    np.testing.assert_allclose(feats.video_crops[0], centre, atol=1e-6)
    for i in range(5):
        for j in range(i):
            assert not np.allclose(feats.video_crops[i], feats.video_crops[j])
    # audio of snippet t: the 0.96-s patch ending at the snippet's end (zero-padded at the start)
    samples = media.load_audio(path, 16_000, info=info)
    end = round(3 * 16 / 24 * 16_000)
    window = samples[end - audio.receptive_field : end]
    np.testing.assert_allclose(feats.audio[2], audio.encode_chunk(window)[0], atol=1e-5)
    # the files import as official XD-Violence features: five crops and the audio, aligned
    name = "Own.Video__#1_label_B1-0-0"
    written = feats.write(tmp_path / "feats", name)
    (tmp_path / "rgb.list").write_text("\n".join(str(p) for p in written[:5]) + "\n")
    (tmp_path / "audio.list").write_text(f"{written[5]}\n")
    store_dir = tmp_path / "store"
    xdv.import_official(store_dir, tmp_path / "rgb.list", tmp_path / "audio.list", progress=False)
    from avarnet.store import FeatureStore

    store = FeatureStore.open(store_dir)
    (entry,) = store.entries
    tensors = store.load(entry)
    assert entry.T == 6 and tensors["video_crops"].shape == (5, 6, ef.DIMS["clip"])
    np.testing.assert_array_equal(tensors["video_crops"], feats.video_crops)


def test_xdv_preset_takes_a_16_frame_clip_encoder(onnx_files):
    from avarnet.encoders.presets import XdvExtractor

    with pytest.raises(EncoderLoadError, match="clip encoder of 16 frames"):
        XdvExtractor(VideoEncoder.load(f"onnx:{onnx_files['clip']}"), None)  # 4 frames


def test_xdv_extract_command_writes_importable_files(tmp_path, capsys):
    from avarnet.apps import xdv

    clip_path, logmel_path = ef.save_xdv_encoders(tmp_path / "encoders")
    data = tmp_path / "videos"
    (data / "test").mkdir(parents=True)
    xdv_clip(data / "test" / "Clip.A__#0_label_A.mp4", 40)  # 1.67 s: floor(39 / 16) = 2 snippets
    (data / "test" / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "feats"
    argv = ["xdv", "extract", str(data), "--out", str(out)]
    argv += ["--video-backbone", f"onnx:{clip_path}", "--audio-backbone", f"onnx:{logmel_path}"]
    assert main(argv) == 1  # one video failed, one line, the other was written
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed")]
    assert len(err) == 1 and "broken.mp4" in err[0]
    rgb = (out / "rgb_test.list").read_text().split()
    assert [Path(p).name for p in rgb] == [f"Clip.A__#0_label_A__{k}.npy" for k in range(5)]
    assert np.load(rgb[0]).shape == (2, ef.DIMS["clip"])
    xdv.import_official(
        tmp_path / "store",
        out / "rgb_test.list",
        out / "audio_test.list",
        progress=False,
    )
