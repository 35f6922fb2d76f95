"""Decoding one video into what the encoders need, in pieces of bounded size.

Used by the parallel extraction engines: the local one runs :func:`decode_worker` in worker
processes, the Ray one calls :func:`decode_video` in CPU tasks. Only PyAV and numpy are imported
here, so a decoding process starts fast and stays small (no torch, no transformers).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import media
from .media import segment_times

PIECE_FRAMES = 32  # frames per message from a decoding worker
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent ends (Linux)
PARENT_CHECK_S = 1.0  # how often a worker looks whether its parent still runs


@dataclass(frozen=True)
class DecodePlan:
    """What to decode from each video (the feature spec's decoding fields)."""

    segment_seconds: float
    frames_per_segment: int
    resize_shortest_edge: int
    audio_chunk_seconds: float
    sample_rate: int


@dataclass(frozen=True)
class VideoInfo:
    """A video's first piece: what it holds and its number of segments ``T``."""

    info: media.MediaInfo
    T: int


@dataclass(frozen=True)
class Frames:
    """Frames ``start`` .. ``start + n`` of the T * k frames, (n, H, W, 3) uint8."""

    start: int
    frames: np.ndarray


@dataclass(frozen=True)
class AudioChunk:
    """Audio chunk number ``index``, starting ``offset`` seconds in, (S,) float32."""

    index: int
    offset: float
    samples: np.ndarray


@dataclass(frozen=True)
class End:
    """A video's last piece: the frames and audio chunks sent for it."""

    frames: int
    chunks: int


@dataclass(frozen=True)
class Failed:
    """The video cannot be used (possibly after some pieces): its one-line reason."""

    reason: str


Piece = VideoInfo | Frames | AudioChunk | End


@dataclass(frozen=True)
class WorkerMessage:
    """What a decoding worker sends: a piece (or the failure) of video ``key``, from worker ``wid``."""

    wid: int
    key: int
    piece: Piece | Failed


def decode_pieces(path: str, plan: DecodePlan) -> Iterator[Piece]:
    """One video as pieces, in order: :class:`VideoInfo`, then :class:`Frames` of at most
    PIECE_FRAMES frames (T * k frames in all), then an :class:`AudioChunk` per audio chunk, then
    :class:`End`. Raises MediaError (or anything a decoder raises) on a bad file, possibly after
    some pieces.
    """
    info = media.probe(path)
    times = segment_times(info.duration, plan.segment_seconds, plan.frames_per_segment)
    yield VideoInfo(info, len(times))
    buf: list[np.ndarray] = []
    sent = 0
    for frame in media.read_frames(
        path, times.ravel().tolist(), plan.resize_shortest_edge, info=info
    ):
        buf.append(frame)
        if len(buf) == PIECE_FRAMES:
            yield Frames(sent, np.stack(buf))
            sent, buf = sent + len(buf), []
    if buf:
        yield Frames(sent, np.stack(buf))
        sent += len(buf)
    chunks = 0
    if info.has_audio:
        offset = 0.0
        for chunk in media.iter_audio(path, plan.audio_chunk_seconds, plan.sample_rate, info=info):
            yield AudioChunk(chunks, offset, chunk)
            offset += len(chunk) / plan.sample_rate
            chunks += 1
    yield End(sent, chunks)


def failure_reason(err: BaseException) -> str:
    """The one-line reason recorded in failures.jsonl for a video that could not be decoded."""
    if isinstance(err, media.MediaError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def decode_video(path: str, plan: DecodePlan) -> dict:
    """A whole video at once: info, frames (T*k, H, W, 3), audio chunks and their offsets."""
    frames: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    offsets: list[float] = []
    info, T = None, 0
    for piece in decode_pieces(path, plan):
        if isinstance(piece, VideoInfo):
            info, T = piece.info, piece.T
        elif isinstance(piece, Frames):
            frames.append(piece.frames)
        elif isinstance(piece, AudioChunk):
            offsets.append(piece.offset)
            chunks.append(piece.samples)
    return {
        "info": info,
        "T": T,
        "frames": np.concatenate(frames),
        "chunks": chunks,
        "offsets": offsets,
    }


def exit_with_parent(parent: int) -> None:
    """End this process as soon as process ``parent`` (the one that started it) has ended, even
    when that one was killed outright (SIGKILL): nothing else would tell a worker blocked on its
    task queue. On Linux the kernel sends SIGKILL (prctl PR_SET_PDEATHSIG); everywhere a daemon
    thread also checks every PARENT_CHECK_S seconds whether this process has another parent
    now, and exits it if so. When the worker's pipes close, multiprocessing's resource tracker
    (fed by the parent and its workers) then ends too.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watching thread below still ends this process
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def decode_worker(wid: int, tasks, out, plan: DecodePlan, parent: int | None = None) -> None:
    """Worker process: decode the ``(key, path)`` tasks it is given until it gets None.

    Every message put on ``out`` is a :class:`WorkerMessage`: a piece of :func:`decode_pieces`, or
    :class:`Failed` when the video cannot be used.
    ``out`` is a bounded queue, so a worker waits while the encoders are behind. Ctrl-C is left to
    the parent, which stops its workers itself; ``parent``: the pid of that process, whose end
    (however it ends) ends this one (:func:`exit_with_parent`).
    """
    if parent is not None:
        exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        task = tasks.get()
        if task is None:
            return
        key, path = task
        try:
            for piece in decode_pieces(path, plan):
                out.put(WorkerMessage(wid, key, piece))
        except Exception as err:  # one bad file must not stop the worker
            out.put(WorkerMessage(wid, key, Failed(failure_reason(err))))
