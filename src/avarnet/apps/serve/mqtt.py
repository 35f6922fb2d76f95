"""MQTT output (paho-mqtt), in the conventions Frigate set so Home Assistant and Node-RED take it.

Topics (prefix ``avarnet`` by default):

* ``avarnet/available`` -- ``online`` / ``offline`` (retained; ``offline`` is also the last will)
* ``avarnet/events`` -- JSON ``{"type": "new"|"update"|"end", "before": {...}, "after": {...}}``
* ``avarnet/<camera>/anomaly`` -- JSON per segment: score, label, top probabilities
* ``avarnet/<camera>/state`` -- JSON (retained): connection status, current label and score

Event messages go through the outbox table of the event database: written there first, deleted
only once the broker acknowledged them (QoS 1), published strictly in order by one thread. While
the broker is unreachable they wait on disk (across restarts too), so none is lost. An
acknowledgement counts only for the very message it answers (paho's message object, never a bare
message id: ids wrap after 65,535 publishes). Segment and state messages are live values: they are
sent when connected and skipped otherwise (the retained state of every camera is sent again on
each reconnection). Published state never carries credentials (sources and errors are redacted).

The outbox thread survives any error: it is logged once, :attr:`MqttPublisher.error` says why
until a later pass works, and the thread carries on.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time

import paho.mqtt.client as mqtt

from ...redact import redact, redact_secrets
from .config import MqttConfig
from .events import EventStore
from .publisher import Publisher

log = logging.getLogger("avarnet")

ACK_TIMEOUT_S = 10.0  # per message, while connected
FLUSH_TIMEOUT_S = 10.0  # on shutdown: how long to wait for the outbox to empty
ERROR_PAUSE_S = 1.0  # after an error in the outbox thread, before it tries again
OFFLINE_WAIT_S = 3.0  # on close: how long to wait for the broker to take ``offline``


def _clean(value):
    """``value`` with every string redacted (payloads may quote a camera source or an error)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class MqttPublisher(Publisher):
    """Connection with reconnect (paho's loop thread) + an outbox thread publishing in order."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig, store: EventStore) -> None:
        self.cfg = cfg
        self.store = store
        self.prefix = cfg.topic_prefix
        self.available_topic = f"{self.prefix}/available"
        self.events_topic = f"{self.prefix}/events"
        self.connected = threading.Event()
        self.published = 0
        self.last_error: str | None = None
        self.thread_errors = 0  # errors the outbox thread survived
        self._error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()
        # the one outbox message waiting for its acknowledgement: (message id, paho's info)
        self._waiting: tuple[int, mqtt.MQTTMessageInfo] | None = None
        self._acked_cond = threading.Condition()
        self._connected_at = 0.0
        self._started = False
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv311
        )
        client.will_set(self.available_topic, "offline", qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.ca_certs, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(cfg.reconnect_max_s)))
        client.suppress_exceptions = True  # a failing callback never ends paho's network thread
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self._thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._outbox_loop, name="avarnet-mqtt", daemon=True)

    def start(self) -> None:
        self._started = True
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        self._thread.start()

    def _secret(self, text: object) -> str:
        return redact_secrets(text, [self.cfg.password or ""])

    # -- paho callbacks (paho's thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.warning("mqtt: %s", self.last_error)
            return
        log.info("mqtt: connected to %s:%d", self.cfg.host, self.cfg.port)
        client.publish(self.available_topic, "online", qos=1, retain=True)
        with self._lock:
            states = dict(self._states)
        for topic, payload in states.items():
            client.publish(topic, payload, qos=1, retain=True)
        self._connected_at = time.monotonic()
        self.connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if self.connected.is_set():
            log.warning("mqtt: disconnected (%s); reconnecting", reason_code)
        self.connected.clear()
        self.last_error = f"disconnected: {reason_code}"
        with self._acked_cond:
            self._acked_cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        # Only wakes the outbox thread when the id is the one it waits for; whether that message
        # was acknowledged is read from its own info object, so a reused id cannot answer for it.
        with self._acked_cond:
            if self._waiting is not None and self._waiting[0] == mid:
                self._acked_cond.notify_all()

    # -- any thread

    def event(
        self, kind: str, before: dict | None, after: dict, record: dict | None = None
    ) -> None:
        """Queue an ``events`` message (persisted first)."""
        payload = json.dumps(
            _clean({"type": kind, "before": before or after, "after": after}), allow_nan=False
        )
        self.store.enqueue(self.events_topic, payload, qos=1, retain=False)
        self._wake.set()

    def anomaly(self, camera: str, payload: dict) -> None:
        if self.connected.is_set():
            self.client.publish(
                f"{self.prefix}/{camera}/anomaly", json.dumps(payload, allow_nan=False), qos=0
            )

    def state(self, camera: str, payload: dict) -> None:
        topic = f"{self.prefix}/{camera}/state"
        text = self._secret(json.dumps(_clean(payload), allow_nan=False))
        with self._lock:
            self._states[topic] = text
        if self.connected.is_set():
            self.client.publish(topic, text, qos=1, retain=True)

    def enqueue(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> None:
        """Queue any message through the outbox (persisted first, sent in order, kept until
        acknowledged), as event messages are."""
        self.store.enqueue(topic, payload, qos=qos, retain=retain)
        self._wake.set()

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> bool:
        """Send a live value now if connected (skipped otherwise); True when paho took it."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # -- outbox thread

    def _outbox_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._drain()
            except Exception as e:  # noqa: BLE001 - the thread must go on
                self._failed(e)
                self._stop.wait(ERROR_PAUSE_S)
                self._wake.set()
            else:
                if self._error is not None:
                    self._error = None
                    log.info("mqtt: outbox works again")

    def _failed(self, e: BaseException) -> None:
        reason = self._secret(f"{type(e).__name__}: {' '.join(str(e).split())}")
        first = self._error is None
        self._error = f"outbox failed: {reason}"
        self.thread_errors += 1
        if first:
            log.error("mqtt: outbox failed (%s); carrying on", reason)

    def _drain(self) -> None:
        while self.connected.is_set() and not self._stop.is_set():
            batch = self.store.pending(50)
            if not batch:
                return
            for msg in batch:
                if not self._send(msg):
                    return
                self.store.delivered(msg.seq)
                self.published += 1

    def _publish(self, msg) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            # paho keeps the message and sends it once connected: wait for it like any other
            info.rc = mqtt.MQTT_ERR_SUCCESS
        with self._acked_cond:
            self._waiting = (info.mid, info)
        return info

    @staticmethod
    def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool | None:
        """True once the broker acknowledged this very message; None when paho refused it."""
        try:
            return info.is_published()
        except (RuntimeError, ValueError):
            return None

    def _send(self, msg) -> bool:
        """Publish one message and wait for the broker's acknowledgement (PUBACK).

        paho keeps a QoS-1 message that was in flight when the connection dropped and sends it
        again after reconnecting, so we keep waiting for the same message; only when it is still
        unacknowledged ACK_TIMEOUT_S after a reconnection is it published anew.
        """
        info = self._publish(msg)
        sent_at = time.monotonic()
        try:
            while not self._stop.is_set():
                done = self._acknowledged(info)
                if done:
                    return True
                if done is None:  # not taken by paho (its queue is full): try again shortly
                    if not self.connected.is_set() or self._stop.wait(0.2):
                        return False
                    info = self._publish(msg)
                    sent_at = time.monotonic()
                    continue
                with self._acked_cond:
                    self._acked_cond.wait(0.2)
                if (
                    self.connected.is_set()
                    and time.monotonic() - max(sent_at, self._connected_at) > ACK_TIMEOUT_S
                ):
                    log.warning(
                        "mqtt: no acknowledgement for message %d; publishing it again", msg.seq
                    )
                    info = self._publish(msg)
                    sent_at = time.monotonic()
            return False
        finally:
            with self._acked_cond:
                self._waiting = None

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> int:
        """Wait until the outbox is empty (broker reachable) or ``timeout_s``; returns messages left."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self.store.outbox_size() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        return self.store.outbox_size()

    def close(self) -> None:
        """Publish ``offline`` (when connected) and disconnect; the outbox keeps what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=ACK_TIMEOUT_S)
        if self.connected.is_set():
            with self._lock:
                states = dict(self._states)
            for topic, payload in states.items():
                self.client.publish(topic, payload, qos=1, retain=True)
            info = self.client.publish(self.available_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=OFFLINE_WAIT_S)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    # -- health

    @property
    def error(self) -> str | None:
        """Why the outbox is not working (its thread failed or stopped), else None."""
        if self._started and not self._stop.is_set() and not self._thread.is_alive():
            # cannot happen short of a BaseException in the thread; start it again all the same
            self._failed(RuntimeError("the outbox thread stopped"))
            self._thread = self._new_thread()
            self._thread.start()
        return self._error

    def stats(self) -> dict:
        return {
            "connected": self.connected.is_set(),
            "published": self.published,
            "outbox": self.store.outbox_size(),
            "last_error": None if self.last_error is None else self._secret(self.last_error),
            "error": self._error,
            "thread_errors": self.thread_errors,
        }
