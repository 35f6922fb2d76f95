"""Process-wide CPU settings and precisions."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from avarnet.runtime import PRECISIONS, autocast, autocast_dtype, configure_cpu


def test_configure_cpu_flushes_denormals_and_sets_threads_once_or_twice():
    threads = torch.get_num_threads()
    try:
        torch.set_flush_denormal(False)
        assert torch.tensor([1e-323], dtype=torch.float64).item() != 0.0
        configure_cpu(1)
        configure_cpu(1)
        assert torch.get_num_threads() == 1
        assert torch.tensor([1e-323], dtype=torch.float64).item() == 0.0  # flushed to zero
        torch.set_num_threads(2)
        configure_cpu()  # 0 keeps the current thread count
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def test_autocast_dtype_per_precision_and_device():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("int8", cpu) is None
    assert autocast_dtype("bf16", gpu) is torch.bfloat16
    assert autocast_dtype("fp16", gpu) is torch.float16
    for precision, device, words in (("fp16", cpu, "needs a GPU"), ("int8", gpu, "CPU only"),
                                     ("fp64", cpu, "one of")):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            autocast_dtype(precision, device)
    assert set(PRECISIONS) == {"fp32", "bf16", "fp16", "int8"}


def test_one_rule_per_precision_offers_bf16_only_where_native(monkeypatch):
    """Every path asks runtime which precisions a device runs: a CPU without bf16 instructions is
    never offered bf16 and refuses it in one line naming what it runs; dtypes come from one map."""
    from avarnet import runtime
    from avarnet.config import ENCODER_PRECISIONS
    from avarnet.errors import InvalidArgumentError

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [runtime.precision_dtype(p) for p in PRECISIONS] == [
        None, torch.bfloat16, torch.float16, None,
    ]  # fmt: skip
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.supported_precisions(cpu) == ["fp32", "int8"]
    assert runtime.supported_precisions(cpu, ENCODER_PRECISIONS) == ["fp32"]
    for check in (runtime.check_precision, runtime.autocast_dtype):
        with pytest.raises(InvalidArgumentError, match="bf16 is not native on this CPU; .* fp32"):
            check("bf16", cpu)
    with pytest.raises(
        InvalidArgumentError, match="^precision fp16 needs a GPU; on this CPU use fp32$"
    ):
        runtime.check_precision("fp16", cpu, ENCODER_PRECISIONS)
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    a = torch.ones(4, 4)
    with runtime.precision_autocast("auto", cpu):
        assert (a @ a).dtype == torch.float32
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.supported_precisions(cpu) == ["fp32", "bf16", "int8"]
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    with runtime.precision_autocast("auto", cpu):
        assert (a @ a).dtype == torch.bfloat16
    assert "fp16" in runtime.supported_precisions(
        gpu
    ) and "int8" not in runtime.supported_precisions(gpu)


def test_autocast_runs_in_the_reduced_precision_or_not_at_all():
    a = torch.ones(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert (a @ a).dtype == torch.float32


CONV_OVER_NEW_LENGTHS = """
import torch
from avarnet.runtime import configure_cpu
configure_cpu(varying_shapes=True)  # without it, the default cache grows by ~160-370 MiB
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
conv = torch.nn.Sequential(torch.nn.Conv1d(1, 512, 10, 5), torch.nn.Conv1d(512, 512, 3, 2)).eval()
with torch.inference_mode():
    conv(torch.randn(1, 1, 16000))
    before = rss()
    for i in range(20):  # like a corpus: every video's last audio chunk has a length of its own
        conv(torch.randn(1, 1, 16000 + 37 * i))
print(rss() - before)
"""


def test_extraction_memory_does_not_grow_with_new_input_lengths():
    """oneDNN caches kernels and scratch buffers per input shape: a process that sees a new audio
    length for every video grew by MiBs per video until ``varying_shapes`` turned the cache off."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}

    out = subprocess.run([sys.executable, "-c", CONV_OVER_NEW_LENGTHS], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert float(out.stdout.split()[-1]) < 60  # MiB over these 20 lengths


def test_varying_shapes_bound_onednns_kernel_cache_per_precision(monkeypatch):
    """fp32 turns the cache off, bf16 keeps a bounded one, a value the user set wins."""
    from avarnet.runtime import BF16_PRIMITIVE_CACHE, ONEDNN_CACHE_ENV, configure_cpu

    for precision, expected in (("fp32", "0"), ("bf16", BF16_PRIMITIVE_CACHE)):
        monkeypatch.delenv(ONEDNN_CACHE_ENV, raising=False)
        configure_cpu(varying_shapes=True, precision=precision)
        assert os.environ[ONEDNN_CACHE_ENV] == expected
    monkeypatch.setenv(ONEDNN_CACHE_ENV, "7")
    configure_cpu(varying_shapes=True, precision="bf16")
    assert os.environ[ONEDNN_CACHE_ENV] == "7"
    monkeypatch.delenv(ONEDNN_CACHE_ENV)
    configure_cpu(varying_shapes=False)
    assert ONEDNN_CACHE_ENV not in os.environ


def test_weights_cast_for_autocast_give_the_same_features(tiny_backbones):
    """Linear and convolution weights stored in bf16 once: under autocast the features are those of
    fp32 weights cast on every call, bit for bit; norms (and Wav2Vec2's weight-normalised
    positional convolution) keep fp32."""
    import numpy as np

    from avarnet.encoders import AudioEncoder, VideoEncoder
    from avarnet.runtime import cast_for_autocast

    vdir, adir = tiny_backbones
    video, audio = (
        VideoEncoder.load(str(vdir), device="cpu"),
        AudioEncoder.load(str(adir), device="cpu"),
    )
    pixels = video.preprocess(np.random.default_rng(0).integers(0, 255, (2, 96, 128, 3), np.uint8))
    samples = np.random.default_rng(1).standard_normal((1, 24_000)).astype(np.float32)
    cpu = torch.device("cpu")
    with autocast(cpu, torch.bfloat16):
        before = video.forward(pixels), audio.forward(samples)
    cast_for_autocast(video.model, torch.bfloat16)
    cast_for_autocast(audio.model, torch.bfloat16)
    linear = [m.weight.dtype for m in audio.model.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m.weight.dtype for m in audio.model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert set(linear) == {torch.bfloat16} and set(norms) == {torch.float32}
    assert audio.model.encoder.pos_conv_embed.conv.weight.dtype == torch.float32
    assert all(
        m.weight.dtype == torch.bfloat16
        for m in video.model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    )
    with autocast(cpu, torch.bfloat16):
        after = video.forward(pixels), audio.forward(samples)
    for b, a in zip(before, after, strict=True):
        assert b.dtype == a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    cast_for_autocast(audio.model, None)  # fp32: untouched
    assert audio.model.encoder.pos_conv_embed.conv.weight.dtype == torch.float32
