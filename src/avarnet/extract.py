"""Video -> per-segment features, and dataset extraction (resumable, failures recorded).

Two local engines write the same store: the in-process path (``workers=0``: decode and encode one
video after another) and the parallel engine (``workers=N``: N decoding processes feed encoders that
batch frames and 10-s audio chunks across videos, through bounded queues). The Ray engine lives in
:mod:`avarnet.apps.extract_ray`. Every engine claims a video in the store before extracting it, so
several extraction processes can fill one store at once (docs/scale.md).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import media
from .config import (
    AUDIO_MODES,
    DEFAULT_AUDIO_CONTEXT_S,
    ONNX_PRECISIONS,
    PRECISIONS,
    RUNTIMES,
    WEIGHTS,
    FeatureSpec,
    check_choice,
)
from .data import VideoItem, scan_dataset
from .decode import (
    AudioChunk,
    DecodePlan,
    End,
    Failed,
    Frames,
    VideoInfo,
    WorkerMessage,
    decode_worker,
)
from .encoders import (
    AudioEncoder,
    VideoEncoder,
    absolute_source,
)
from .errors import InvalidArgumentError, NonFiniteError
from .features import Extractor, audio_batch, frame_batch, pool_audio_frames
from .gate import gate_settings
from .media import segment_times  # noqa: F401  (re-exported)
from .progress import ProgressBar, progress_bar, write_line
from .runtime import (
    autocast,
    cast_for_autocast,
    check_precision,
    configure_cpu,
    quantize_audio_encoder,
    resolve_device,
)
from .store import (
    Claimed,
    ClaimQueue,
    Entry,
    FeatureStore,
    StoreError,
    VideoClaim,
    store_lock,
)

log = logging.getLogger("avarnet")

QUEUE_PER_WORKER = 4  # decoded pieces (<= 16 frames or one audio chunk) waiting per worker
TASKS_PER_WORKER = 2  # videos handed to a decoding worker ahead of time
CALIBRATION_VIDEOS = 24  # random weights: BatchNorm statistics come from frames of this many videos
CALIBRATION_FRAMES_PER_VIDEO = 4


@dataclass
class ExtractResult:
    """What a dataset extraction did."""

    done: int = 0
    skipped: int = 0
    failures: list[dict] = field(default_factory=list)
    segments: int = 0  # segments of the videos extracted by this run
    gated: int = 0  # of those, held by the motion-and-sound gate (no encoder ran)


@dataclass(frozen=True)
class ExtractOptions:
    """How a dataset is extracted: the settings every engine takes (the local engines of
    :func:`extract_dataset`, the Ray engine of :func:`avarnet.apps.extract_ray.extract_dataset_ray`).

    ``workers``: decoding processes of the local engine (None: one per core; 0: decode and encode
    in this process, one video at a time). ``runtime`` and ``precision``: what computes the
    features, as for ``stream``: torch under autocast (fp32, bf16 where the device runs it
    natively, fp16 on a GPU) or int8 (Wav2Vec2 quantised, CPU); ``onnx``: the encoders of an
    export (fp32 or int8), given to :func:`extract_dataset` as ``encoders``. Both are recorded in
    the store's spec.
    """

    weights: str = "pretrained"
    video_backbone: str = "apple/mobilevit-small"
    audio_backbone: str = "facebook/wav2vec2-base"
    segment_seconds: float = 1.0
    frames_per_segment: int = 1
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    audio_mode: str = "chunked"
    audio_context_seconds: float = DEFAULT_AUDIO_CONTEXT_S
    workers: int | None = None
    precision: str = "fp32"
    gate: dict = field(default_factory=dict)  # motion-and-sound gate (avarnet.gate); {}: off
    runtime: str = "torch"

    def __post_init__(self) -> None:
        check_choice("ExtractOptions", "weights", self.weights, WEIGHTS)
        check_choice("ExtractOptions", "audio_mode", self.audio_mode, AUDIO_MODES)
        check_choice("ExtractOptions", "runtime", self.runtime, RUNTIMES)
        runs = ONNX_PRECISIONS if self.runtime == "onnx" else PRECISIONS
        check_choice("ExtractOptions", "precision", self.precision, runs)
        object.__setattr__(self, "gate", gate_settings(self.gate))
        if self.gate and self.audio_mode != "causal":
            raise InvalidArgumentError(
                "a motion-and-sound gate needs causal audio features (it decides per segment, "
                "as a live stream does); chunked audio cannot be gated"
            )
        if self.workers is not None and self.workers < 0:
            raise InvalidArgumentError(f"workers must be >= 0, got {self.workers}")

    @classmethod
    def of(cls, base: ExtractOptions | None = None, **settings: object) -> ExtractOptions:
        """``base`` (default: the defaults) with ``settings`` replacing its fields by name; a
        one-line :class:`InvalidArgumentError` for a name that is not a field."""
        names = {f.name for f in fields(cls)}
        for name in settings:
            if name not in names:
                raise InvalidArgumentError(
                    f"unexpected keyword argument {name!r}; extraction settings: "
                    + ", ".join(sorted(names))
                )
        return replace(base or cls(), **settings)


def decode_plan(spec: FeatureSpec) -> DecodePlan:
    return DecodePlan(
        segment_seconds=spec.segment_seconds,
        frames_per_segment=spec.frames_per_segment,
        resize_shortest_edge=spec.resize_shortest_edge,
        audio_chunk_seconds=spec.audio_chunk_seconds,
        sample_rate=spec.sample_rate,
    )


def encode_pixels(
    video: VideoEncoder, pixels: torch.Tensor, dtype: torch.dtype | None = None
) -> np.ndarray:
    """Preprocessed frames (B, 3, S, S) -> pooled MobileViT features (B, Dv) float32, at ``dtype``."""
    with autocast(video.device, dtype):
        return video.forward(pixels.to(video.device))


def audio_input(audio: AudioEncoder, samples: np.ndarray) -> np.ndarray:
    """One chunk as Wav2Vec2 input (:meth:`AudioEncoder.window_input`)."""
    return audio.window_input(samples)


def encode_audio_batch(
    audio: AudioEncoder, inputs: list[np.ndarray], dtype: torch.dtype | None = None
) -> np.ndarray:
    """Equal-length inputs from :func:`audio_input` -> Wav2Vec2 features (B, F, Da) float32, at ``dtype``."""
    with autocast(audio.device, dtype):
        return audio.forward(np.stack(inputs))


def calibration_frames(
    items: list[VideoItem], spec: FeatureSpec, seed: int
) -> Iterator[np.ndarray]:
    """Frames from a seeded sample of videos, used to recalibrate a random MobileViT's BatchNorm."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))[:CALIBRATION_VIDEOS]
    for i in sorted(order.tolist()):
        path = items[i].path
        try:
            info = media.probe(path)
            fractions = (
                np.arange(CALIBRATION_FRAMES_PER_VIDEO) + 0.5
            ) / CALIBRATION_FRAMES_PER_VIDEO
            yield from media.read_frames(
                path, (fractions * info.duration).tolist(), spec.resize_shortest_edge, info=info
            )
        except media.MediaError:
            continue


