"""MQTT output (paho-mqtt), in the conventions Frigate set so Home Assistant and Node-RED take it.

Topics (prefix ``avarnet`` by default):

* ``avarnet/available`` -- ``online`` / ``offline`` (retained; ``offline`` is also the last will)
* ``avarnet/events`` -- JSON ``{"type": "new"|"update"|"end", "before": {...}, "after": {...}}``
* ``avarnet/<camera>/anomaly`` -- JSON per segment: score, label, top probabilities
* ``avarnet/<camera>/state`` -- JSON (retained): connection status, current label and score

Event messages go through the outbox table of the event database: written there first, deleted
only once the broker acknowledged them (QoS 1), published strictly in order by one thread. While
the broker is unreachable they wait on disk (across restarts too), so none is lost. Segment and
state messages are live values: they are sent when connected and skipped otherwise (the retained
state of every camera is sent again on each reconnection).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time

import paho.mqtt.client as mqtt

from .config import MqttConfig
from .events import EventStore

log = logging.getLogger("avarnet")

ACK_TIMEOUT_S = 10.0  # per message, while connected
FLUSH_TIMEOUT_S = 10.0  # on shutdown: how long to wait for the outbox to empty


class MqttPublisher:
    """Connection with reconnect (paho's loop thread) + an outbox thread publishing in order."""

    def __init__(self, cfg: MqttConfig, store: EventStore) -> None:
        self.cfg = cfg
        self.store = store
        self.prefix = cfg.topic_prefix
        self.available_topic = f"{self.prefix}/available"
        self.events_topic = f"{self.prefix}/events"
        self.connected = threading.Event()
        self.published = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()
        self._acked: set[int] = set()
        self._acked_cond = threading.Condition()
        self._connected_at = 0.0
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv311
        )
        client.will_set(self.available_topic, "offline", qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.ca_certs, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(cfg.reconnect_max_s)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self._thread = threading.Thread(target=self._outbox_loop, name="avarnet-mqtt", daemon=True)

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        self._thread.start()

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

    # -- any thread

    def event(self, kind: str, before: dict | None, after: dict) -> None:
        """Queue an ``events`` message (persisted first)."""
        payload = json.dumps(
            {"type": kind, "before": before or after, "after": after}, allow_nan=False
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
        text = json.dumps(payload, allow_nan=False)
        with self._lock:
            self._states[topic] = text
        if self.connected.is_set():
            self.client.publish(topic, text, qos=1, retain=True)

    # -- outbox thread

    def _outbox_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            self._drain()

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

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._acked_cond:
            self._acked.add(mid)
            self._acked_cond.notify_all()

    def _send(self, msg) -> bool:
        """Publish one message and wait for the broker's acknowledgement (PUBACK).

        paho keeps a QoS-1 message that was in flight when the connection dropped and sends it
        again after reconnecting, so we keep waiting for the same message id; only when it is
        still unacknowledged ACK_TIMEOUT_S after a reconnection is it published anew.
        """
        info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        sent_at = time.monotonic()
        while not self._stop.is_set():
            with self._acked_cond:
                if info.mid in self._acked:
                    self._acked.discard(info.mid)
                    return True
                self._acked_cond.wait(0.2)
            if (
                self.connected.is_set()
                and time.monotonic() - max(sent_at, self._connected_at) > ACK_TIMEOUT_S
            ):
                log.warning("mqtt: no acknowledgement for message %d; publishing it again", msg.seq)
                info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
                sent_at = time.monotonic()
        return False

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
        self._thread.join(timeout=ACK_TIMEOUT_S)
        if self.connected.is_set():
            with self._lock:
                states = dict(self._states)
            for topic, payload in states.items():
                self.client.publish(topic, payload, qos=1, retain=True)
            info = self.client.publish(self.available_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=3.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
