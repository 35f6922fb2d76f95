"""Devices and precisions (which precision a device runs, its autocast), and process-wide CPU
settings for heavy inference (denormals, threads, allocator)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import warnings

import torch

from .config import PRECISIONS
from .errors import InvalidArgumentError

logger = logging.getLogger("avarnet")

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the rest: none (fp32)

# glibc mallopt() parameters (malloc.h).
M_TRIM_THRESHOLD = -1  # free memory above this at the heap top is returned to the OS
M_MMAP_THRESHOLD = -3  # allocations at least this large get their own mmap()
TRIM_THRESHOLD_BYTES = 1 << 30  # 1 GiB: in practice never hand freed heap memory back
MMAP_THRESHOLD_BYTES = 32 << 20  # 32 MiB: glibc's maximum on 64-bit (4 MiB * sizeof(long))
# oneDNN keeps a compiled kernel and its scratch buffers for every input shape it has seen (up to
# 1,024 of them, MiBs each); read once, when the process first runs a convolution.
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
BF16_PRIMITIVE_CACHE = "256"  # oneDNN kernels kept when shapes vary in bf16 (the default is 1,024)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; ``"cuda"`` without CUDA -> ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} requested but CUDA is not available")
    return resolved


def configure_cpu(
    num_threads: int = 0, varying_shapes: bool = False, precision: str = "fp32"
) -> None:
    """Prepare this process for heavy CPU inference; safe to call more than once.

    Flushes denormal floats to zero, sets the number of torch threads when
    ``num_threads > 0``, and on glibc keeps freed memory inside the process
    (raised trim and mmap thresholds) so activation buffers are reused between
    batches instead of being unmapped and page-faulted in again.

    ``varying_shapes``: the process will see ever new input shapes (a corpus of videos, each
    ending in an audio chunk of its own length). oneDNN's primitive cache would then grow by
    MiBs per shape (up to 1,024 kernels), so in fp32 it is turned off unless
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is set: fp32 extraction measured no slower without it
    (docs/scale.md). In bf16, re-creating the kernels on every call halved the speed, so the
    cache is kept but bounded (BF16_PRIMITIVE_CACHE kernels: 100 videos of their own lengths
    peaked at 1.5 GiB instead of 2.5, at 92 % of the unbounded speed). Takes effect only before
    the process runs its first convolution. Leave it off where shapes repeat (a live stream's
    fixed windows): there the cache saves each call's set-up.
    """
    if varying_shapes:
        os.environ.setdefault(
            ONEDNN_CACHE_ENV, "0" if precision == "fp32" else BF16_PRIMITIVE_CACHE
        )
    torch.set_flush_denormal(True)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    _keep_freed_memory()


def _glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc (whose malloc the tunings below are for)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError as err:
        logger.debug("glibc unavailable: %s", err)
        return None


def _keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds; False where that is not possible."""
    libc = _glibc()
    if libc is None:
        return False
    try:
        trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    except AttributeError as err:
        logger.debug("mallopt unavailable: %s", err)
        return False
    return trim_ok and mmap_ok


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 / AMX), i.e. bf16 can be faster."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a GPU with bf16, a CPU with bf16
    instructions. Elsewhere bf16 is emulated and slower than fp32, so it is never offered."""
    if device.type == "cuda":  # a GPU this process cannot see is taken to have it
        return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def precision_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a precision name: bf16 -> bfloat16, fp16 -> float16, None for fp32
    and int8 (fp32 weights and activations; int8 quantises layers instead of autocasting)."""
    if name not in PRECISIONS:
        raise InvalidArgumentError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}"
        )
    return PRECISION_DTYPES.get(name)


def supported_precisions(device: torch.device, choices: tuple[str, ...] = PRECISIONS) -> list[str]:
    """The precisions among ``choices`` that ``device`` runs: fp32 everywhere; bf16 where it is
    native (:func:`bf16_native`); fp16 on a GPU; int8 on the CPU."""
    runs = {
        "fp32": True,
        "bf16": bf16_native(device),
        "fp16": device.type == "cuda",
        "int8": device.type == "cpu",
    }
    return [p for p in choices if runs.get(p, False)]


def check_precision(
    name: str, device: torch.device, choices: tuple[str, ...] = PRECISIONS
) -> torch.dtype | None:
    """:func:`precision_dtype` of a precision ``device`` runs; a one-line
    :class:`InvalidArgumentError` (a ValueError) for a name outside ``choices`` or a precision the
    device lacks, naming what it does run."""
    if name not in choices:
        raise InvalidArgumentError(f"precision must be one of {', '.join(choices)}, got {name!r}")
    supported = supported_precisions(device, choices)
    if name not in supported:
        where = "this GPU" if device.type == "cuda" else f"this {device.type.upper()}"
        why = {
            "fp16": "needs a GPU",
            "int8": "runs on the CPU only",
            "bf16": f"is not native on {where}",
        }[name]
        raise InvalidArgumentError(
            f"precision {name} {why}; on {where} use {' or '.join(supported)}"
        )
    return precision_dtype(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype the live encoders run at ``precision`` on ``device`` (None: fp32 or
    int8); refuses a precision the device lacks (:func:`check_precision` over all precisions)."""
    return check_precision(precision, device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 where ``device`` computes it natively, else fp32; others unchanged."""
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def precision_autocast(precision: str, device: torch.device, choices: tuple[str, ...] = PRECISIONS):
    """The autocast context of ``precision`` (``"auto"`` allowed) on ``device``: a no-op for fp32
    and int8, refused where the device lacks it (:func:`check_precision`)."""
    return autocast(device, check_precision(resolve_precision(precision, device), device, choices))


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for a reduced precision, or a no-op for fp32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cast_for_autocast(model: torch.nn.Module, dtype: torch.dtype | None) -> None:
    """Store the weights of ``model``'s linear and convolution layers in ``dtype`` once, in place,
    where autocast would cast them again on every call; normalisation layers (which autocast runs
    in fp32) and weight-normalised layers keep their weights. Under autocast to ``dtype`` the
    outputs are the same, bit for bit. Only for a model that from then on runs under autocast to
    ``dtype``; ``None`` (fp32) leaves it as it is."""
    if dtype is None:
        return
    from torch.nn.utils import parametrize

    cast = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d) and not (
            parametrize.is_parametrized(module)
        ):
            module.to(dtype)
            cast.update(id(t) for t in module.parameters())
    # The rest gets memory of its own: weights loaded from a safetensors file are views of one
    # mapping of the whole file, which would otherwise stay mapped, fp32 copies and all.
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in cast:
            t.data = t.data.clone()
    _release_freed_memory()  # configure_cpu has glibc keep what is freed


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS once (glibc's malloc_trim); no-op elsewhere."""
    libc = _glibc()
    if libc is None:
        return
    try:
        libc.malloc_trim(0)
    except AttributeError as err:
        logger.debug("malloc_trim unavailable: %s", err)


def quantize_audio_encoder(encoder) -> None:
    """Replace an AudioEncoder's Wav2Vec2 linear layers by dynamically quantised int8 ones, in
    place (CPU only)."""
    if encoder.device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on the CPU only")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        encoder.model = torch.ao.quantization.quantize_dynamic(
            encoder.model, {torch.nn.Linear}, dtype=torch.qint8
        )