def build_spec(
    video: VideoEncoder,
    audio: AudioEncoder,
    weights: str,
    seed: int,
    segment_seconds: float,
    frames_per_segment: int,
    audio_mode: str = "chunked",
    audio_context_seconds: float = DEFAULT_AUDIO_CONTEXT_S,
    precision: str = "fp32",
    gate: dict | None = None,
) -> FeatureSpec:
    pretrained = weights == "pretrained"
    if video.kind == "clip":  # a clip encoder: each segment is one clip of its frames
        frames_per_segment, segment_seconds = video.clip_frames, video.clip_seconds
    return FeatureSpec(
        audio_mode=audio_mode,
        audio_context_seconds=audio_context_seconds,
        precision=precision,
        gate=gate or {},
        video_backbone=absolute_source(video.source),
        audio_backbone=absolute_source(audio.source),
        video_backbone_sha256=video.digest() if pretrained else "",
        audio_backbone_sha256=audio.digest() if pretrained else "",
        video_encoder=video.entry,
        audio_encoder=audio.entry,
        weights=weights,
        seed=seed,
        segment_seconds=segment_seconds,
        frames_per_segment=frames_per_segment,
        video_dim=video.dim,
        audio_dim=audio.dim,
        image_size=video.image_size,
        resize_shortest_edge=video.resize_shortest_edge,
        flip_channel_order=video.flip_channel_order,
        sample_rate=audio.sample_rate,
    )


