"""Alert events from scripted score sequences, and webhook delivery against a local HTTP server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from avarnet.alerts import AlertRule, AlertTracker, WebhookPoster


def feed(tracker: AlertTracker, scores, probs=None) -> list[tuple[str, int, float, float | None]]:
    """Feed 1-s segments; returns (kind, event id, start, end) per opened/closed event."""
    out = []
    for t, s in enumerate(scores):
        for u in tracker.update(float(t), float(t + 1), s, probs[t] if probs else None):
            out.append((u.kind, u.event.id, u.event.start, u.event.end))
    for u in tracker.finish():
        out.append((u.kind, u.event.id, u.event.start, u.event.end))
    return out


RULE = AlertRule(threshold=0.5, min_segments=3, hysteresis=0.1, close_segments=2)


def test_opens_after_min_segments_and_starts_at_the_first_high_segment():
    changes = feed(AlertTracker(RULE), [0.1, 0.6, 0.7, 0.8, 0.2, 0.1, 0.1])
    assert changes == [("open", 1, 1.0, None), ("close", 1, 1.0, 4.0)]


def test_short_bursts_below_min_segments_never_open():
    assert feed(AlertTracker(RULE), [0.9, 0.9, 0.1, 0.9, 0.9, 0.2, 0.95, 0.1]) == []


def test_exactly_threshold_counts_as_high():
    assert feed(AlertTracker(RULE), [0.5, 0.5, 0.5, 0.0, 0.0])[0] == ("open", 1, 0.0, None)


def test_hysteresis_keeps_one_event_through_a_dip():
    # 0.45 is under the threshold but above the close level 0.4: the event stays open
    scores = [0.6, 0.6, 0.6, 0.45, 0.42, 0.7, 0.3, 0.3, 0.1]
    changes = feed(AlertTracker(RULE), scores)
    assert changes == [("open", 1, 0.0, None), ("close", 1, 0.0, 6.0)]


def test_a_single_low_segment_does_not_close_when_close_segments_is_two():
    scores = [0.6, 0.6, 0.6, 0.2, 0.6, 0.2, 0.2, 0.2]
    assert feed(AlertTracker(RULE), scores) == [("open", 1, 0.0, None), ("close", 1, 0.0, 5.0)]


def test_without_hysteresis_a_dip_splits_the_incident():
    rule = AlertRule(threshold=0.5, min_segments=2, hysteresis=0.0, close_segments=1)
    changes = feed(AlertTracker(rule), [0.6, 0.6, 0.45, 0.6, 0.6, 0.1])
    assert [c[0] for c in changes] == ["open", "close", "open", "close"]
    assert changes[1] == ("close", 1, 0.0, 2.0) and changes[2] == ("open", 2, 3.0, None)


def test_end_of_stream_closes_an_open_event():
    tracker = AlertTracker(RULE)
    changes = feed(tracker, [0.9] * 5)
    assert changes == [("open", 1, 0.0, None), ("close", 1, 0.0, 5.0)]
    assert tracker.events[0].closed_by == "end of stream"


def test_event_record_has_class_and_peak():
    probs = [
        {"normal": 0.2, "crash": 0.5, "pain": 0.3},
        {"normal": 0.1, "crash": 0.2, "pain": 0.7},
        {"normal": 0.3, "crash": 0.1, "pain": 0.6},
        {"normal": 0.9, "crash": 0.05, "pain": 0.05},
        {"normal": 0.9, "crash": 0.05, "pain": 0.05},
    ]
    tracker = AlertTracker(RULE)
    feed(tracker, [1 - p["normal"] for p in probs], probs)
    record = tracker.events[0].record()
    assert record["class"] == "pain" and record["state"] == "closed"
    assert record["peak_score"] == pytest.approx(0.9) and record["peak_time"] == 1.0
    assert (record["start"], record["end"], record["segments"]) == (0.0, 3.0, 3)


@pytest.mark.parametrize("bad", [dict(threshold=1.5), dict(min_segments=0), dict(hysteresis=-0.1)])
def test_rule_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        AlertRule(**bad)


# --------------------------------------------------------------------------------- webhook


class _FlakyHandler(BaseHTTPRequestHandler):
    """Answers 500 to the first ``fail_first`` POSTs, then 200; records every body it got."""

    def do_POST(self):  # noqa: N802 (http.server naming)
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with server.lock:
            server.requests += 1
            failing = server.requests <= server.fail_first
            if not failing:
                server.bodies.append(json.loads(body))
        self.send_response(500 if failing else 200)
        self.end_headers()

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def flaky_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    server.lock, server.requests, server.bodies, server.fail_first = threading.Lock(), 0, [], 2
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_retries_with_backoff_until_delivered(flaky_server):
    url = f"http://127.0.0.1:{flaky_server.server_address[1]}/hook"
    poster = WebhookPoster(url, attempts=4, backoff_s=0.05, timeout_s=2.0)
    record = {"type": "event", "state": "closed", "id": 1, "class": "crash", "peak_score": 0.9}
    t0 = time.monotonic()
    assert poster.post(record)
    assert time.monotonic() - t0 < 0.05  # post() only queues
    stats = poster.close(timeout_s=5.0)
    assert stats.delivered == 1 and stats.failed == 0 and stats.attempts == 3
    assert flaky_server.requests == 3 and flaky_server.bodies == [record]
    assert stats.last_error == "HTTP 500"


def test_webhook_gives_up_after_bounded_attempts_and_never_blocks(flaky_server):
    flaky_server.fail_first = 100
    url = f"http://127.0.0.1:{flaky_server.server_address[1]}/hook"
    poster = WebhookPoster(url, attempts=3, backoff_s=0.02, timeout_s=1.0)
    for i in range(3):
        assert poster.post({"id": i})
    stats = poster.close(timeout_s=5.0)
    assert stats.delivered == 0 and stats.failed == 3 and stats.attempts == 9


def test_webhook_to_a_closed_port_fails_quietly():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    poster = WebhookPoster(f"http://127.0.0.1:{port}/", attempts=2, backoff_s=0.01, timeout_s=0.5)
    poster.post({"id": 1})
    stats = poster.close(timeout_s=3.0)
    assert stats.failed == 1 and stats.delivered == 0 and "URLError" in stats.last_error


def test_webhook_queue_is_bounded():
    import socket

    with socket.socket() as silent:  # accepts connections into its backlog, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        poster = WebhookPoster(url, attempts=1, timeout_s=0.5, queue_size=2)
        results = [poster.post({"id": i}) for i in range(10)]
        stats = poster.close(timeout_s=0.1)
    assert results[:2] == [True, True] and results.count(False) >= 7
    assert stats.dropped == results.count(False)


def test_webhook_rejects_non_http_urls():
    with pytest.raises(ValueError):
        WebhookPoster("ftp://127.0.0.1/x")


def test_webhook_shows_its_url_through_the_one_redaction_helper(caplog):
    """Logs and statistics show the webhook as `scheme://host:port/...` (tokens live in webhook
    paths and queries); a refused URL's error line has no password either."""
    import logging
    import socket

    from avarnet.errors import InvalidArgumentError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://bob:hunter2@127.0.0.1:{port}/services/T0/B0/PATHSECRET?token=T0KEN&room=7"
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        poster = WebhookPoster(url, attempts=2, backoff_s=0.01, timeout_s=0.5)
        poster.post({"type": "event"})
        stats = poster.close()
    assert poster.display_url == f"http://***@127.0.0.1:{port}/..."
    text = " ".join(r.getMessage() for r in caplog.records) + json.dumps(stats.to_dict())
    assert poster.display_url in text
    assert "hunter2" not in text and "T0KEN" not in text and "bob" not in text
    assert "PATHSECRET" not in text
    with pytest.raises(InvalidArgumentError) as err:
        WebhookPoster("ftp://bob:pw5678x@127.0.0.1/x")
    assert "pw5678x" not in str(err.value) and "ftp://bob:***@127.0.0.1/x" in str(err.value)
