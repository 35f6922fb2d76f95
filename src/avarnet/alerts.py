"""Anomaly events from a per-segment score stream, and delivery of event records to a webhook.

The rule (:class:`AlertTracker`), applied to segments in order:

* **open**: an event opens when ``min_segments`` consecutive segments score at least
  ``threshold``. Its start is the start of the first segment of that run.
* **stay open**: once open, a segment scoring at least ``threshold - hysteresis`` (the close
  level) keeps the event open and resets the closing count, so a score dipping just under the
  threshold does not split one incident into many.
* **close**: the event closes after ``close_segments`` consecutive segments score below the close
  level. Its end is the end of the last segment before that run, i.e. the last one at or above the
  close level. At the end of a stream an open event closes at the end of the last segment.

An event's class is the anomaly class (any class but ``normal``) with the largest summed
probability over the event's segments; its peak is the highest score inside it.

A non-finite score (NaN, infinity) carries no evidence: it counts as a low segment (it never opens
or extends an event, and counts towards closing one); non-finite probabilities are not summed.

:class:`WebhookPoster` POSTs event records as JSON from a background thread with a bounded queue,
retrying failures with exponential back-off; it never blocks the caller. Credentials in the URL
(``https://user:pass@host/...``) are sent as HTTP Basic authorisation, never as part of the URL;
logs and statistics show only ``scheme://host[:port]/...``
(:func:`avarnet.redact.redact_endpoint`: no credentials, no path or query, where tokens live).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse, urlunparse

from .config import NORMAL_CLASS
from .errors import InvalidArgumentError
from .redact import redact, redact_endpoint

log = logging.getLogger("avarnet")

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SEGMENTS = 3  # 3 s of a 1-s segment timeline above the threshold opens an event
DEFAULT_HYSTERESIS = 0.1
DEFAULT_CLOSE_SEGMENTS = 2

WEBHOOK_QUEUE = 256  # records waiting for delivery; beyond this new records are dropped (counted)
WEBHOOK_ATTEMPTS = 5  # tries per record, the first included
WEBHOOK_BACKOFF_S = 0.5  # wait after the first failure; doubles after each further failure
WEBHOOK_MAX_BACKOFF_S = 30.0
WEBHOOK_TIMEOUT_S = 5.0  # per HTTP request
WEBHOOK_CLOSE_TIMEOUT_S = 10.0  # how long close() waits for pending deliveries


@dataclass(frozen=True)
class AlertRule:
    """When events open and close; see the module docstring for the exact rule."""

    threshold: float = DEFAULT_THRESHOLD
    min_segments: int = DEFAULT_MIN_SEGMENTS
    hysteresis: float = DEFAULT_HYSTERESIS
    close_segments: int = DEFAULT_CLOSE_SEGMENTS

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidArgumentError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.min_segments < 1 or self.close_segments < 1:
            raise InvalidArgumentError("min_segments and close_segments must be >= 1")
        if not 0 <= self.hysteresis < math.inf:
            raise InvalidArgumentError(f"hysteresis must be >= 0, got {self.hysteresis}")

    @property
    def close_level(self) -> float:
        return self.threshold - self.hysteresis


@dataclass
class AlertEvent:
    """One anomaly event; ``end`` is None while it is open. Times in seconds."""

    id: int
    start: float
    end: float | None
    peak_score: float
    peak_time: float  # start of the segment with the peak score
    segments: int = 0  # segments from start to the last one at or above the close level
    class_mass: dict[str, float] = field(
        default_factory=dict
    )  # summed probability per anomaly class
    closed_by: str | None = None  # "scores" | "end of stream"

    @property
    def label(self) -> str:
        if not self.class_mass:
            return "anomaly"
        return max(self.class_mass.items(), key=lambda kv: kv[1])[0]

    def record(self) -> dict:
        """The JSON record of this event (``state`` open or closed)."""
        return {
            "type": "event",
            "state": "open" if self.end is None else "closed",
            "id": self.id,
            "start": round(self.start, 6),
            "end": None if self.end is None else round(self.end, 6),
            "class": self.label,
            "peak_score": round(self.peak_score, 6),
            "peak_time": round(self.peak_time, 6),
            "segments": self.segments,
            "closed_by": self.closed_by,
        }


@dataclass(frozen=True)
class AlertUpdate:
    """What one segment changed: ``kind`` is "open" or "close"."""

    kind: str
    event: AlertEvent


class AlertTracker:
    """Feeds per-segment anomaly scores through an :class:`AlertRule`; keeps every event it made."""

    def __init__(self, rule: AlertRule | None = None) -> None:
        self.rule = rule or AlertRule()
        self.events: list[AlertEvent] = []
        self._open: AlertEvent | None = None
        self._run: list[
            tuple[float, float, float, Mapping[str, float]]
        ] = []  # pending high segments
        self._below = 0  # consecutive segments under the close level while open
        self._last_high_end = 0.0  # end of the last segment at or above the close level
        self._last_end = 0.0

    @property
    def current(self) -> AlertEvent | None:
        """The open event, if any."""
        return self._open

    def update(
        self,
        start: float,
        end: float,
        score: float,
        probabilities: Mapping[str, float] | None = None,
    ) -> list[AlertUpdate]:
        """Feed one segment [start, end) s with its anomaly score; returns the events it opened/closed."""
        self._last_end = end
        probabilities = probabilities or {}
        if not math.isfinite(score):
            score = -math.inf  # no evidence: a low segment
        if self._open is None:
            return self._while_idle(start, end, score, probabilities)
        return self._while_open(start, end, score, probabilities)

    def _while_idle(self, start, end, score, probabilities) -> list[AlertUpdate]:
        if score < self.rule.threshold:
            self._run.clear()
            return []
        self._run.append((start, end, score, probabilities))
        if len(self._run) < self.rule.min_segments:
            return []
        first = self._run[0]
        event = AlertEvent(
            id=len(self.events) + 1,
            start=first[0],
            end=None,
            peak_score=first[2],
            peak_time=first[0],
        )
        for seg in self._run:
            self._absorb(event, *seg)
        self._run.clear()
        self._open, self._below = event, 0
        self.events.append(event)
        return [AlertUpdate("open", event)]

    def _while_open(self, start, end, score, probabilities) -> list[AlertUpdate]:
        event = self._open
        assert event is not None
        if score >= self.rule.close_level:
            self._below = 0
            self._absorb(event, start, end, score, probabilities)
            return []
        self._below += 1
        if self._below < self.rule.close_segments:
            return []
        return [self._close(event, self._last_high_end, "scores")]

    def _absorb(self, event: AlertEvent, start, end, score, probabilities) -> None:
        event.segments += 1
        if score > event.peak_score:
            event.peak_score, event.peak_time = float(score), float(start)
        for name, p in probabilities.items():
            if name != NORMAL_CLASS and math.isfinite(p):
                event.class_mass[name] = event.class_mass.get(name, 0.0) + float(p)
        self._last_high_end = end

    def _close(self, event: AlertEvent, end: float, reason: str) -> AlertUpdate:
        event.end, event.closed_by = float(end), reason
        self._open, self._below = None, 0
        return AlertUpdate("close", event)

    def finish(self) -> list[AlertUpdate]:
        """Close an open event at the end of the last segment seen (end of stream)."""
        self._run.clear()
        if self._open is None:
            return []
        return [self._close(self._open, self._last_end, "end of stream")]


# ----------------------------------------------------------------------------- webhook


@dataclass
class WebhookStats:
    """What a :class:`WebhookPoster` did."""

    delivered: int = 0
    failed: int = 0  # gave up after every attempt failed (or closing cut retries short)
    dropped: int = 0  # not queued: the queue was full
    attempts: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


class WebhookPoster:
    """POSTs JSON records to ``url`` from a background thread; retries with exponential back-off.

    :meth:`post` only enqueues (never blocks; a full queue drops the record and counts it).
    :meth:`close` waits up to ``close_timeout_s`` for pending deliveries, then cuts retries short.
    """

    def __init__(
        self,
        url: str,
        *,
        attempts: int = WEBHOOK_ATTEMPTS,
        backoff_s: float = WEBHOOK_BACKOFF_S,
        max_backoff_s: float = WEBHOOK_MAX_BACKOFF_S,
        timeout_s: float = WEBHOOK_TIMEOUT_S,
        queue_size: int = WEBHOOK_QUEUE,
    ) -> None:
        self.url, self.headers = split_credentials(url)
        self.display_url = redact_endpoint(url)  # tokens often live in a webhook's path
        if attempts < 1:
            raise InvalidArgumentError("attempts must be >= 1")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.stats = WebhookStats()
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="avarnet-webhook", daemon=True)
        self._thread.start()

    def post(self, record: dict) -> bool:
        """Queue ``record`` for delivery; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.stats.dropped += 1
            log.warning("webhook queue full: an event record was dropped")
            return False
        return True

    def close(self, timeout_s: float | None = None) -> WebhookStats:
        """Deliver what is pending within ``timeout_s`` seconds (default
        ``WEBHOOK_CLOSE_TIMEOUT_S``, read at the call), then stop; returns the statistics."""
        if timeout_s is None:
            timeout_s = WEBHOOK_CLOSE_TIMEOUT_S
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        self._closing.set()
        try:
            self._queue.put_nowait(None)  # wakes the thread if it waits for work
        except queue.Full:
            pass
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + self.timeout_s)
        with self._lock:
            self.stats.failed += self._drain()
            return self.stats

    def _drain(self) -> int:
        """Count and discard records that were never tried."""
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return left
            left += item is not None
            self._queue.task_done()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                ok = self._deliver(item)
                with self._lock:
                    if ok:
                        self.stats.delivered += 1
                    else:
                        self.stats.failed += 1
            finally:
                self._queue.task_done()
            if self._closing.is_set() and self._queue.empty():
                return

    def _deliver(self, record: dict) -> bool:
        body = json.dumps(record).encode("utf-8")
        wait = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            with self._lock:
                self.stats.attempts += 1
            error = self._send(body)
            if error is None:
                return True
            with self._lock:
                self.stats.last_error = error
            if attempt == self.attempts:
                break
            log.warning(
                "webhook %s failed (%s); retry %d in %.1fs", self.display_url, error, attempt, wait
            )
            if self._closing.wait(
                wait
            ):  # closing cuts the back-off short: one last try, then give up
                return self._send(body) is None
            wait = min(wait * 2, self.max_backoff_s)
        log.warning(
            "webhook %s: giving up on a record after %d attempts (%s)",
            self.display_url,
            self.attempts,
            error,
        )
        return False

    def _send(self, body: bytes) -> str | None:
        """One POST; None on a 2xx answer, else a one-line reason."""
        headers = {"Content-Type": "application/json", **self.headers}
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
                return None
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = str(getattr(e, "reason", e)).replace(self.url, self.display_url)
            return f"{type(e).__name__}: {redact(reason)}"


def _parse_http_url(url: str):
    parsed = urlparse(url)
    try:
        parsed.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidArgumentError(f"webhook must be an http:// or https:// URL, got {redact(url)}")
    return parsed


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """(URL without ``user:pass@``, headers with HTTP Basic authorisation for those credentials)."""
    parsed = _parse_http_url(url)
    if parsed.username is None and parsed.password is None:
        return url, {}
    netloc = parsed.hostname if ":" not in parsed.hostname else f"[{parsed.hostname}]"
    if parsed.port:
        netloc += f":{parsed.port}"
    plain = urlunparse(parsed._replace(netloc=netloc))
    pair = f"{unquote(parsed.username or '')}:{unquote(parsed.password or '')}"
    if parsed.scheme == "http":
        log.warning(
            "webhook %s: credentials are sent unencrypted over http://", redact_endpoint(url)
        )
    return plain, {
        "Authorization": "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    }