def prepare_store(
    out: Path, spec: FeatureSpec, video: VideoEncoder, items: list[VideoItem], info: dict
) -> FeatureStore:
    """Create or reopen the store; for random weights, calibrate (or restore) the video encoder's BatchNorm.

    An export's encoders (``spec.runtime`` onnx) were calibrated before the export was written:
    nothing is calibrated and the store keeps no encoder state. A store is resumed only with the
    features' definition and the arithmetic (runtime, precision) it was started with.

    Runs under the store's lock, so writers started together agree on one spec and encoder state.
    """
    with store_lock(out):
        store = _prepare_store_locked(out, spec, video, items, info)
    store.register_writer()  # removes a killed writer's temporary files when no other writer runs
    return store


def _prepare_store_locked(
    out: Path, spec: FeatureSpec, video: VideoEncoder, items: list[VideoItem], info: dict
) -> FeatureStore:
    calibrate = spec.weights == "random" and spec.runtime == "torch"
    if (out / "spec.json").exists():
        existing = FeatureStore.open(out)
        if not existing.spec.same_features(spec):
            raise StoreError(
                f"{out} holds features made with a different spec; use a new output folder"
            )
        if not existing.spec.same_arithmetic(spec):
            raise StoreError(
                f"{out} holds features computed by {existing.spec.describe_arithmetic()}, not "
                f"{spec.describe_arithmetic()}; use a new output folder"
            )
        if calibrate:
            state = existing.load_encoder_state()
            if state is None:
                raise StoreError(f"{out} lacks its encoder state; use a new output folder")
            video.load_bn_state(state)
        return existing
    if calibrate:
        train = [it for it in items if it.split == "train"] or items
        n = video.calibrate(calibration_frames(train, spec, spec.seed))
        log.warning(
            "RANDOM WEIGHTS: MobileViT BatchNorm recalibrated on %d frames of this dataset", n
        )
        spec = spec.replace(random_init=video.describe())
    store = FeatureStore.create(out, spec, info)
    if calibrate:
        store.save_encoder_state(video.bn_state())
    return store


def _load_encoders(o: ExtractOptions) -> tuple[VideoEncoder, AudioEncoder, FeatureSpec]:
    """The torch encoders ``o`` names, at its precision (int8: Wav2Vec2 quantised, as a stream
    runs it), and the spec of the features they make."""
    # refuse a precision the device lacks before loading anything
    check_precision(o.precision, resolve_device(o.device), PRECISIONS)
    # every video ends in an audio chunk of its own length
    configure_cpu(varying_shapes=True, precision="fp32" if o.precision == "int8" else o.precision)
    video = VideoEncoder.load(o.video_backbone, weights=o.weights, seed=o.seed, device=o.device)
    audio = AudioEncoder.load(o.audio_backbone, weights=o.weights, seed=o.seed, device=o.device)
    spec = build_spec(
        video,
        audio,
        o.weights,
        o.seed,
        o.segment_seconds,
        o.frames_per_segment,
        o.audio_mode,
        o.audio_context_seconds,
        o.precision,
        o.gate,
    )
    if o.precision == "int8":  # after the spec: its digests are those of the weights as given
        if not isinstance(getattr(audio, "model", None), torch.nn.Module):
            raise InvalidArgumentError(
                f"precision int8 quantises a PyTorch audio model; {o.audio_backbone} is not one"
            )
        quantize_audio_encoder(audio)
    return video, audio, spec


