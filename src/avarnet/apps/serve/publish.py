"""The server's outputs behind one interface: :class:`Publishers` fans every call out to the
configured publishers (MQTT, webhook, ...) and keeps one failing publisher from reaching the
server's threads.

Every call is guarded: an exception in a publisher is logged once (per publisher and method, until
that method succeeds again), recorded in :attr:`Publishers.errors`, and never raised. A publisher
whose own delivery thread failed says so through :attr:`Publisher.error`; either makes the server
unhealthy (:attr:`Publishers.healthy`) until it recovers.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from ...alerts import WebhookPoster
from ...redact import redact
from .config import ServeConfig
from .events import EventStore
from .publisher import Publisher

log = logging.getLogger("avarnet")

__all__ = ["Publisher", "Publishers", "WebhookPublisher", "build_publishers"]


def _reason(e: BaseException) -> str:
    """One line, without credentials, for an exception."""
    text = " ".join(str(e).split())
    return redact(f"{type(e).__name__}: {text}" if text else type(e).__name__)


class Publishers(Publisher):
    """Fan-out over ``publishers``; see the module docstring for the guarantees."""

    name = "publishers"

    def __init__(self, publishers: list[Publisher] | None = None) -> None:
        self.publishers: list[Publisher] = list(publishers or [])
        self._lock = threading.Lock()
        self._failing: dict[tuple[str, str], str] = {}  # (publisher, method) -> reason
        self.failures = 0  # calls that raised, over the whole run

    def add(self, publisher: Publisher) -> None:
        self.publishers.append(publisher)

    def _call(self, method: str, *args, only: list[Publisher] | None = None) -> list:
        results = []
        for p in self.publishers if only is None else only:
            key = (p.name, method)
            try:
                results.append(getattr(p, method)(*args))
            except Exception as e:  # noqa: BLE001 - one publisher never stops the others
                reason = _reason(e)
                with self._lock:
                    first = key not in self._failing
                    self._failing[key] = reason
                    self.failures += 1
                if first:
                    log.error("%s: %s failed (%s); carrying on", p.name, method, reason)
                results.append(None)
            else:
                if key in self._failing:
                    with self._lock:
                        self._failing.pop(key, None)
                    log.info("%s: %s works again", p.name, method)
        return results

    # -- the Publisher interface, fanned out

    def start(self) -> None:
        self._call("start")

    def event(
        self, kind: str, before: dict | None, after: dict, record: dict | None = None
    ) -> None:
        self._call("event", kind, before, after, record)

    def anomaly(self, camera: str, payload: dict) -> None:
        self._call("anomaly", camera, payload)

    def state(self, camera: str, payload: dict) -> None:
        self._call("state", camera, payload)

    def cameras(self, cameras: list[dict]) -> None:
        self._call("cameras", cameras)

    def flush(self, timeout_s: float) -> int:
        """Flush each publisher within one shared deadline; the messages left, summed."""
        deadline = time.monotonic() + timeout_s
        left = 0
        for p in self.publishers:
            n = self._call("flush", max(0.0, deadline - time.monotonic()), only=[p])[0]
            left += int(n or 0)
        return left

    def close(self) -> None:
        self._call("close")

    # -- health

    @property
    def errors(self) -> dict[str, str]:
        """Publisher name -> why it is unhealthy now (a failing call or a failed thread)."""
        out: dict[str, str] = {}
        with self._lock:
            for (name, method), reason in self._failing.items():
                out.setdefault(name, f"{method}: {reason}")
        for p in self.publishers:
            try:
                err = p.error
            except Exception as e:  # noqa: BLE001
                err = _reason(e)
            if err and p.name not in out:
                out[p.name] = redact(err)
        return out

    @property
    def error(self) -> str | None:
        errors = self.errors
        return "; ".join(f"{k}: {v}" for k, v in errors.items()) if errors else None

    @property
    def healthy(self) -> bool:
        return not self.errors

    def stats(self) -> dict:
        """``{"healthy", "errors", "failures", <publisher name>: its stats, ...}``."""
        out: dict = {"healthy": self.healthy, "errors": self.errors, "failures": self.failures}
        for p, s in zip(self.publishers, self._call("stats"), strict=True):
            if s is not None:
                out[p.name] = s
        return out

    def get(self, name: str) -> Publisher | None:
        """The publisher called ``name``, if configured."""
        return next((p for p in self.publishers if p.name == name), None)


class _GuardedPoster(WebhookPoster):
    """A :class:`WebhookPoster` whose delivery thread survives anything one record raises:
    the record counts as failed, the failure is reported once, the thread goes on."""

    def __init__(self, url: str, owner: WebhookPublisher, **kwargs) -> None:
        self._owner = owner
        super().__init__(url, **kwargs)

    def _deliver(self, record: dict) -> bool:
        try:
            ok = super()._deliver(record)
        except Exception as e:  # noqa: BLE001 - the thread must go on
            self._owner.thread_failed(e)
            return False
        self._owner.thread_ok()
        return ok

    def pending(self) -> int:
        """Records queued or being delivered."""
        return int(self._queue.unfinished_tasks)

    def counters(self) -> dict:
        with self._lock:
            return self.stats.to_dict()


class WebhookPublisher(Publisher):
    """Event records POSTed to a URL: the alert record (with camera, event id and start time) when
    an event opens, the event (``"state": "closed"``) when it ends."""

    name = "webhook"

    def __init__(self, url: str, **poster_options) -> None:
        self._error: str | None = None
        self._lock = threading.Lock()
        self.thread_errors = 0
        self.poster = _GuardedPoster(url, self, **poster_options)

    def event(
        self, kind: str, before: dict | None, after: dict, record: dict | None = None
    ) -> None:
        if kind == "new" and record is not None:
            body = dict(
                record, camera=after["camera"], event_id=after["id"], start_time=after["start_time"]
            )
        elif kind == "end":
            body = {"type": "event", "state": "closed", **after}
        else:
            return
        # plain JSON values only, so nothing can fail later in the delivery thread
        self.poster.post(json.loads(json.dumps(body, default=str)))

    def flush(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.poster.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.poster.pending()

    def close(self) -> None:
        self.poster.close()

    def stats(self) -> dict:
        out = self.poster.counters()
        out["url"] = self.poster.display_url
        out["thread_errors"] = self.thread_errors
        if out.get("last_error"):
            out["last_error"] = redact(out["last_error"])
        return out

    @property
    def error(self) -> str | None:
        return self._error

    # -- from the delivery thread

    def thread_failed(self, e: BaseException) -> None:
        reason = _reason(e).replace(self.poster.url, self.poster.display_url)
        with self._lock:
            first = self._error is None
            self._error = f"delivery failed: {reason}"
            self.thread_errors += 1
        if first:
            log.error(
                "webhook %s: delivery failed (%s); carrying on", self.poster.display_url, reason
            )

    def thread_ok(self) -> None:
        if self._error is not None:
            with self._lock:
                self._error = None
            log.info("webhook %s: delivering again", self.poster.display_url)


def build_publishers(config: ServeConfig, store: EventStore) -> Publishers:
    """The publishers ``config`` asks for (not started)."""
    publishers = Publishers()
    if config.mqtt is not None:
        from .homeassistant import homeassistant_publishers
        from .mqtt import MqttPublisher  # paho is only needed when MQTT is configured

        mqtt = MqttPublisher(config.mqtt, store)
        publishers.add(mqtt)
        for p in homeassistant_publishers(config, mqtt):  # discovery, reviews (on the same link)
            publishers.add(p)
    if config.webhook:
        publishers.add(WebhookPublisher(config.webhook))
    return publishers
