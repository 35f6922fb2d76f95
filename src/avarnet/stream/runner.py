"""The run loop: decoder thread -> queue -> encoders, model and alerts in the calling thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..alerts import AlertTracker, WebhookPoster
from ..checkpoint import Checkpoint
from ..features import Extractor
from ..media import Segment, SegmentSource
from ..redact import redact
from .predictor import FeatureDrift, StreamingPredictor
from .source import POLL_S, SegmentQueue, StreamOptions, open_source
from .summary import StreamSummary, segment_record

STOP_GRACE_S = 3.0  # after a stop request, how long to wait for a decoder stuck in a read


class _Runner:
    """Decoder thread -> queue -> encoders/model/alerts in the calling thread."""

    def __init__(
        self,
        source: SegmentSource,
        predictor: StreamingPredictor,
        options: StreamOptions,
        emit: Callable[[dict], None],
        webhook: WebhookPoster | None,
    ) -> None:
        self.source = source
        self.predictor = predictor
        self.options = options
        self.emit = emit
        self.webhook = webhook
        self.tracker = AlertTracker(options.rule)
        self.queue = SegmentQueue(options.queue_segments, drop_oldest=source.paced)
        self.summary = StreamSummary(source.source)
        self._prob_sum: np.ndarray | None = None
        self._reader_error: str | None = None
        self._failure: str | None = None
        trained = predictor.ckpt.spec
        self.drift = None
        if trained.audio_mode == "chunked" and predictor.encoder is not None:
            self.drift = FeatureDrift(predictor.encoder.extractor.with_spec(trained))

    def run(self) -> StreamSummary:
        reader = threading.Thread(target=self._pump, name="avarnet-decoder", daemon=True)
        started = time.monotonic()
        reader.start()
        try:
            self._consume()
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self.source.stop.set()
            self.queue.abort()
        except Exception as e:  # e.g. a model output that is not finite: stop reading, say why
            self._failure = str(e)
            self.source.stop.set()
            self.queue.abort()
            raise
        finally:
            self.summary.wall_seconds = time.monotonic() - started
            reader.join(timeout=STOP_GRACE_S)
            self._finish(reader.is_alive())
        return self.summary

    def _pump(self) -> None:
        try:
            for segment in self.source:
                if not self.queue.put(segment):
                    break
        except Exception as e:  # a decoder failure ends the stream; the consumer reports it
            self._reader_error = redact(f"{type(e).__name__}: {e}")
        finally:
            self.queue.close()

    def _consume(self) -> None:
        stop_seen: float | None = None
        while True:
            batch = self.queue.get_batch(self.options.batch_segments, POLL_S)
            if batch is None:
                return
            if batch:
                self._process(batch)
            elif self.source.stop.is_set():
                stop_seen = stop_seen or time.monotonic()
                if time.monotonic() - stop_seen > STOP_GRACE_S:
                    return  # the decoder is stuck in a read: do not wait for it

    def _process(self, batch: list[Segment]) -> None:
        t0 = time.monotonic()
        feats = self.predictor.encoder.encode(batch)
        if self.drift is not None and self.drift.add(batch, feats["audio"]):
            self.summary.features = self.drift.report(self.predictor.spec)
            self.drift = None
        for i, seg in enumerate(batch):
            pred = self.predictor.push_features(
                feats["video"][i],
                feats["audio"][i],
                bool(feats["audio_mask"][i]),
                start=seg.start,
                end=seg.end,
            )
            now = time.monotonic()
            lag = (
                now - (self.source.clock0 + seg.end)
                if self.source.paced and self.source.clock0 is not None
                else None
            )
            gated = bool(feats["gated"][i]) if "gated" in feats else None
            record = segment_record(
                pred,
                (now - seg.ready) * 1e3,
                (now - t0) * 1e3,
                lag,
                bool(feats["audio_mask"][i]),
                gated,
            )
            if gated is not None:
                self.summary.gated = (self.summary.gated or 0) + gated
            self._account(pred, record)
            self.emit(record)
            for update in self.tracker.update(
                seg.start, seg.end, pred["anomaly_score"], pred["probabilities"]
            ):
                self._event(update.event.record())

    def _account(self, pred: dict, record: dict) -> None:
        s = self.summary
        s.segments += 1
        s.media_seconds = pred["end"]
        s.latency_ms.add(record["latency_ms"])
        s.compute_ms.add(record["compute_ms"])
        if record["lag_s"] is not None:
            s.lag_s.add(record["lag_s"])
        probs = np.array(list(pred["probabilities"].values()))
        self._prob_sum = probs if self._prob_sum is None else self._prob_sum + probs

    def _event(self, record: dict) -> None:
        if record["state"] == "closed":
            self.summary.events.append(record)
            self.summary.events_total += 1
        self.emit(record)
        if self.webhook is not None:
            self.webhook.post(record)

    def _finish(self, reader_stuck: bool) -> None:
        if self.drift is not None and self.drift.segments:
            self.summary.features = self.drift.report(self.predictor.spec)
        for update in self.tracker.finish():
            self._event(update.event.record())
        s = self.summary
        s.dropped, s.queue_high_water = self.queue.dropped, self.queue.high_water
        s.end_reason, s.complete = self.source.end_reason, self.source.complete
        if self._failure is not None:
            s.end_reason, s.complete = f"failed: {self._failure}", False
        elif self._reader_error is not None:
            s.end_reason, s.complete = f"decoder failed: {self._reader_error}", False
        elif s.interrupted:
            s.end_reason = f"interrupted at {s.media_seconds:.1f} s"
        elif reader_stuck:
            s.end_reason, s.complete = (
                f"stopped at {s.media_seconds:.1f} s (the source did not answer)",
                True,
            )
        if self._prob_sum is not None:
            s.label = self.predictor.ckpt.classes[int(self._prob_sum.argmax())]
        if self.webhook is not None:
            s.webhook = self.webhook.close().to_dict()
        self.emit(s.record())


def run_stream(
    source: str | Path | SegmentSource,
    ckpt: Checkpoint,
    extractor: Extractor,
    emit: Callable[[dict], None],
    options: StreamOptions | None = None,
    *,
    stop: threading.Event | None = None,
    webhook: WebhookPoster | None = None,
    model: Callable | None = None,
) -> StreamSummary:
    """Read ``source`` to its end (or until ``stop`` is set) and emit one record per segment.

    ``source`` is a path or URL, or a :class:`SegmentSource` opened by :func:`open_source` (then
    its own reading options and stop event apply). ``emit`` receives, in order: ``{"type":
    "segment", ...}`` per segment, ``{"type": "event", "state": "open"|"closed", ...}`` per alert
    change (also POSTed to ``webhook``), and a final ``{"type": "summary", ...}``. On a stop request
    or end of input, queued segments are still processed and open events closed. Raises
    :class:`SourceError` / ``media.MediaError`` when the source cannot be opened. ``model``
    replaces the checkpoint's temporal model (e.g. its ONNX export). When the checkpoint was
    trained on other features than the stream computes, the first minute's features are compared
    with the trained-on ones (:class:`FeatureDrift`) and the summary says how far they are.
    """
    options = options or StreamOptions()
    src = (
        source
        if isinstance(source, SegmentSource)
        else open_source(source, ckpt.spec, options, stop)
    )
    predictor = StreamingPredictor(
        ckpt,
        extractor,
        audio_context_seconds=options.audio_context_seconds,
        autocast_dtype=options.autocast_dtype,
        model=model,
    )
    return _Runner(src, predictor, options, emit, webhook).run()
