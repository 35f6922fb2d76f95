"""Home Assistant MQTT discovery and Frigate's `reviews` topic: the payloads against Home
Assistant's discovery schema and Frigate's review items, the publishers on a fake connection, then
on a real mosquitto, then `serve` end to end."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import serve_support as ss

from avarnet.apps.serve.config import ConfigError, parse_config
from avarnet.apps.serve.homeassistant import (
    STATE_FILE,
    DiscoveryPublisher,
    ReviewsPublisher,
    discovery_configs,
    homeassistant_publishers,
    review_item,
    severity_of,
)

# Home Assistant's MQTT discovery: per component, the keys its schema requires
REQUIRED = {
    "binary_sensor": {"state_topic"},
    "sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
    "camera": {"topic"},
}
# Frigate's review item (`frigate/reviews` before / after)
REVIEW_KEYS = {"id", "camera", "start_time", "end_time", "severity", "thumb_path", "data"}
REVIEW_DATA_KEYS = {"detections", "objects", "sub_labels", "zones", "audio"}


def camera(name: str, classes=("crash", "normal", "scream"), ignore=()) -> dict:
    return {"name": name, "classes": list(classes), "ignore": list(ignore), "threshold": 0.5}


def event(eid="1764512345.118204-3fa9c1", cam="yard", label="crash", end=None, snap=False) -> dict:
    """An event as the server's messages carry it."""
    return {
        "id": eid,
        "camera": cam,
        "label": label,
        "sub_label": None,
        "score": 0.7,
        "top_score": 0.93,
        "start_time": 1764512345.118,
        "end_time": end,
        "peak_time": 1764512349.1,
        "segments": 4,
        "false_positive": False,
        "review": "unreviewed",
        "has_clip": end is not None,
        "has_snapshot": snap,
        "closed_by": None if end is None else "scores",
    }


class FakeMqtt:
    """What the publishers use of MqttPublisher: the prefix, the outbox, a live publish."""

    def __init__(self, prefix: str = "avarnet") -> None:
        self.prefix = prefix
        self.queued: list[tuple[str, str, bool]] = []
        self.live: list[tuple[str, bytes, bool]] = []
        self.connected = True

    def enqueue(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> None:
        self.queued.append((topic, payload, retain))

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False) -> bool:
        if not self.connected:
            return False
        self.live.append((topic, payload, retain))
        return True


