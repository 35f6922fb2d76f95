"""Extraction on a Ray cluster: a Ray Data pipeline that writes the same store as the local engines.

Videos are rows. Decoding runs as CPU tasks (:func:`decode_row`); MobileViT and Wav2Vec2 each run
in an actor pool (:class:`VideoEncoderActor`, :class:`AudioEncoderActor`: one GPU share per actor
where the cluster has GPUs, CPUs otherwise), batching frames and 10-s audio chunks across the videos
of a batch; :func:`write_rows` tasks commit each video with the store's own atomic, locked code to
a store every node sees (a shared filesystem). Ray restarts a killed actor and retries a killed
task; a video written twice by a retried task is indexed once (the store refuses the second commit).

    avarnet extract DATA --out FEATS --engine ray [--address auto|ray://HOST:10001]

Ray is an optional dependency: ``pip install 'avarnet[ray]'``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import DEVICES, ENCODER_PRECISIONS, FeatureSpec
from ..decode import DecodePlan, decode_video, failure_reason
from ..errors import InvalidArgumentError
from ..progress import progress_bar, write_line
from ..redact import redact
from ..store import Entry, FeatureStore, StoreError, video_id

# Decoding and writing tasks need only the imports above, so the Ray workers that run them start
# in a second and stay small; torch, the encoders and the local engine load in the encoder actors
# and the driver.
if TYPE_CHECKING:
    from ..extract import ExtractOptions, ExtractResult

log = logging.getLogger("avarnet")

RAY_EXTRA = "pip install 'avarnet[ray]'"
# A decoding task's worker process is replaced after this many videos (bounding what a decoder may
# leak on odd files). Set on decoding only, it also keeps decoding an operator of its own: Ray Data
# fuses a task stage into the actor stage after it when their remote parameters are equal, and
# decoding would then run inside the encoder actors, one video at a time.
DECODE_CALLS_PER_WORKER = 64
CONNECT_TIMEOUT_S = 10.0  # to reach a cluster's address


@dataclass(frozen=True)
class RayOptions:
    """How the pipeline asks the cluster for resources (None: derived from the cluster's size)."""

    videos_per_batch: int = (
        4  # rows per encoder call: frames and audio chunks are batched across them
    )
    max_actors: int | None = None  # per encoder pool (default: GPUs, or CPUs // 4)
    actor_cpus: float | None = None  # CPU share per encoder actor on CPU clusters
    decode_cpus: float | None = None  # CPU share per decoding task
    write_cpus: float = 0.25


def require_ray():
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InvalidArgumentError(
            f"the Ray engine needs Ray Data, which is not installed: {RAY_EXTRA}"
        ) from None
    return ray


# -- pipeline stages (run on the cluster) ----------------------------------------------------------


def decode_row(row: dict[str, Any], plan: DecodePlan) -> dict[str, Any]:
    """Decode one video (a CPU task): frames (T*k, H, W, 3) and all audio samples; ``error`` if unusable."""
    out = {k: row[k] for k in ("path", "rel_path", "vid", "label", "split")}
    try:
        d = decode_video(row["path"], plan)
    except Exception as err:  # one bad file becomes a failure row, the job goes on
        return out | _empty_row(failure_reason(err))
    info = d["info"]
    lengths = np.array([len(c) for c in d["chunks"]], dtype=np.int64)
    samples = (
        np.concatenate(d["chunks"]).astype(np.float32) if d["chunks"] else np.zeros(0, np.float32)
    )
    return out | {
        "error": "",
        "duration": float(info.duration),
        "fps": float(info.fps),
        "has_audio": bool(info.has_audio),
        "T": int(d["T"]),
        "frames": d["frames"],
        "samples": samples,
        "chunk_lengths": lengths,
    }


def _empty_row(reason: str) -> dict[str, Any]:
    return {
        "error": reason,
        "duration": 0.0,
        "fps": 0.0,
        "has_audio": False,
        "T": 0,
        "frames": np.zeros((0, 1, 1, 3), np.uint8),
        "samples": np.zeros(0, np.float32),
        "chunk_lengths": np.zeros(0, np.int64),
    }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array holding arrays of different shapes (one per row)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def _encoders(spec: dict, store_root: str, device: str, which: str) -> Any:
    from ..encoders import AudioEncoder, VideoEncoder
    from ..runtime import configure_cpu

    spec_ = FeatureSpec.from_dict(spec)
    configure_cpu(varying_shapes=True, precision=spec_.precision)
    if which == "video":
        enc = VideoEncoder.load(
            spec_.video_backbone, weights=spec_.weights, seed=spec_.seed, device=device
        )
        if spec_.weights == "random":
            state = FeatureStore.open(store_root).load_encoder_state()
            if state is None:
                raise StoreError(f"{store_root} lacks its encoder state")
            enc.load_bn_state(state)
        return enc
    return AudioEncoder.load(
        spec_.audio_backbone, weights=spec_.weights, seed=spec_.seed, device=device
    )


class _EncoderActor:
    """One backbone (``kind``) of a store's spec, loaded once per actor, in the spec's precision."""

    kind = ""

    def __init__(self, spec: dict, store_root: str, device: str):
        from ..runtime import cast_for_autocast, precision_dtype

        self.spec = FeatureSpec.from_dict(spec)
        self.enc = _encoders(spec, store_root, device, self.kind)
        self.dtype = precision_dtype(self.spec.precision)
        if self.enc.model is not None:  # an ONNX encoder holds no torch model
            cast_for_autocast(self.enc.model, self.dtype)


class VideoEncoderActor(_EncoderActor):
    """The video encoder over the frames of a batch of videos: adds ``video`` (T, Dv), drops
    ``frames``.

    Frames are preprocessed per video and encoded as the local engine encodes them, whatever the
    encoder's kind: passes of whole inputs of the encoder (``clip_frames`` frames: one for a frame
    encoder, a clip for a clip encoder, whose every frame gets its clip's vector), each video's
    T * k frames being T whole clips, then the mean over each segment's k frames.
    """

    kind = "video"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from ..extract import encode_pixels
        from ..features import frame_batch

        n, k = len(batch["vid"]), self.spec.frames_per_segment
        if k % self.enc.clip_frames:
            raise ValueError(
                f"{k} frames per segment are not whole clips of {self.enc.clip_frames} frames"
            )
        pixels, owners = [], []
        for i in range(n):
            if batch["error"][i]:
                continue
            pixels.append(self.enc.preprocess(np.array(batch["frames"][i])))  # a writable copy
            owners.append(i)
        feats = np.zeros((0, self.enc.dim), np.float32)
        if pixels:
            allpx = torch.cat(pixels)
            size = frame_batch(self.enc.device) * self.enc.clip_frames  # whole clips a pass
            parts = [
                encode_pixels(self.enc, allpx[s : s + size], self.dtype)
                for s in range(0, len(allpx), size)
            ]
            feats = np.concatenate(parts)
        video = [np.zeros((0, self.enc.dim), np.float32) for _ in range(n)]
        row = 0
        for i, px in zip(owners, pixels, strict=True):
            T = int(batch["T"][i])
            video[i] = feats[row : row + len(px)].reshape(T, k, -1).mean(axis=1).astype(np.float32)
            row += len(px)
        out = {key: value for key, value in batch.items() if key != "frames"}
        out["video"] = _ragged(video)
        return out


class AudioEncoderActor(_EncoderActor):
    """The audio encoder over the audio chunks of a batch of videos: adds ``audio`` and
    ``audio_mask``. Any kind (waveform, logmel, spectrogram) gives vectors placed in time by its
    hop and receptive field, pooled per segment as the local engine pools them."""

    kind = "audio"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..extract import audio_input, encode_audio_batch, pool_audio_frames
        from ..features import audio_batch

        n = len(batch["vid"])
        Da, seg, sr = self.enc.dim, self.spec.segment_seconds, self.spec.sample_rate
        sums = [np.zeros((max(int(batch["T"][i]), 0), Da), np.float64) for i in range(n)]
        counts = [np.zeros(max(int(batch["T"][i]), 0), np.int64) for i in range(n)]
        groups: dict[int, list[tuple[int, float, np.ndarray]]] = {}
        for i in range(n):
            if batch["error"][i]:
                continue
            samples, start, offset = np.asarray(batch["samples"][i]), 0, 0.0
            for length in np.asarray(batch["chunk_lengths"][i]).tolist():
                x = audio_input(self.enc, samples[start : start + length])
                groups.setdefault(len(x), []).append((i, offset, x))
                start += length
                offset += length / sr
        for group in groups.values():
            size = audio_batch(self.enc.device)
            for s in range(0, len(group), size):
                part = group[s : s + size]
                feats = encode_audio_batch(self.enc, [g[2] for g in part], self.dtype)
                for (i, offset, _), f in zip(part, feats, strict=True):
                    T = int(batch["T"][i])
                    pool_audio_frames(
                        f, self.enc.frame_times(len(f), offset), T, seg, sums[i], counts[i]
                    )
        audio, masks = [], []
        for i in range(n):
            mask = counts[i] > 0
            a = np.zeros((len(counts[i]), Da), np.float32)
            a[mask] = (sums[i][mask] / counts[i][mask, None]).astype(np.float32)
            audio.append(a)
            masks.append(mask)
        out = {
            key: value for key, value in batch.items() if key not in ("samples", "chunk_lengths")
        }
        out["audio"], out["audio_mask"] = _ragged(audio), _ragged(masks)
        return out


_STORES: dict[str, FeatureStore] = {}  # one open store (and writer registration) per process


def write_rows(batch: dict[str, np.ndarray], store_root: str) -> dict[str, np.ndarray]:
    """Commit each video of a batch to the store (or record its failure); returns one status per video."""
    store = _STORES.get(store_root)
    if store is None:
        store = _STORES[store_root] = FeatureStore.open(store_root)
    status = []
    for i in range(len(batch["vid"])):
        rel, vid = str(batch["rel_path"][i]), str(batch["vid"][i])
        if batch["error"][i]:
            store.record_failure(rel, str(batch["error"][i]))
            status.append("failed")
            continue
        entry = Entry(
            id=vid,
            file=str(store.feature_path(vid).relative_to(store.root)),
            label=str(batch["label"][i]),
            split=str(batch["split"][i]),
            source=rel,
            duration=float(batch["duration"][i]),
            fps=float(batch["fps"][i]),
            has_audio=bool(batch["has_audio"][i]),
            T=int(batch["T"][i]),
        )
        tensors = {
            "video": np.asarray(batch["video"][i], np.float32),
            "audio": np.asarray(batch["audio"][i], np.float32),
            "audio_mask": np.asarray(batch["audio_mask"][i], bool),
        }
        status.append("done" if store.write(entry, tensors) else "skipped")
    return {
        "rel_path": np.asarray([str(r) for r in batch["rel_path"]]),
        "status": np.asarray(status),
        "error": np.asarray([str(e) for e in batch["error"]]),
    }


# -- driver ------------------------------------------------------------------------------------------


def _resources(ray, device: str, opts: RayOptions) -> dict[str, Any]:
    """Actor pool sizes and per-actor / per-task resource requests for this cluster."""
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 1)), int(total.get("GPU", 0))
    if device == "cuda" and gpus == 0:
        raise InvalidArgumentError("device cuda: the Ray cluster has no GPU")
    use_gpu = gpus > 0 and device != "cpu"
    small = cpus < 4
    if use_gpu:  # both encoders share each GPU
        actors = opts.max_actors or gpus
        actor = {"num_gpus": 0.5, "num_cpus": opts.actor_cpus or 1.0}
    else:
        actors = opts.max_actors or max(1, int(cpus) // 4)
        actor = {"num_cpus": opts.actor_cpus or (0.5 if small else 1.0)}
    return {
        "use_gpu": use_gpu,
        "actors": actors,
        "actor": actor,
        "decode_cpus": opts.decode_cpus or (0.5 if small else 1.0),
    }


def extract_dataset_ray(
    data: str | Path,
    out: str | Path,
    address: str | None = None,
    options: RayOptions = RayOptions(),
    settings: ExtractOptions | None = None,
    **overrides: Any,
) -> ExtractResult:
    """:func:`avarnet.extract.extract_dataset` on a Ray cluster (``address``: None starts a local one).

    ``settings``: the :class:`~avarnet.extract.ExtractOptions` every engine takes, whose fields
    ``overrides`` may also set by name; audio is chunked and decoding runs in Ray tasks, so
    ``audio_mode`` and ``workers`` keep their defaults. The store must be on a filesystem every
    node sees (with working flock); backbone folders must be readable on every node too. Videos
    already in the store are skipped.
    """
    import torch

    from ..data import discover_dataset
    from ..encoders import AudioEncoder, VideoEncoder
    from ..extract import ExtractOptions, ExtractResult, build_spec, prepare_store
    from ..runtime import check_precision

    o = ExtractOptions.of(settings, **overrides)
    if o.audio_mode != "chunked" or o.workers is not None:
        raise InvalidArgumentError(
            "the Ray engine extracts chunked audio and decodes in Ray tasks (no audio_mode, workers)"
        )
    if o.runtime != "torch" or o.precision not in ENCODER_PRECISIONS:
        raise InvalidArgumentError(
            f"the Ray engine runs torch encoders at {', '.join(ENCODER_PRECISIONS)}, not "
            f"{o.runtime} {o.precision}"
        )
    weights, seed, device, precision = o.weights, o.seed, o.device, o.precision
    segment_seconds, frames_per_segment = o.segment_seconds, o.frames_per_segment
    video_backbone, audio_backbone, progress = o.video_backbone, o.audio_backbone, o.progress
    ray = require_ray()
    if address is not None and not ray.is_initialized():
        check_cluster(address)
    data, out = Path(data).resolve(), Path(out).resolve()
    items, classes = discover_dataset(data, seed=seed)
    if device not in DEVICES:
        raise InvalidArgumentError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    # The driver only builds the spec (and calibrates random weights): always on its CPU.
    video = VideoEncoder.load(video_backbone, weights=weights, seed=seed, device="cpu")
    audio = AudioEncoder.load(audio_backbone, weights=weights, seed=seed, device="cpu")
    spec = build_spec(
        video, audio, weights, seed, segment_seconds, frames_per_segment, precision=precision
    )
    info = {"classes": classes, "data_root": str(data), "split_seed": seed}
    store = prepare_store(out, spec, video, items, info)
    del video, audio
    result = ExtractResult()
    todo = []
    for item in items:
        if store.is_done(video_id(item.rel_path)):
            result.skipped += 1
        else:
            todo.append(item)
    store.close_writer()
    if not todo:
        return result
    if not ray.is_initialized():
        join_cluster(ray, address)
    res = _resources(ray, device, options)
    check_precision(
        precision, torch.device("cuda" if res["use_gpu"] else "cpu"), ENCODER_PRECISIONS
    )
    actor_device = "cuda" if res["use_gpu"] else "cpu"
    rows = [
        {
            "path": str(it.path),
            "rel_path": it.rel_path,
            "vid": video_id(it.rel_path),
            "label": it.label,
            "split": it.split,
        }
        for it in todo
    ]
    ds = build_pipeline(ray, rows, store.spec, out, actor_device, res, options)
    bar = progress_bar(
        total=len(items),
        initial=result.skipped,
        desc="extract (ray)",
        unit="video",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for row in ds.iter_rows():
            if row["status"] == "done":
                result.done += 1
            elif row["status"] == "skipped":
                result.skipped += 1
            else:
                write_line(f"failed: {row['rel_path']}: {row['error']}")
                result.failures.append({"path": str(row["rel_path"]), "reason": str(row["error"])})
                bar.set_postfix(failed=len(result.failures))
            bar.update(1)
    finally:
        bar.close()
    return result


def build_pipeline(
    ray,
    rows: list[dict[str, Any]],
    spec: FeatureSpec,
    out: Path,
    actor_device: str,
    res: dict[str, Any],
    options: RayOptions,
):
    """The Ray Data pipeline: decode (tasks) -> MobileViT, Wav2Vec2 (actor pools) -> write (tasks).

    Resources are asked with Ray Data's named parameters (``num_cpus``, ``num_gpus``,
    ``max_calls``) and actor pools with ``compute``: no free-form remote arguments, which Ray
    Data deprecates (gone in 2.64). Ray Data spreads the map tasks over the nodes itself.
    """
    from ..extract import decode_plan

    ctor = {"spec": spec.to_dict(), "store_root": str(out), "device": actor_device}
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=res["actors"])
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(
        decode_row,
        fn_kwargs={"plan": decode_plan(spec)},
        num_cpus=res["decode_cpus"],
        max_calls=DECODE_CALLS_PER_WORKER,
    )
    for actor in (VideoEncoderActor, AudioEncoderActor):
        ds = ds.map_batches(
            actor,
            fn_constructor_kwargs=ctor,
            batch_size=options.videos_per_batch,
            batch_format="numpy",
            compute=pool,
            num_cpus=res["actor"]["num_cpus"],
            num_gpus=res["actor"].get("num_gpus"),
        )
    return ds.map_batches(
        write_rows,
        fn_kwargs={"store_root": str(out)},
        batch_size=options.videos_per_batch,
        batch_format="numpy",
        num_cpus=options.write_cpus,
    )


def cluster_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address ``HOST:PORT`` or ``ray://HOST:PORT`` (None for ``auto``);
    anything else is refused in one line."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal: [::1]:10001
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise InvalidArgumentError(
            f"not a Ray cluster address: {redact(address)!r} (give auto, HOST:PORT or "
            "ray://HOST:PORT)"
        )
    return host, int(port)


def check_cluster(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line each, a cluster address that is malformed, a ``ray://`` address without
    Ray Client installed, and a host that does not answer on its port within ``timeout`` seconds
    (InvalidArgumentError): before any work, and never a wait of minutes."""
    endpoint = cluster_endpoint(address)
    shown = redact(address)
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise InvalidArgumentError(
            f"the Ray cluster address {shown} needs Ray Client, which is not installed: "
            "pip install 'ray[client]'"
        )
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout).close()
    except OSError as e:
        timed_out = isinstance(e, TimeoutError)
        reason = f"no answer within {timeout:g} s" if timed_out else (e.strerror or str(e))
        raise InvalidArgumentError(f"cannot reach the Ray cluster at {shown}: {reason}") from None


def join_cluster(ray, address: str | None) -> None:
    """``ray.init``: a new local cluster (``address`` None), or the cluster at ``address``
    (checked by :func:`check_cluster` first); a cluster that refuses to be joined: one line."""
    if address is None:  # the workers of the cluster started here import avarnet as this driver
        ray.init(log_to_driver=False, runtime_env=_runtime_env())
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, TimeoutError, ValueError) as e:
        raise InvalidArgumentError(
            f"cannot join the Ray cluster at {redact(address)}: {redact(e)}"
        ) from None


def _runtime_env() -> dict[str, Any]:
    """Workers of a cluster this driver starts import avarnet from where the driver does."""
    src = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


__all__ = ["RayOptions", "extract_dataset_ray", "require_ray"]
