"""Live inference: a source (file, URL or capture device) -> one prediction per segment, with alerts.

Pipeline (one process)::

    decoder thread ── SegmentSource: demux + decode, cut into segments ──▶ SegmentQueue (bounded)
    main thread    ── SegmentEncoder (MobileViT, Wav2Vec2 with left context) ──▶ StreamingPredictor
                   ── AlertTracker ──▶ records (JSON lines, live view, webhook)

The decoder never waits on the model for live sources and files read in real time: when the queue is
full the oldest segment is dropped and counted. Files read as fast as possible block instead (no
drops), so their scores equal ``predict --causal`` for the same file, which uses the same
:class:`SegmentSource` and :class:`SegmentEncoder` (:func:`causal_features`).

A stream cannot look ahead, so it computes causal audio features (:mod:`avarnet.features`): Wav2Vec2
per segment over the segment's audio plus a stated look-back. A checkpoint trained on causal
features (``extract --audio-features causal``) is fed exactly what it was trained on; one trained on
chunked features gets causal ones, and :func:`check_live_features` says so (or refuses).

Sources: an existing path is a file (``/dev/video*`` is a V4L2 capture device on Linux); anything
with ``://`` is a network URL (RTSP is read over TCP). Other capture APIs are reached with
``input_format`` (``avfoundation`` on macOS, ``dshow`` on Windows) and FFmpeg ``options``.

Modules: :mod:`.source` (opening a source, the bounded queue, :class:`StreamOptions`),
:mod:`.predictor` (:class:`StreamingPredictor`, live vs trained-on features), :mod:`.summary`
(segment records, the run's summary) and :mod:`.runner` (:func:`run_stream`). The library prints
nothing and installs no signal handler: the terminal view and Ctrl-C handling belong to the
command line (:mod:`avarnet.cli.stream_view`).
"""

from __future__ import annotations

from ..features import (
    BATCH_SEGMENTS,
    CPU_FRAME_BATCH,
    GPU_FRAME_BATCH,
    Extractor,
    SegmentEncoder,
    causal_features,
    chunked_audio,
    cosine,
    live_spec,
    split_chunks,
)
from ..media import (
    AUDIO_LAG_LIMIT_S,
    MAX_AUDIO_HELD_S,
    MAX_TIME_JUMP_S,
    Segment,
    SegmentCutter,
    SegmentSource,
    SourceError,
    SourceInfo,
    source_kind,
)
from ..runtime import PRECISIONS, autocast_dtype, quantize_audio_encoder
from .predictor import (
    DRIFT_SECONDS,
    FeatureDrift,
    FeatureMismatchError,
    StreamingPredictor,
    check_live_features,
    feature_mismatch,
    fold_ignored,
    stream_extractor,
)
from .runner import STOP_GRACE_S, run_stream
from .source import POLL_S, QUEUE_SEGMENTS, SegmentQueue, StreamOptions, open_source
from .summary import (
    STATS_RESERVOIR,
    SUMMARY_EVENTS,
    TOP_K,
    BoundedStats,
    StreamSummary,
    segment_record,
)

__all__ = [
    "AUDIO_LAG_LIMIT_S",
    "BATCH_SEGMENTS",
    "CPU_FRAME_BATCH",
    "DRIFT_SECONDS",
    "GPU_FRAME_BATCH",
    "MAX_AUDIO_HELD_S",
    "MAX_TIME_JUMP_S",
    "POLL_S",
    "PRECISIONS",
    "QUEUE_SEGMENTS",
    "STATS_RESERVOIR",
    "STOP_GRACE_S",
    "SUMMARY_EVENTS",
    "TOP_K",
    "BoundedStats",
    "Extractor",
    "FeatureDrift",
    "FeatureMismatchError",
    "Segment",
    "SegmentCutter",
    "SegmentEncoder",
    "SegmentQueue",
    "SegmentSource",
    "SourceError",
    "SourceInfo",
    "StreamOptions",
    "StreamSummary",
    "StreamingPredictor",
    "autocast_dtype",
    "causal_features",
    "check_live_features",
    "chunked_audio",
    "cosine",
    "feature_mismatch",
    "fold_ignored",
    "live_spec",
    "open_source",
    "quantize_audio_encoder",
    "run_stream",
    "segment_record",
    "source_kind",
    "split_chunks",
    "stream_extractor",
]
