"""The server's publishers against a real mosquitto and a real HTTP endpoint: the outbox never
drops an unacknowledged event message (message ids wrap), threads survive errors and say so,
one failing publisher never reaches the server, and published state carries no credentials."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import serve_support as ss

from avarnet.apps.serve.config import MqttConfig
from avarnet.apps.serve.events import EventStore
from avarnet.apps.serve.mqtt import MqttPublisher


@pytest.fixture
def broker(tmp_path):
    b = ss.Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def mqtt_config(broker, **kw) -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1",
        port=broker.port,
        keepalive=5,
        reconnect_max_s=1,
        client_id=kw.pop("client_id", "avarnet-test"),
        **kw,
    )


def started(cfg: MqttConfig, store: EventStore) -> MqttPublisher:
    pub = MqttPublisher(cfg, store)
    pub.start()
    assert pub.connected.wait(10), "no connection to the broker"
    return pub


def payload(event_id: str, end=None) -> dict:
    return {"id": event_id, "camera": "yard", "label": "crash", "start_time": 1.0, "end_time": end}


def test_a_reused_message_id_never_acknowledges_an_event_message(tmp_path, broker):
    """paho numbers messages 1..65535 and starts again; a live (QoS 0) message once sent under the
    id an event message now has must not count as the broker acknowledging the event."""
    store = EventStore(tmp_path / "events.db")
    sub = ss.Subscriber(broker.port, client_id="s4-before", clean=True)
    assert sub.subscribed.wait(10)
    pub = started(mqtt_config(broker), store)

    def anomalies(n: int, start: int) -> None:
        for i in range(start, start + n):
            pub.anomaly("yard", {"segment": i})
        sub.wait(lambda: len(sub.topic("avarnet/yard/anomaly")) >= start + n, 10, "anomalies")

    anomalies(20, 0)  # ids 2..21 (1 was "online")
    pub.client._last_mid = 65535 - 5  # ... and a day of segments later the ids wrap:
    anomalies(10, 20)  # 65531..65535, 1..5: the event message gets id 6, once an anomaly's
    sub.close()

    os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker takes the message but never answers
    try:
        pub.event("new", None, payload("ev-1"))
        time.sleep(1.0)
        assert store.outbox_size() == 1, "an unacknowledged event message was dropped"
    finally:
        os.kill(broker.proc.pid, signal.SIGKILL)  # ... and dies with it
        broker.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while pub.connected.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.close()
    assert store.outbox_size() == 1

    # the next start delivers it
    broker.proc = None
    broker.start()
    sub = ss.Subscriber(broker.port, client_id="s4-after", clean=True)
    assert sub.subscribed.wait(10)
    pub = started(mqtt_config(broker, client_id="avarnet-again"), store)
    try:
        sub.wait(lambda: sub.events(), 10, "the event message")
        assert pub.flush(5) == 0
        time.sleep(0.2)
        assert [e["after"]["id"] for e in sub.events()] == ["ev-1"]
    finally:
        pub.close()
        sub.close()
        store.close()


def test_the_outbox_thread_survives_an_error_and_reports_it(tmp_path, broker, caplog):
    store = EventStore(tmp_path / "events.db")
    sub = ss.Subscriber(broker.port, client_id="survive", clean=True)
    assert sub.subscribed.wait(10)
    real_pending = store.pending
    calls = {"n": 0}
    release = threading.Event()

    def failing_pending(limit=100):
        calls["n"] += 1
        if not release.is_set():
            raise OSError("read failed for rtsp://admin:hunter2@10.0.0.5/live")
        return real_pending(limit)

    store.pending = failing_pending
    pub = started(mqtt_config(broker), store)
    try:
        with caplog.at_level(logging.INFO, logger="avarnet"):
            pub.event("new", None, payload("ev-1"))
            ss.wait_for(lambda: calls["n"] >= 3, 10, "the outbox thread trying again")
            from avarnet.apps.serve.publish import Publishers

            pubs = Publishers([pub])
            assert not pubs.healthy
            assert "outbox failed" in pubs.errors["mqtt"]
            assert "hunter2" not in json.dumps(pubs.stats())
            assert pubs.stats()["mqtt"]["thread_errors"] >= 3
            release.set()
            sub.wait(lambda: sub.events(), 10, "the event message after the error")
            ss.wait_for(lambda: pubs.healthy, 5, "healthy again")
        failures = [r for r in caplog.records if "outbox failed" in r.getMessage()]
        assert len(failures) == 1  # logged once, however often it failed
        assert "hunter2" not in caplog.text
        assert "outbox works again" in caplog.text
        assert [e["after"]["id"] for e in sub.events()] == ["ev-1"]
    finally:
        pub.close()
        sub.close()
        store.close()


def test_published_state_never_carries_credentials(tmp_path, broker):
    store = EventStore(tmp_path / "events.db")
    sub = ss.Subscriber(broker.port, client_id="creds", clean=True)
    assert sub.subscribed.wait(10)
    cfg = mqtt_config(broker, username="avarnet", password="brokerpw-123")
    pub = MqttPublisher(cfg, store)
    pub.start()
    try:
        # the broker allows anonymous clients and ignores the credentials
        assert pub.connected.wait(10)
        pub.state(
            "gate",
            {
                "camera": "gate",
                "status": "reconnecting",
                "error": "rtsp://admin:hunter2@10.0.0.5/stream: Connection refused",
                "source": "rtsp://admin:hunter2@10.0.0.5/stream?token=abc123",
                "detail": ["auth failed for brokerpw-123"],
            },
        )
        pub.event("end", payload("ev-2"), dict(payload("ev-2"), note="http://u:hunter2@h/x"))
        sub.wait(lambda: sub.topic("avarnet/gate/state") and sub.events(), 10, "state and event")
        text = json.dumps(sub.messages)
        assert "hunter2" not in text and "abc123" not in text and "brokerpw-123" not in text
        state = json.loads(sub.topic("avarnet/gate/state")[-1][0])
        assert state["error"].startswith("rtsp://admin:***@10.0.0.5/stream")
        pub.last_error = "refused: password brokerpw-123"
        assert "brokerpw-123" not in json.dumps(pub.stats())
    finally:
        pub.close()
        sub.close()
        store.close()


class _Recorder:
    """A Publisher that records calls and raises in the methods it is told to."""

    def __init__(self, name: str, failing: set[str]) -> None:
        from avarnet.apps.serve.publish import Publisher

        class P(Publisher):
            pass

        self.p = P()
        self.p.name = name
        self.calls: list[str] = []
        self.failing = failing
        for method in ("start", "event", "anomaly", "state", "cameras", "flush", "close"):
            setattr(self.p, method, self._make(method))

    def _make(self, method):
        def call(*args):
            self.calls.append(method)
            if method in self.failing:
                raise RuntimeError(f"{method} broke at http://user:secret99@hook/x")
            return 2 if method == "flush" else None

        return call


def test_one_failing_publisher_never_reaches_the_server(caplog):
    from avarnet.apps.serve.publish import Publishers

    bad = _Recorder("bad", {"anomaly", "event"})
    good = _Recorder("good", set())
    pubs = Publishers([bad.p, good.p])
    with caplog.at_level(logging.INFO, logger="avarnet"):
        pubs.start()
        for i in range(5):
            pubs.anomaly("yard", {"segment": i})
        pubs.event("new", None, payload("e"), {"type": "event"})
        assert good.calls.count("anomaly") == 5 and "event" in good.calls
        assert not pubs.healthy
        assert set(pubs.errors) == {"bad"} and "secret99" not in pubs.errors["bad"]
        stats = pubs.stats()
        assert stats["healthy"] is False and stats["failures"] == 6
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(logged) == 2  # once per publisher and method, not once per call
        assert all("secret99" not in line for line in logged)
        bad.failing.clear()
        pubs.anomaly("yard", {"segment": 9})
        assert not pubs.healthy  # its last event call still failed
        pubs.event("end", payload("e"), payload("e", end=2.0))
        assert pubs.healthy and pubs.errors == {}
    assert pubs.flush(1.0) == 4  # each publisher's undelivered messages, summed
    pubs.close()
    assert bad.calls[-1] == good.calls[-1] == "close"


class _Hook:
    """An HTTP endpoint recording JSON bodies; the first ``garbage`` requests get a reply that
    is not HTTP at all."""

    def __init__(self, garbage: int) -> None:
        self.bodies: list[dict] = []
        self.garbage = garbage
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.garbage > 0:
                    hook.garbage -= 1
                    self.wfile.write(b"GARBAGE\r\n\r\n")
                    return
                hook.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://hookuser:hookpass@127.0.0.1:{self.server.server_address[1]}/h"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_posts_the_event_records_and_survives_a_broken_endpoint(caplog):
    from avarnet.apps.serve.publish import Publishers, WebhookPublisher

    hook = _Hook(garbage=1)
    web = WebhookPublisher(hook.url, attempts=1, backoff_s=0.01)
    pubs = Publishers([web])
    record = {"type": "event", "state": "open", "id": 3, "class": "crash", "peak_score": 0.9}
    opened = dict(payload("ev-9"), start_time=1234.5)
    closed = dict(opened, end_time=1240.0)
    try:
        with caplog.at_level(logging.INFO, logger="avarnet"):
            pubs.event("new", None, opened, record)  # the endpoint answers garbage
            ss.wait_for(lambda: not pubs.healthy, 10, "the failure reported")
            assert "delivery failed" in pubs.errors["webhook"]
            pubs.event("update", opened, opened)  # nothing to post
            pubs.event("new", None, opened, record)
            pubs.event("end", opened, closed)
            ss.wait_for(lambda: len(hook.bodies) == 2, 10, "records after the failure")
            assert pubs.flush(5) == 0
            assert pubs.healthy
        assert hook.bodies[0] == dict(record, camera="yard", event_id="ev-9", start_time=1234.5)
        assert hook.bodies[1] == {"type": "event", "state": "closed", **closed}
        stats = pubs.stats()["webhook"]
        assert stats["delivered"] == 2 and stats["failed"] == 1 and stats["thread_errors"] == 1
        assert "hookpass" not in json.dumps(stats) and "hookpass" not in caplog.text
        assert len([r for r in caplog.records if "delivery failed" in r.getMessage()]) == 1
    finally:
        pubs.close()
        hook.close()
