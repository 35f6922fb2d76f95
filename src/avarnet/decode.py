"""Decoding one video into what the encoders need, in pieces of bounded size.

Used by the parallel extraction engines: the local one runs :func:`decode_worker` in worker
processes, the Ray one calls :func:`decode_video` in CPU tasks. Only PyAV and numpy are imported
here, so a decoding process starts fast and stays small (no torch, no transformers).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import media
from .media import segment_times

PIECE_FRAMES = 32  # frames per message from a decoding worker


@dataclass(frozen=True)
class DecodePlan:
    """What to decode from each video (the feature spec's decoding fields)."""

    segment_seconds: float
    frames_per_segment: int
    resize_shortest_edge: int
    audio_chunk_seconds: float
    sample_rate: int


def decode_pieces(path: str, plan: DecodePlan) -> Iterator[tuple]:
    """One video as messages, in order:

    ``("info", MediaInfo, T)``, then ``("frames", start, (n, H, W, 3) uint8)`` pieces of at most
    PIECE_FRAMES frames (T * k frames in all), then ``("audio", index, offset_seconds, (S,) float32)``
    per audio chunk, then ``("end", frames, chunks)``. Raises MediaError (or anything a decoder
    raises) on a bad file, possibly after some pieces.
    """
    info = media.probe(path)
    times = segment_times(info.duration, plan.segment_seconds, plan.frames_per_segment)
    yield ("info", info, len(times))
    buf: list[np.ndarray] = []
    sent = 0
    for frame in media.read_frames(
        path, times.ravel().tolist(), plan.resize_shortest_edge, info=info
    ):
        buf.append(frame)
        if len(buf) == PIECE_FRAMES:
            yield ("frames", sent, np.stack(buf))
            sent, buf = sent + len(buf), []
    if buf:
        yield ("frames", sent, np.stack(buf))
        sent += len(buf)
    chunks = 0
    if info.has_audio:
        offset = 0.0
        for chunk in media.iter_audio(path, plan.audio_chunk_seconds, plan.sample_rate, info=info):
            yield ("audio", chunks, offset, chunk)
            offset += len(chunk) / plan.sample_rate
            chunks += 1
    yield ("end", sent, chunks)


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
    for msg in decode_pieces(path, plan):
        if msg[0] == "info":
            info, T = msg[1], msg[2]
        elif msg[0] == "frames":
            frames.append(msg[2])
        elif msg[0] == "audio":
            offsets.append(msg[2])
            chunks.append(msg[3])
    return {
        "info": info,
        "T": T,
        "frames": np.concatenate(frames),
        "chunks": chunks,
        "offsets": offsets,
    }


def decode_worker(wid: int, tasks, out, plan: DecodePlan) -> None:
    """Worker process: decode the ``(key, path)`` tasks it is given until it gets None.

    Every message put on ``out`` is ``(kind, wid, key, *fields)`` with the kinds of
    :func:`decode_pieces`, or ``("error", wid, key, reason)`` when the video cannot be used.
    ``out`` is a bounded queue, so a worker waits while the encoders are behind. Ctrl-C is left to
    the parent, which stops its workers itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        task = tasks.get()
        if task is None:
            return
        key, path = task
        try:
            for msg in decode_pieces(path, plan):
                out.put((msg[0], wid, key, *msg[1:]))
        except Exception as err:  # one bad file must not stop the worker
            out.put(("error", wid, key, failure_reason(err)))