def extract_dataset(
    data: str | Path,
    out: str | Path,
    settings: ExtractOptions | None = None,
    encoders: Extractor | None = None,
    **overrides: object,
) -> ExtractResult:
    """Extract features for every video of a VAAR-style dataset folder into the store at ``out``.

    Finished videos are skipped, so an interrupted run resumes. Unreadable inputs are reported one line
    each, recorded in the store, and the run continues. ``settings``: :class:`ExtractOptions`, whose
    fields ``overrides`` may also set by name (``extract_dataset(data, out, workers=0)``). The Ray
    engine, :func:`avarnet.apps.extract_ray.extract_dataset_ray`, takes the same settings.

    ``encoders``: for ``runtime="onnx"``, an export's encoders loaded at ``precision``
    (:func:`avarnet.export.load_onnx`); their spec (the export's live one) defines the features, so
    the settings' backbones, weights, segments, audio and gate are not used. The store then holds
    what ``stream --runtime onnx`` computes, and ``evaluate`` on it measures that path.
    """
    o = ExtractOptions.of(settings, **overrides)
    if (o.runtime == "onnx") != (encoders is not None):
        raise InvalidArgumentError(
            "the onnx runtime extracts with an export's encoders, and only it takes them"
        )
    data, out = Path(data), Path(out)
    scan = scan_dataset(data, seed=o.seed)
    items, classes = scan.items, scan.classes
    if encoders is None:
        video, audio, spec = _load_encoders(o)
    else:
        configure_cpu(varying_shapes=True)
        video, audio = encoders.video, encoders.audio
        spec = encoders.spec.replace(runtime=o.runtime, precision=o.precision)
    info = {"classes": classes, "data_root": str(data.resolve()), "split_seed": o.seed}
    store = prepare_store(out, spec, video, items, info)
    store.check_classes(classes)
    extractor = Extractor(store.spec, video, audio)
    if encoders is None:  # from here on they run under the spec's autocast
        for model in (video.model, audio.model):
            cast_for_autocast(model, extractor.dtype)
    workers = (os.cpu_count() or 1) if o.workers is None else o.workers
    result = ExtractResult()
    bar = progress_bar(
        total=len(items), desc="extract", unit="video", disable=not o.progress, dynamic_ncols=True
    )
    for rel, reason in scan.problems:  # folders and links that could not be scanned
        report_failure(store, result, bar, rel, reason)
    if (
        store.spec.audio_mode == "causal" and workers
    ):  # causal audio is made per segment, in process
        log.info(
            "causal audio features: extracting in this process (worker processes decode for chunked audio only)"
        )
        workers = 0
    if video.kind == "clip" and workers:  # whole clips per pass: encoded in process
        workers = 0

    def skip(item: VideoItem) -> None:
        result.skipped += 1
        bar.update(1)

    claims = ClaimQueue(store, items, on_skip=skip)
    try:
        if workers == 0:
            _extract_in_process(store, extractor, claims, result, bar)
        else:
            ParallelExtraction(store, extractor, workers, claims, result, bar).run()
    finally:
        bar.close()
        store.close_writer()
    return result


def entry_for(
    store: FeatureStore, item: VideoItem, vid: str, minfo: media.MediaInfo, T: int
) -> Entry:
    return Entry(
        id=vid,
        file=str(store.feature_path(vid).relative_to(store.root)),
        label=item.label,
        split=item.split,
        source=item.rel_path,
        duration=minfo.duration,
        fps=minfo.fps,
        has_audio=minfo.has_audio,
        T=T,
    )


def report_failure(
    store: FeatureStore, result: ExtractResult, bar: ProgressBar, rel_path: str, reason: str
) -> None:
    """Record one failed input: its one line on stdout, failures.jsonl, the result; the run goes on.

    The line is printed here, as the failure happens, and nowhere else.
    """
    write_line(f"failed: {rel_path}: {reason}")
    store.record_failure(rel_path, reason)
    result.failures.append({"path": rel_path, "reason": reason})
    bar.set_postfix(failed=len(result.failures))


def _extract_in_process(
    store: FeatureStore,
    extractor: Extractor,
    claims: ClaimQueue[VideoItem],
    result: ExtractResult,
    bar: ProgressBar,
) -> None:
    """Decode and encode one video after another in this process."""
    while not claims.empty:
        taken = claims.next(block=True)
        if taken is None:
            continue
        item, vid = taken.item, taken.vid
        try:
            try:
                tensors, minfo = extractor(item.path)
            except media.MediaError as e:
                reason = str(e)
            except Exception as e:  # a decoder or model failure on one input must not stop the run
                reason = f"{type(e).__name__}: {e}"
            else:
                try:
                    written = store.write(
                        entry_for(store, item, vid, minfo, len(tensors["video"])), tensors
                    )
                except NonFiniteError:  # refused by the store: a failure of this input only
                    reason = "features hold NaN or infinity (not stored)"
                else:
                    result.done += written
                    result.skipped += not written
                    if written:
                        result.segments += len(tensors["video"])
                        result.gated += int(tensors["gated"].sum()) if "gated" in tensors else 0
                    bar.update(1)
                    continue
            report_failure(store, result, bar, item.rel_path, reason)
            bar.update(1)
        finally:
            taken.release()


