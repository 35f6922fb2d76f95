"""avarnet serve: config validation, MQTT to a real mosquitto (messages, retained state, last
will, broker outage), refused cameras, token on every route, clips and snapshots."""

from __future__ import annotations

import signal
import sqlite3
import time

import av
import pytest
import serve_support as ss

from avarnet.apps.serve.clips import prune
from avarnet.apps.serve.config import ConfigError, load_config
from avarnet.apps.serve.events import EventStore
from avarnet.cli import main


@pytest.fixture(scope="module")
def ckpt(tiny_backbones, tmp_path_factory):
    return ss.tiny_checkpoint(tiny_backbones, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def clip6(tmp_path_factory):
    return ss.make_clip(tmp_path_factory.mktemp("media") / "cam.mp4", 6.0)


@pytest.fixture
def broker(tmp_path):
    b = ss.Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


ALWAYS = {
    "threshold": 0.0,
    "min_segments": 2,
}  # every segment is "high": one event per pass over a file


def test_config_mistakes_one_line_each_exit_2(tmp_path, ckpt, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "checkpoint: missing.ckpt\n"
        "cameras:\n"
        "  'bad name':\n    source: nofile.mp4\n"
        "  ok:\n    source: rtsp://127.0.0.1/x\n    loop: true\n"
        "    alerts: {threshold: 1.5, min_segments: 0, colour: red}\n"
        "mqtt: {port: 99999}\n"
        "web: {port: web}\n"
    )
    assert main(["serve", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    text = "\n".join(err)
    for key in (
        "cameras.bad name:",
        "checkpoint: file not found",
        "cameras.bad name.source: file not found",
        "cameras.ok.loop:",
        "cameras.ok.alerts.threshold:",
        "cameras.ok.alerts.min_segments:",
        "cameras.ok.alerts.colour: unknown key",
        "mqtt.host: is required",
        "mqtt.port:",
        "web.port:",
        "web.token:",
    ):
        assert key in text, key
    assert all(line.startswith("avarnet serve: ") for line in err)
    assert "Traceback" not in text
    cfg.write_text("cameras: [\n")
    assert main(["serve", str(cfg)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    good = ss.write_config(
        tmp_path / "good.yaml", ckpt, {"a": {"source": str(ckpt)}}, tmp_path / "st", 1
    )
    assert load_config(good).cameras[0].name == "a"
    with pytest.raises(ConfigError):
        load_config(tmp_path / "absent.yaml")


def test_mqtt_messages_clip_snapshot_and_last_will(tmp_path, ckpt, clip6, broker):
    sub = ss.Subscriber(broker.port, "sub-a", clean=True)
    port = ss.free_port()
    cfg = ss.write_config(
        tmp_path / "c.yaml",
        ckpt,
        {"gate": {"source": str(clip6), "alerts": ALWAYS}},
        tmp_path / "store",
        port,
        broker.port,
    )
    log = tmp_path / "server.log"
    proc = ss.start_server(cfg, log)
    try:
        ss.wait_up(port, proc, log)
        sub.wait(
            lambda: any(e["type"] == "end" for e in sub.events()), 60, "the event's end message"
        )
        events = sub.events()
        assert [e["type"] for e in events] == ["new", "end"]
        # trained on chunked audio, scored causally: said once, as `stream` says it
        assert log.read_text().count("LIVE FEATURES DIFFER") == 1
        assert events[0]["after"]["id"] == events[1]["after"]["id"]
        end = events[1]["after"]
        assert end["camera"] == "gate" and end["label"] in ("crash", "scream")
        assert end["has_clip"] and end["has_snapshot"] and end["end_time"] > end["start_time"]
        assert events[1]["before"]["end_time"] is not None  # before: the record when it closed
        anomaly = [__import__("json").loads(p) for p, _ in sub.topic("avarnet/gate/anomaly")]
        assert len(anomaly) == 6
        assert [a["segment"] for a in anomaly] == list(range(6))
        assert all(0.0 <= a["score"] <= 1.0 and a["label"] in ss.CLASSES for a in anomaly)
        assert [a["event"] is not None for a in anomaly] == [False, True, True, True, True, True]

        # retained: a new subscriber gets state and availability at once
        late = ss.Subscriber(broker.port, "sub-late", clean=True)
        late.wait(
            lambda: late.topic("avarnet/gate/state") and late.topic("avarnet/available"),
            10,
            "retained",
        )
        state, retained = late.topic("avarnet/gate/state")[0]
        assert retained
        state = __import__("json").loads(state)
        assert (
            state["status"] == "ended" and state["event"] is None and state["label"] in ss.CLASSES
        )
        assert late.topic("avarnet/available")[0] == ("online", True)
        late.close()

        # the event on disk: database row, clip with audio (remuxed), snapshot
        store = EventStore(tmp_path / "store" / "events.db", lock=False)  # the server runs
        (row,) = store.list()
        store.close()
        assert row["id"] == end["id"] and row["closed_by"] == "end of stream"
        assert len(row["scores"]) >= 5 and all(0 <= s <= 1 for _, s in row["scores"])
        clip = tmp_path / "store" / "clips" / row["clip"]
        with av.open(str(clip)) as c:
            assert c.streams.video and c.streams.audio
            with av.open(str(clip6)) as src:
                assert (
                    c.streams.video[0].codec_context.name == src.streams.video[0].codec_context.name
                )
            duration = float(c.duration) / 1e6
        assert 4.0 <= duration <= 6.5  # pre-roll 1 s before the 2nd segment .. the end of the file
        assert (tmp_path / "store" / "snapshots" / row["snapshot"]).read_bytes()[:2] == b"\xff\xd8"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # the last will: a killed server is announced offline (retained)
    sub.wait(
        lambda: (
            sub.topic("avarnet/available") and sub.topic("avarnet/available")[-1][0] == "offline"
        ),
        20,
        "the last will",
    )
    sub.close()
    after = ss.Subscriber(broker.port, "sub-after", clean=True)
    after.wait(lambda: after.topic("avarnet/available"), 10, "retained offline")
    assert after.topic("avarnet/available")[-1] == ("offline", True)
    after.close()


@pytest.mark.slow
def test_broker_down_during_events_nothing_lost_in_order(tmp_path, ckpt, broker, tiny_backbones):
    # 2 s a pass: the event of a pass is open for its second second (segments are handed out as
    # the source's audio and video arrive in real time, as `stream --realtime` hands them out)
    short = ss.make_clip(tmp_path / "loop.mp4", 2.0)
    sub = ss.Subscriber(
        broker.port, "sub-outage"
    )  # persistent session: the broker keeps its messages
    port = ss.free_port()
    cfg = ss.write_config(
        tmp_path / "c.yaml",
        ckpt,
        {
            "loop": {
                "source": str(short),
                "loop": True,
                "realtime": True,
                "alerts": ALWAYS | {"min_segments": 1},
            }
        },  # one event per pass
        tmp_path / "store",
        port,
        broker.port,
    )
    log = tmp_path / "server.log"
    proc = ss.start_server(cfg, log)
    try:
        ss.wait_up(port, proc, log)
        sub.wait(lambda: any(e["type"] == "new" for e in sub.events()), 60, "a first event")
        broker.stop()  # during the first event
        ss.wait_for(
            lambda: ss.api(port, "/api/stats")[1]["events_ended"] >= 3, 60, "3 events ended", log
        )
        stats = ss.api(port, "/api/stats")[1]
        assert stats["mqtt"]["outbox"] >= 3 and not stats["mqtt"]["connected"]
        broker.start()
        ss.wait_for(
            lambda: ss.api(port, "/api/stats")[1]["mqtt"]["outbox"] == 0,
            30,
            "the outbox drained",
            log,
        )
        open_id = ss.wait_for(
            lambda: ss.api(port, "/api/cameras")[1][0]["event"], 30, "an open event", log
        )
        proc.send_signal(signal.SIGTERM)  # stops during an event: it is closed and sent too
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = (
        sqlite3.connect(tmp_path / "store" / "events.db")
        .execute("SELECT id, end_time FROM events ORDER BY start_time")
        .fetchall()
    )
    assert len(rows) >= 4 and all(end is not None for _, end in rows)
    assert rows[-1][0] == open_id
    expected = [(kind, eid) for eid, _ in rows for kind in ("new", "end")]
    sub.wait(
        lambda: len({(e["type"], e["after"]["id"]) for e in sub.events()}) >= len(expected),
        20,
        f"every event message: {expected} got {[(e['type'], e['after']['id']) for e in sub.events()]}",
    )
    got = []
    for (
        e
    ) in sub.events():  # QoS 1 is at-least-once: a redelivered message repeats the one before it
        key = (e["type"], e["after"]["id"])
        if not got or got[-1] != key:
            got.append(key)
    assert got == expected
    sub.close()
    assert "kept for the next start" not in log.read_text()


@pytest.mark.slow
def test_refused_camera_is_retried_others_go_on_and_the_token_guards_everything(
    tmp_path, ckpt, clip6
):
    dead = ss.free_port()  # nothing listens there: connections are refused
    port = ss.free_port()
    dropping = ss.ClipServer(ss.make_clip(tmp_path / "live.mp4", 3.0).read_bytes())
    cfg = ss.write_config(
        tmp_path / "c.yaml",
        ckpt,
        {
            "down": {"source": f"http://127.0.0.1:{dead}/live.mp4", "retry_max_s": 1},
            "yard": {"source": str(clip6), "loop": True, "alerts": ALWAYS},
            "drops": {"source": dropping.url, "retry_max_s": 1, "alerts": ALWAYS},
        },
        tmp_path / "store",
        port,
    )
    log = tmp_path / "server.log"
    proc = ss.start_server(cfg, log)
    try:
        ss.wait_up(port, proc, log)

        def state():
            cams = {c["name"]: c for c in ss.api(port, "/api/cameras")[1]}
            events = [e for e in ss.api(port, "/api/events")[1] if e["has_clip"]]
            ok = (
                cams["down"]["attempts"] >= 3
                and cams["down"]["status"] == "unhealthy"
                and sum(e["camera"] == "yard" for e in events) >= 2
                and cams["drops"]["sessions"] >= 3
                and sum(e["camera"] == "drops" for e in events) >= 2
            )
            return (cams, events) if ok else None

        cams, events = ss.wait_for(
            state, 90, "retries of the dead camera and events of the others", log
        )
        assert "cannot open" in cams["down"]["error"] and cams["down"]["sessions"] == 0
        assert {e["camera"] for e in events} == {"yard", "drops"}  # one per connection of "drops"
        events = [e for e in events if e["camera"] == "yard"]
        eid = events[0]["id"]
        for method, path in [
            ("GET", "/"),
            ("GET", "/api/events"),
            ("GET", "/api/cameras"),
            ("GET", "/api/stats"),
            ("GET", f"/events/{eid}"),
            ("GET", f"/events/{eid}/clip.mp4"),
            ("GET", f"/events/{eid}/snapshot.jpg"),
            ("GET", "/no/such/page"),
            ("POST", f"/api/events/{eid}/review"),
            ("POST", f"/events/{eid}/review"),
        ]:
            for token in (None, "wrong"):
                status, body = ss.api(
                    port,
                    path,
                    token=token,
                    method=method,
                    body={"review": "false"} if method == "POST" else None,
                )
                assert status in (401, 303), (method, path, token, status)
                assert b"ftyp" not in (body if isinstance(body, bytes) else b"")
        status, _ = ss.api(port, f"/events/{eid}/clip.mp4")
        assert status == 200
        assert (
            ss.api(port, f"/api/events/{eid}")[1]["review"] == "unreviewed"
        )  # the POSTs did nothing
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        dropping.close()
    assert "camera drops: the stream ended; retrying" in log.read_text()


def test_retention_prunes_oldest_media_and_keeps_records(tmp_path):
    store = EventStore(tmp_path / "events.db")
    (tmp_path / "clips").mkdir()
    now = time.time()
    for i in range(4):
        name = f"e{i}.mp4"
        (tmp_path / "clips" / name).write_bytes(b"x" * 400_000)
        store.insert(
            {
                "id": f"e{i}",
                "camera": "c",
                "label": "crash",
                "start_time": now - 86400 * (10 - i),
                "end_time": now - 86400 * (10 - i) + 5,
                "media_start": 0.0,
                "peak_score": 0.9,
                "peak_time": now,
                "score": 0.9,
                "scores": [],
                "clip": name,
            }
        )
    # the oldest (10 days) is past 9.5 days; then size: 3 x 0.4 MB > 1 MB -> one more goes
    assert prune(store, tmp_path, max_size_mb=1.0, max_age_days=9.5, now=now) == 2
    kept = {e["id"]: e for e in store.list()}
    assert len(kept) == 4  # records stay
    assert [k for k in sorted(kept) if kept[k]["clip_pruned"]] == ["e0", "e1"]
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["e2.mp4", "e3.mp4"]
    store.close()


def test_batching_across_cameras_equals_one_stream_per_camera(tiny_backbones, tmp_path):
    """Two cameras' segments interleaved through the shared engine give each camera exactly the
    features (audio look-back included) and predictions of its own `stream`."""
    import numpy as np

    from avarnet.alerts import AlertRule
    from avarnet.apps.serve.engine import Engine
    from avarnet.checkpoint import load_checkpoint
    from avarnet.extract import Extractor
    from avarnet.stream import SegmentEncoder, SegmentSource, StreamingPredictor

    ckpt = load_checkpoint(ss.tiny_checkpoint(tiny_backbones, tmp_path / "t.ckpt"))
    extractor = Extractor.from_spec(ckpt.spec, "cpu")
    clips = [
        ss.make_clip(tmp_path / "a.mp4", 5.0),
        ss.make_clip(tmp_path / "b.mp4", 4.0, size=(96, 64)),
    ]
    segs = [list(SegmentSource(c, ckpt.spec)) for c in clips]
    seen = []
    engine = Engine(
        ckpt,
        extractor,
        lambda kind, *a: seen.append(a[0]) if kind == "segment" else None,
        batch_segments=3,
        queue_segments=100,
    )
    for name in ("a", "b"):
        engine.add_camera(name, AlertRule(), ())
    work = [
        (name, s)
        for pair in zip(segs[0], segs[1], strict=False)
        for name, s in zip("ab", pair, strict=True)
    ]
    work += [("a", s) for s in segs[0][len(segs[1]) :]]
    for name, seg in work:
        engine.put(name, seg)
    engine.start()  # batches of 3 segments mixing both cameras
    engine.close()
    engine.join(timeout=120)
    for name, cam_segs in zip("ab", segs, strict=True):
        enc, pred = SegmentEncoder(extractor), StreamingPredictor(ckpt)
        f = enc.encode(cam_segs)
        want = [
            pred.push_features(f["video"][i], f["audio"][i], bool(f["audio_mask"][i]))[
                "anomaly_score"
            ]
            for i in range(len(cam_segs))
        ]
        got = [r.score for r in seen if r.camera == name]
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert engine.batches == 3 and list(engine.batch_sizes) == [3, 3, 3]