def check_configs(configs: dict[str, dict], prefix: str, discovery_prefix: str) -> None:
    """Each config as Home Assistant's discovery schema wants it."""
    uids = [c["unique_id"] for c in configs.values()]
    assert len(set(uids)) == len(uids)
    for topic, cfg in configs.items():
        parts = topic.split("/")
        assert parts[0] == discovery_prefix and parts[-1] == "config" and len(parts) == 5
        component = parts[1]
        assert component in REQUIRED, topic
        assert all(p and all(ch.isalnum() or ch in "_-" for ch in p) for p in parts[2:4]), topic
        missing = REQUIRED[component] - set(cfg)
        assert not missing, (topic, missing)
        assert cfg["availability"] == [
            {
                "topic": f"{prefix}/available",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
        assert "availability_topic" not in cfg  # never both
        dev = cfg["device"]
        assert dev["identifiers"] and dev["name"] and dev["manufacturer"] and dev["sw_version"]
        assert cfg["name"] and cfg["origin"]["name"] == "avarnet"
        for key, value in cfg.items():
            if key.endswith("topic"):
                assert value.startswith(f"{prefix}/") and "#" not in value and "+" not in value


def test_discovery_configs_follow_home_assistants_schema():
    yard = discovery_configs(camera("yard", ignore=["scream"]), "avarnet", "homeassistant")
    gate = discovery_configs(camera("gate"), "avarnet", "homeassistant")
    both = {**yard, **gate}
    assert len(both) == 10  # five entities a camera, no topic shared
    check_configs(both, "avarnet", "homeassistant")
    by_component = {t.split("/")[1]: c for t, c in yard.items() if c["name"] != "Label"}
    assert set(by_component) == {"binary_sensor", "sensor", "event", "camera"}
    assert by_component["binary_sensor"]["state_topic"] == "avarnet/yard/state"
    assert by_component["sensor"]["state_topic"] == "avarnet/yard/anomaly"
    assert by_component["event"]["state_topic"] == "avarnet/yard/event"
    assert by_component["event"]["event_types"] == ["crash"]  # not normal, not ignored
    assert by_component["camera"]["topic"] == "avarnet/yard/snapshot"
    # one device per camera, shared by its entities
    assert len({json.dumps(c["device"]) for c in yard.values()}) == 1
    assert yard[next(iter(yard))]["device"] != gate[next(iter(gate))]["device"]
    # unique ids are stable (the same next run) and apart per topic prefix
    assert discovery_configs(camera("yard"), "avarnet", "homeassistant").keys() == yard.keys()
    other = discovery_configs(camera("yard"), "site/b", "ha")
    check_configs(other, "site/b", "ha")
    assert not {c["unique_id"] for c in other.values()} & {c["unique_id"] for c in yard.values()}
    assert all(t.startswith("ha/") and "/site_b/" in t for t in other)


def test_severity_from_the_config_alert_wins():
    sev = {"crash": "alert", "pain": "detection", "default": "detection"}
    assert severity_of(["crash"], sev) == "alert"
    assert severity_of(["pain"], sev) == "detection"
    assert severity_of(["scream"], sev) == "detection"  # the default
    assert severity_of(["pain", "crash"], sev) == "alert"
    assert severity_of(["scream"], {}) == "alert"  # nothing configured: every class alerts
    assert severity_of(["pain"], {"crash": "detection", "pain": "detection"}) == "detection"


def test_review_item_has_frigates_fields():
    item = review_item(event(end=1764512360.0), ["crash", "scream"], {}, "/data/snap.jpg")
    assert set(item) == REVIEW_KEYS and set(item["data"]) == REVIEW_DATA_KEYS
    assert item["data"]["objects"] == ["crash", "scream"]
    assert item["data"]["detections"] == [item["id"]]
    assert item["end_time"] == 1764512360.0 and item["thumb_path"] == "/data/snap.jpg"


def test_reviews_new_update_end(tmp_path):
    m = FakeMqtt("cams")
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    sev = {"scream": "alert", "default": "detection"}
    pub = ReviewsPublisher(m, tmp_path, sev)
    e = event(label="crash")
    pub.event("new", None, e)
    pub.event("update", e, dict(e, score=0.8))  # same class: no review change
    pub.event("update", e, dict(e, label="scream"))  # a new class joins: escalates
    done = dict(e, label="scream", end_time=1764512360.0, has_snapshot=True)
    (snaps / f"{e['id']}.jpg").write_bytes(b"\xff\xd8jpeg")
    pub.event("end", e, done)
    pub.event("update", done, dict(done, review="true"))  # reviewed on the page later: no message
    msgs = [(t, json.loads(p), r) for t, p, r in m.queued]
    assert [t for t, _, _ in msgs] == ["cams/reviews"] * 3 and not any(r for *_, r in msgs)
    new, upd, end = (p for _, p, _ in msgs)
    assert [new["type"], upd["type"], end["type"]] == ["new", "update", "end"]
    for p in (new, upd, end):
        assert set(p) == {"type", "before", "after"}
        assert set(p["after"]) == REVIEW_KEYS and set(p["after"]["data"]) == REVIEW_DATA_KEYS
    assert new["before"] == new["after"] and new["after"]["severity"] == "detection"
    assert new["after"]["thumb_path"] is None and new["after"]["end_time"] is None
    assert upd["before"]["severity"] == "detection" and upd["after"]["severity"] == "alert"
    assert upd["after"]["data"]["objects"] == ["crash", "scream"]
    assert end["before"] == upd["after"]
    assert end["after"]["end_time"] == 1764512360.0 and end["after"]["severity"] == "alert"
    assert end["after"]["thumb_path"] == str((snaps / f"{e['id']}.jpg").resolve())
    assert pub.stats() == {"published": 3, "open": 0}
    # an event left open by a crash, closed at the next start: its end alone
    other = event(eid="1.0-aaaaaa", label="crash")
    pub.event("end", other, dict(other, end_time=2.0))
    last = json.loads(m.queued[-1][1])
    assert last["type"] == "end" and last["before"]["end_time"] is None
    assert last["after"]["severity"] == "detection" and last["after"]["thumb_path"] is None


def test_discovery_announces_feeds_and_withdraws(tmp_path):
    m = FakeMqtt()
    pub = DiscoveryPublisher(m, "homeassistant", tmp_path, {"crash": "alert"})
    pub.cameras([camera("yard"), camera("gate")])
    configs = {t: json.loads(p) for t, p, r in m.queued if r}
    assert len(configs) == len(m.queued) == 10
    check_configs(configs, "avarnet", "homeassistant")
    assert sorted(json.loads((tmp_path / STATE_FILE).read_text())["topics"]) == sorted(configs)
    # the event entity fires when an event opens; the snapshot goes to the camera entity
    m.queued.clear()
    e = event(cam="gate", label="scream")
    pub.event("new", None, e)
    ((topic, payload, retain),) = m.queued
    assert topic == "avarnet/gate/event" and not retain
    assert json.loads(payload)["event_type"] == "scream"
    assert json.loads(payload)["id"] == e["id"]
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / f"{e['id']}.jpg").write_bytes(b"\xff\xd8jpeg")
    pub.event("end", e, dict(e, end_time=3.0, has_snapshot=True))
    assert m.live == [("avarnet/gate/snapshot", b"\xff\xd8jpeg", True)]
    # disconnected when an event ends: its snapshot goes out at the next segment once connected
    m.live.clear()
    m.connected = False
    e2 = event(eid="2.0-bbbbbb", cam="gate")
    (tmp_path / "snapshots" / f"{e2['id']}.jpg").write_bytes(b"\xff\xd8second")
    pub.event("end", e2, dict(e2, end_time=3.0, has_snapshot=True))
    pub.anomaly("gate", {"score": 0.5})
    assert m.live == []
    m.connected = True
    pub.anomaly("gate", {"score": 0.5})
    pub.state("gate", {})
    assert m.live == [("avarnet/gate/snapshot", b"\xff\xd8second", True)]
    assert pub.stats()["snapshots"] == 2
    # next start without "gate": its five configs are withdrawn (empty retained), yard's stay
    m2 = FakeMqtt()
    DiscoveryPublisher(m2, "homeassistant", tmp_path).cameras([camera("yard")])
    cleared = [t for t, p, r in m2.queued if p == ""]
    assert len(cleared) == 5 and all("/gate_" in t for t in cleared)
    assert all(r for *_, r in m2.queued)
    kept = [t for t, p, _ in m2.queued if p]
    assert len(kept) == 5 and all("/yard_" in t for t in kept)
    assert [t for t, p, _ in m2.queued].index(cleared[0]) < [t for t, *_ in m2.queued].index(
        kept[0]
    )  # withdrawals first
    # discovery turned off: everything announced is withdrawn, the record goes
    cfg = tiny_config(tmp_path, {"host": "127.0.0.1", "discovery": False})
    m3 = FakeMqtt()
    (pub3, reviews) = homeassistant_publishers(cfg, m3)
    assert isinstance(pub3, DiscoveryPublisher) and not pub3.enabled
    assert isinstance(reviews, ReviewsPublisher)
    pub3.cameras([camera("yard")])
    assert sorted(t for t, p, r in m3.queued if p == "" and r) == sorted(kept)
    assert not (tmp_path / STATE_FILE).exists()
    pub3.event("new", None, event())
    assert len(m3.queued) == 5  # no event entity any more
    # nothing left to withdraw: no discovery publisher at all
    assert [type(p) for p in homeassistant_publishers(cfg, m3)] == [ReviewsPublisher]


def tiny_config(storage: Path, mqtt_cfg: dict, severity=None, alerts: dict | None = None):
    (storage / "m.ckpt").write_bytes(b"x")
    (storage / "a.mp4").write_bytes(b"x")
    raw = {
        "checkpoint": "m.ckpt",
        "cameras": {"a": {"source": "a.mp4", "alerts": alerts or {}}},
        "web": {"token": "t"},
        "storage": {"path": str(storage)},
        "mqtt": mqtt_cfg,
    }
    if severity is not None:
        raw["severity"] = severity
    return parse_config(raw, storage)


def test_config_keys(tmp_path):
    cfg = tiny_config(tmp_path, {"host": "h"})
    assert not cfg.mqtt.discovery and cfg.mqtt.discovery_prefix == "homeassistant"
    assert cfg.mqtt.reviews and cfg.severity == {}
    assert [type(p) for p in homeassistant_publishers(cfg, FakeMqtt())] == [ReviewsPublisher]
    cfg = tiny_config(
        tmp_path,
        {"host": "h", "discovery": True, "discovery_prefix": "ha/", "reviews": False},
        {"crash": "alert", "default": "detection"},
    )
    assert cfg.mqtt.discovery and cfg.mqtt.discovery_prefix == "ha"
    assert cfg.severity == {"crash": "alert", "default": "detection"}
    assert [type(p) for p in homeassistant_publishers(cfg, FakeMqtt())] == [DiscoveryPublisher]
    # a camera's ignored classes never name its events: not among the event entity's types
    cfg = tiny_config(tmp_path, {"host": "h", "discovery": True}, alerts={"ignore": ["scream"]})
    m = FakeMqtt()
    homeassistant_publishers(cfg, m)[0].cameras([{"name": "a", "classes": ["crash", "scream"]}])
    (types,) = (json.loads(p)["event_types"] for t, p, _ in m.queued if "/event/" in t)
    assert types == ["crash"]
    with pytest.raises(ConfigError) as e:
        tiny_config(
            tmp_path,
            {"host": "h", "discovery": "yes", "discovery_prefix": "ha/#"},
            {"crash": "urgent"},
        )
    text = "\n".join(e.value.lines)
    for key in ("mqtt.discovery:", "mqtt.discovery_prefix:", "severity.crash:"):
        assert key in text, text
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, {"host": "h"}, ["crash"])
    assert e.value.lines == ["severity: must be a mapping of class -> alert or detection"]