@dataclass
class _Job:
    """One video in flight in the parallel engine."""

    key: int
    item: VideoItem
    vid: str
    claim: VideoClaim
    info: media.MediaInfo | None = None
    T: int = 0
    video: np.ndarray | None = None  # (T * k, Dv) MobileViT features as they arrive
    sums: np.ndarray | None = None  # (T, Da) pooled Wav2Vec2 sums
    counts: np.ndarray | None = None  # (T,)
    frames_done: int = 0
    chunks_done: int = 0
    end: End | None = None  # the frames and chunks the decoder sent, once it is finished
    failed: bool = False

    @property
    def complete(self) -> bool:
        return (
            not self.failed
            and self.end is not None
            and self.frames_done == self.end.frames
            and self.chunks_done == self.end.chunks
        )


class ParallelExtraction:
    """Decoding worker processes feeding batched encoders in this process, with bounded queues.

    Frames of several videos share a MobileViT forward pass; 10-s audio chunks of the same length
    share a Wav2Vec2 forward pass (batch sizes: :func:`~avarnet.features.frame_batch`,
    :func:`~avarnet.features.audio_batch`). A batch is run when full, when a batch's worth of
    chunks of any lengths wait, or at once when no decoded piece is waiting (so a fast encoder
    never idles). A decoding process that dies (e.g. a decoder crash on a hostile file) fails only
    the video it was decoding; its other videos go to a new worker.
    """

    def __init__(
        self,
        store: FeatureStore,
        extractor: Extractor,
        workers: int,
        claims: ClaimQueue[VideoItem],
        result: ExtractResult,
        bar: ProgressBar,
        start_method: str = "spawn",
    ):
        self.store, self.ex, self.claims, self.result, self.bar = (
            store,
            extractor,
            claims,
            result,
            bar,
        )
        self.n_workers = workers
        self.ctx = mp.get_context(start_method)
        self.plan = decode_plan(extractor.spec)
        self.out = self.ctx.Queue(maxsize=QUEUE_PER_WORKER * workers)
        self.procs: dict[int, tuple[mp.Process, object]] = {}
        self.assigned: dict[int, deque[int]] = {}
        self.jobs: dict[int, _Job] = {}
        self.retry: deque[_Job] = deque()
        self.frame_pieces: list[tuple[_Job, int, torch.Tensor]] = []
        self.frame_count = 0
        self.audio_groups: dict[int, list[tuple[_Job, float, np.ndarray]]] = {}
        self.frame_batch = frame_batch(extractor.video.device)
        self.audio_batch = audio_batch(extractor.audio.device)
        self.next_key = 0
        self.next_wid = 0
        self.last_check = time.monotonic()

    # -- workers -----------------------------------------------------------------------------
    def _start_worker(self) -> int:
        wid = self.next_wid
        self.next_wid += 1
        tasks = self.ctx.Queue()
        proc = self.ctx.Process(
            target=decode_worker, args=(wid, tasks, self.out, self.plan, os.getpid()), daemon=True
        )
        proc.start()
        self.procs[wid] = (proc, tasks)
        self.assigned[wid] = deque()
        return wid

    def _dispatch(self) -> None:
        """Hand videos to workers with room, up to TASKS_PER_WORKER each."""
        for wid in list(self.procs):
            while len(self.assigned[wid]) < TASKS_PER_WORKER:
                job = self._next_job()
                if job is None:
                    return
                self.jobs[job.key] = job
                self.assigned[wid].append(job.key)
                self.procs[wid][1].put((job.key, str(job.item.path)))

    def _next_job(self) -> _Job | None:
        if self.retry:
            old = self.retry.popleft()  # a fresh key: late pieces of the dead worker are ignored
            taken = Claimed(old.item, old.vid, old.claim)
        else:
            taken = self.claims.next(block=not self.jobs)
            if taken is None:
                return None
        self.next_key += 1
        return _Job(self.next_key, taken.item, taken.vid, taken.claim)

    def _check_workers(self) -> None:
        """Replace dead workers. The video a dead worker was decoding fails; every other video in
        flight starts again, with a fresh set of workers and a fresh output queue: a worker killed
        while it wrote to the shared queue can leave the queue locked, or half a message in it,
        so nothing more is read from that queue."""
        self.last_check = time.monotonic()
        dead = {wid: proc.exitcode for wid, (proc, _) in self.procs.items()}
        dead = {wid: code for wid, code in dead.items() if code is not None}
        if not dead:
            return
        for wid, code in dead.items():
            keys = self.assigned[wid]
            job = self.jobs.get(keys.popleft()) if keys else None
            if job is not None:
                self._fail(job, f"the decoding process died (exit code {code})")
        for wid in list(self.procs):
            for key in self.assigned.pop(wid):
                job = self.jobs.pop(key, None)
                if job is not None:
                    job.failed = True  # the pieces of it already read are dropped, not written
                    self.retry.append(job)  # decoded again from the start, under a new key
        self._stop_workers(at_once=True)
        self.out = self.ctx.Queue(maxsize=QUEUE_PER_WORKER * self.n_workers)
        for _ in range(self.n_workers):
            self._start_worker()

    def _stop_workers(self, at_once: bool = False) -> None:
        """End the workers (``at_once``: without letting them finish what they decode) and close
        the output queue."""
        for _, tasks in self.procs.values():
            with contextlib.suppress(Exception):
                tasks.put(None)
        deadline = time.monotonic() + (0 if at_once else 5)
        for proc, tasks in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(1)
            tasks.cancel_join_thread()
            tasks.close()
        self.procs = {}
        self.out.cancel_join_thread()
        self.out.close()

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            for _ in range(self.n_workers):
                self._start_worker()
            while True:
                self._dispatch()
                if not self.jobs and not self.retry and self.claims.empty:
                    break
                pending = self.frame_count > 0 or bool(self.audio_groups)
                try:
                    msg = self.out.get(timeout=0.01 if pending else 0.5)
                except queue.Empty:
                    if pending:
                        self._flush_frames()
                        self._flush_audio(all_groups=True)
                    else:
                        self._check_workers()
                    continue
                self._handle(msg)
                if self.frame_count >= self.frame_batch:
                    self._flush_frames()
                self._flush_audio(all_groups=False)
                if time.monotonic() - self.last_check > 2.0:
                    self._check_workers()
        finally:
            self._stop_workers()
            for job in self.jobs.values():
                job.claim.release()
            for job in self.retry:
                job.claim.release()

    def _handle(self, msg: WorkerMessage) -> None:
        piece, key = msg.piece, msg.key
        job = self.jobs.get(key)
        if isinstance(piece, End | Failed) and (self.assigned.get(msg.wid) or [None])[0] == key:
            self.assigned[msg.wid].popleft()
        if job is None or job.failed:
            return
        if isinstance(piece, VideoInfo):
            job.info, job.T = piece.info, piece.T
            k = self.ex.spec.frames_per_segment
            job.video = np.zeros((job.T * k, self.ex.video.dim), dtype=np.float32)
            job.sums = np.zeros((job.T, self.ex.audio.dim), dtype=np.float64)
            job.counts = np.zeros(job.T, dtype=np.int64)
        elif isinstance(piece, Frames):
            try:
                pixels = self.ex.video.preprocess(piece.frames)
            except Exception as e:
                self._fail(job, f"{type(e).__name__}: {e}")
                return
            self.frame_pieces.append((job, piece.start, pixels))
            self.frame_count += len(pixels)
        elif isinstance(piece, AudioChunk):
            x = audio_input(self.ex.audio, piece.samples)
            self.audio_groups.setdefault(len(x), []).append((job, piece.offset, x))
        elif isinstance(piece, End):
            job.end = piece
            if piece.frames != job.T * self.ex.spec.frames_per_segment:
                self._fail(job, f"decoder returned {piece.frames} frames for {job.T} segments")
                return
            self._maybe_finish(job)
        elif isinstance(piece, Failed):
            self._fail(job, piece.reason)

    # -- encoding ----------------------------------------------------------------------------
    def _flush_frames(self) -> None:
        pieces = [p for p in self.frame_pieces if not p[0].failed]
        self.frame_pieces, self.frame_count = [], 0
        if not pieces:
            return
        pixels = torch.cat([p[2] for p in pieces])
        size = self.frame_batch  # at most this many a pass: the peak memory does not depend on luck
        try:
            feats = np.concatenate(
                [
                    encode_pixels(self.ex.video, pixels[i : i + size], self.ex.dtype)
                    for i in range(0, len(pixels), size)
                ]
            )
        except Exception as e:  # e.g. out of memory: the videos of this batch fail, the run goes on
            for job, _, _ in pieces:
                self._fail(job, f"{type(e).__name__}: {e}")
            return
        row = 0
        for job, start, pixels in pieces:
            n = len(pixels)
            if not job.failed:
                job.video[start : start + n] = feats[row : row + n]
                job.frames_done += n
            row += n
        for job in {id(p[0]): p[0] for p in pieces}.values():
            self._maybe_finish(job)

    def _flush_audio(self, all_groups: bool) -> None:
        # Chunks wait for others of their length, but a video's last chunk rarely finds any: once
        # a batch's worth of chunks wait in all, every group runs, so the chunks (and the unfinished
        # videos they hold in memory) are bounded even when the decoders never let the queue empty.
        waiting = sum(map(len, self.audio_groups.values()))
        all_groups = all_groups or waiting >= self.audio_batch
        for length in list(self.audio_groups):
            group = [g for g in self.audio_groups[length] if not g[0].failed]
            if not group:
                del self.audio_groups[length]
                continue
            if not all_groups and len(group) < self.audio_batch:
                self.audio_groups[length] = group
                continue
            del self.audio_groups[length]
            try:
                feats = encode_audio_batch(self.ex.audio, [g[2] for g in group], self.ex.dtype)
            except Exception as e:
                for job, _, _ in group:
                    self._fail(job, f"{type(e).__name__}: {e}")
                continue
            seg = self.ex.spec.segment_seconds
            for (job, offset, _), f in zip(group, feats, strict=True):
                if job.failed:
                    continue
                pool_audio_frames(
                    f, self.ex.audio.frame_times(len(f), offset), job.T, seg, job.sums, job.counts
                )
                job.chunks_done += 1
            for job in {id(g[0]): g[0] for g in group}.values():
                self._maybe_finish(job)

    # -- results -----------------------------------------------------------------------------
    def _maybe_finish(self, job: _Job) -> None:
        if not job.complete or job.key not in self.jobs:
            return
        del self.jobs[job.key]
        try:
            k = self.ex.spec.frames_per_segment
            video = job.video.reshape(job.T, k, -1).mean(axis=1).astype(np.float32)
            mask = job.counts > 0
            audio = np.zeros((job.T, self.ex.audio.dim), dtype=np.float32)
            audio[mask] = (job.sums[mask] / job.counts[mask, None]).astype(np.float32)
            tensors = {"video": video, "audio": audio, "audio_mask": mask}
            try:
                written = self.store.write(
                    entry_for(self.store, job.item, job.vid, job.info, job.T), tensors
                )
            except NonFiniteError:  # refused by the store: a failure of this input only
                report_failure(
                    self.store,
                    self.result,
                    self.bar,
                    job.item.rel_path,
                    "features hold NaN or infinity (not stored)",
                )
            else:
                self.result.done += written
                self.result.skipped += not written
            self.bar.update(1)
        finally:
            job.claim.release()

    def _fail(self, job: _Job, reason: str) -> None:
        if job.failed:
            return
        job.failed = True
        self.jobs.pop(job.key, None)
        try:
            report_failure(self.store, self.result, self.bar, job.item.rel_path, reason)
            self.bar.update(1)
        finally:
            job.claim.release()


__all__ = [
    "ExtractOptions",
    "ExtractResult",
    "Extractor",
    "ParallelExtraction",
    "build_spec",
    "extract_dataset",
    "segment_times",
]