class Recorder:
    """Every message on the broker (``#``): (topic, payload bytes, retained), in arrival order."""

    def __init__(self, port: int, client_id: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def json(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.on(topic)]

    def configs(self, discovery_prefix: str = "homeassistant") -> dict[str, dict]:
        """The discovery configs in force: each topic's last payload, empty ones removed."""
        last: dict[str, bytes] = {}
        with self.lock:
            for t, p, _ in self.messages:
                if t.startswith(f"{discovery_prefix}/") and t.endswith("/config"):
                    last[t] = p
        return {t: json.loads(p) for t, p in last.items() if p}

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        with self.lock:
            seen = [(t, p[:80]) for t, p, _ in self.messages[-12:]]
        raise AssertionError(f"timed out waiting for {what}; last messages: {seen}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    b = ss.Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def run_publishers(cfg, cameras: list[dict], events=()) -> None:
    """The server's publishers (build_publishers) started, told the cameras and ``events``
    ((kind, before, after) with a snapshot written before an ``end``), flushed, closed."""
    from avarnet.apps.serve.events import EventStore
    from avarnet.apps.serve.publish import build_publishers

    store = EventStore(cfg.storage.db)
    pubs = build_publishers(cfg, store)
    try:
        pubs.start()
        pubs.cameras(cameras)
        # the snapshot is a live value, sent only while connected (as a server's events come later)
        assert pubs.get("mqtt").connected.wait(10)
        for kind, before, after in events:
            if kind == "end" and after.get("has_snapshot"):
                snaps = cfg.storage.path / "snapshots"
                snaps.mkdir(parents=True, exist_ok=True)
                (snaps / f"{after['id']}.jpg").write_bytes(b"\xff\xd8" + after["id"].encode())
            pubs.event(kind, before, after)
        assert pubs.flush(10.0) == 0
        assert pubs.healthy, pubs.errors
    finally:
        pubs.close()
        store.close()


def test_publishers_on_a_real_broker_announce_review_and_withdraw(tmp_path, broker):
    storage = tmp_path / "store"
    storage.mkdir()
    mqtt_cfg = {"host": "127.0.0.1", "port": broker.port, "discovery": True, "keepalive": 5}
    cfg = tiny_config(storage, mqtt_cfg, {"scream": "detection"})
    rec = Recorder(broker.port, "rec-1")
    e = event(cam="gate", label="scream")
    done = dict(e, end_time=1764512360.0, has_snapshot=True, has_clip=True)
    run_publishers(cfg, [camera("yard"), camera("gate")], [("new", None, e), ("end", e, done)])
    rec.wait(lambda: len(rec.json("avarnet/reviews")) == 2, 10, "the review's end")
    rec.close()

    # a subscriber that comes later (Home Assistant starting) gets the retained configs
    late = Recorder(broker.port, "rec-2")
    late.wait(lambda: len(late.configs()) == 10, 10, "ten retained configs")
    late.wait(lambda: late.on("avarnet/gate/snapshot"), 10, "the retained snapshot")
    check_configs(late.configs(), "avarnet", "homeassistant")
    assert late.on("avarnet/gate/snapshot") == [b"\xff\xd8" + e["id"].encode()]
    assert late.on("avarnet/available") == [b"offline"]  # closed: every entity unavailable
    late.close()
    reviews = rec.json("avarnet/reviews")
    assert [r["type"] for r in reviews] == ["new", "end"]
    assert all(r["after"]["severity"] == "detection" for r in reviews)  # from the config
    assert reviews[1]["after"]["thumb_path"].endswith(f"snapshots/{e['id']}.jpg")
    assert reviews[1]["after"]["data"]["objects"] == ["scream"]
    (fired,) = rec.json("avarnet/gate/event")
    assert fired["event_type"] == "scream" and fired["id"] == e["id"]
    assert rec.json("avarnet/events")[0]["type"] == "new"  # the events topic goes on as before

    # next start without "gate": its configs are withdrawn, yard's stay
    watch = Recorder(broker.port, "rec-3")
    watch.wait(lambda: len(watch.configs()) == 10, 10, "the configs")
    run_publishers(cfg, [camera("yard")])
    watch.wait(lambda: len(watch.configs()) == 5, 10, "gate's configs withdrawn")
    assert all("/yard_" in t for t in watch.configs())
    watch.close()
    again = Recorder(broker.port, "rec-4")
    again.wait(lambda: len(again.configs()) == 5, 10, "yard's configs")
    time.sleep(0.3)  # nothing else retained arrives
    assert sorted(again.configs()) == sorted(watch.configs())
    again.close()


@pytest.fixture(scope="module")
def ckpt(tiny_backbones, tmp_path_factory):
    return ss.tiny_checkpoint(tiny_backbones, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def clip6(tmp_path_factory):
    return ss.make_clip(tmp_path_factory.mktemp("media") / "cam.mp4", 6.0)


def serve_config(tmp_path: Path, ckpt: Path, cameras: dict, port: int, broker_port: int) -> Path:
    """A serve configuration with discovery on and every class a detection."""
    import yaml

    path = ss.write_config(
        tmp_path / "serve.yaml",
        ckpt,
        cameras,
        tmp_path / "store",
        port,
        broker_port,
        severity={"crash": "detection", "scream": "detection"},
    )
    cfg = yaml.safe_load(path.read_text())
    cfg["mqtt"]["discovery"] = True
    path.write_text(yaml.safe_dump(cfg))
    return path


def stop(proc, log: Path) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_serve_announces_to_home_assistant_reviews_and_withdraws(tmp_path, ckpt, clip6, broker):
    rec = Recorder(broker.port, "ha-e2e")
    port = ss.free_port()
    always = {"threshold": 0.0, "min_segments": 2}  # one event per pass over the file
    cfg = serve_config(
        tmp_path, ckpt, {"gate": {"source": str(clip6), "alerts": always}}, port, broker.port
    )
    log = tmp_path / "server.log"
    proc = ss.start_server(cfg, log)
    try:
        ss.wait_up(port, proc, log)
        rec.wait(lambda: len(rec.json("avarnet/reviews")) == 2, 60, "the review's end")
        stop(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    # discovery: five entities of camera gate, retained, as Home Assistant's schema wants them
    configs = rec.configs()
    assert len(configs) == 5 and all("/gate_" in t for t in configs)
    check_configs(configs, "avarnet", "homeassistant")
    (ev,) = (c for t, c in configs.items() if t.startswith("homeassistant/event/"))
    assert set(ev["event_types"]) == {"crash", "scream"}
    # what the entities read is there: state (event, label), anomaly (score), event, snapshot
    states = rec.json("avarnet/gate/state")
    assert any(s["event"] for s in states) and states[-1]["event"] is None
    assert all("label" in s for s in states)
    assert all(0.0 <= a["score"] <= 1.0 for a in rec.json("avarnet/gate/anomaly"))
    events = rec.json("avarnet/events")
    new, end = events[0]["after"], events[-1]["after"]
    assert [e["type"] for e in events] == ["new", "end"]
    (fired,) = rec.json("avarnet/gate/event")
    assert fired["event_type"] == new["label"] and fired["id"] == new["id"]
    (snapshot,) = rec.on("avarnet/gate/snapshot")
    assert snapshot[:2] == b"\xff\xd8"
    # reviews: new then end of the one event, severity from the config, Frigate's fields
    r_new, r_end = rec.json("avarnet/reviews")
    assert [r_new["type"], r_end["type"]] == ["new", "end"]
    for r in (r_new, r_end):
        assert set(r["after"]) == REVIEW_KEYS and set(r["after"]["data"]) == REVIEW_DATA_KEYS
        assert r["after"]["id"] == new["id"] and r["after"]["camera"] == "gate"
        assert r["after"]["severity"] == "detection"  # every class alerts unless configured
        assert r["after"]["start_time"] == new["start_time"]
    assert r_new["after"]["end_time"] is None and r_new["after"]["thumb_path"] is None
    assert r_end["after"]["end_time"] == end["end_time"]
    assert end["label"] in r_end["after"]["data"]["objects"]
    assert Path(r_end["after"]["thumb_path"]).read_bytes() == snapshot
    # the server stopped: every entity unavailable
    assert rec.on("avarnet/available")[-1] == b"offline"

    # gate leaves the configuration, yard comes: at the next start gate's entities are withdrawn
    port = ss.free_port()
    cfg = serve_config(tmp_path, ckpt, {"yard": {"source": str(clip6)}}, port, broker.port)
    proc = ss.start_server(cfg, log)
    try:
        ss.wait_up(port, proc, log)
        rec.wait(lambda: set(rec.configs()) != set(configs), 30, "the configs changed")
        rec.wait(lambda: len(rec.configs()) == 5, 10, "yard's configs")
        stop(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    rec.close()
    assert all("/yard_" in t for t in rec.configs())
    cleared = [t for t, p, retained in rec.messages if t in configs and p == b""]
    assert sorted(cleared) == sorted(configs)
    late = Recorder(broker.port, "ha-late")  # what Home Assistant would find starting now
    late.wait(lambda: len(late.configs()) == 5, 10, "the retained configs")
    time.sleep(0.3)
    assert sorted(late.configs()) == sorted(rec.configs())
    late.close()
