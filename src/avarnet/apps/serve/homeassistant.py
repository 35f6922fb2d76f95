"""Home Assistant MQTT discovery and Frigate's ``reviews`` topic, over the server's MQTT connection.

**Discovery** (``mqtt.discovery: true``): per camera one Home Assistant device with five entities,
announced by retained configs under ``<discovery_prefix>/<component>/<node>/<camera>_<key>/config``
(node: the topic prefix, so two servers on one broker stay apart):

* ``binary_sensor`` *Anomaly*: on while an event is open (``<prefix>/<camera>/state``);
* ``sensor`` *Anomaly score*: each segment's score (``<prefix>/<camera>/anomaly``);
* ``sensor`` *Label*: the current class (``<prefix>/<camera>/state``);
* ``event`` *Event*: fires when an event opens, its type the class (``<prefix>/<camera>/event``);
* ``camera`` *Snapshot*: the JPEG of the last event (``<prefix>/<camera>/snapshot``, retained).

Every entity is available while ``<prefix>/available`` says ``online`` (the server's birth message
and last will). The topics announced are kept in ``homeassistant.json`` in the storage folder, so a
camera that left the configuration (or every camera, once discovery is turned off) is withdrawn
with an empty retained config at the next start. Configs and withdrawals go through the MQTT
outbox: delivered in order, once the broker is reachable, across restarts too.

**Reviews** (``mqtt.reviews``, on by default): ``<prefix>/reviews`` carries Frigate's review items,
``{"type": "new"|"update"|"end", "before": {...}, "after": {...}}``, one item per event, with the
fields of Frigate's ``frigate/reviews`` (``id``, ``camera``, ``start_time``, ``end_time``,
``severity``, ``thumb_path``, ``data.detections`` / ``objects`` / ``sub_labels`` / ``zones`` /
``audio``), so automations written for Frigate work with the prefix changed. ``severity`` is
``alert`` or ``detection`` from the configuration's ``severity`` mapping (class -> level,
``default`` for the classes not named; every class is an alert unless said otherwise); an event
whose classes include an alert class is an alert.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ... import __version__
from ...config import NORMAL_CLASS
from .publisher import Publisher

if TYPE_CHECKING:
    from .config import ServeConfig
    from .mqtt import MqttPublisher

log = logging.getLogger("avarnet")

STATE_FILE = "homeassistant.json"  # in the storage folder: the discovery topics announced
SEVERITIES = ("alert", "detection")
DEFAULT_SEVERITY = "alert"
MANUFACTURER = "avarnet"
MODEL = "audio-visual anomaly detector"

# entity key -> (component, name); the order is the order of the configs
ENTITIES = {
    "anomaly": ("binary_sensor", "Anomaly"),
    "score": ("sensor", "Anomaly score"),
    "label": ("sensor", "Label"),
    "event": ("event", "Event"),
    "snapshot": ("camera", "Snapshot"),
}


def node_id(topic_prefix: str) -> str:
    """The topic prefix as a discovery node id and unique-id stem (``[A-Za-z0-9_-]`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", topic_prefix.strip("/")) or "avarnet"


def severity_of(labels: list[str], severity: dict[str, str]) -> str:
    """``alert`` when any of ``labels`` is an alert class, else ``detection``; no labels: the
    default level."""
    default = severity.get("default", DEFAULT_SEVERITY)
    if not labels:
        return default
    return "alert" if any(severity.get(x, default) == "alert" for x in labels) else "detection"


def event_types(camera: dict) -> list[str]:
    """The classes that can name an event of this camera (not ``normal``, not ignored)."""
    ignore = set(camera.get("ignore") or ())
    return [c for c in camera.get("classes") or () if c != NORMAL_CLASS and c not in ignore]


def discovery_configs(camera: dict, prefix: str, discovery_prefix: str) -> dict[str, dict]:
    """Discovery topic -> config payload of one camera's entities (Home Assistant's MQTT
    discovery schema, full key names)."""
    name = camera["name"]
    node = node_id(prefix)
    base = f"{prefix}/{name}"
    common = {
        "availability": [
            {
                "topic": f"{prefix}/available",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ],
        "device": {
            "identifiers": [f"{node}_{name}"],
            "name": f"avarnet {name}",
            "manufacturer": MANUFACTURER,
            "model": MODEL,
            "sw_version": __version__,
        },
        "origin": {"name": "avarnet", "sw_version": __version__},
    }
    specific = {
        "anomaly": {
            "state_topic": f"{base}/state",
            "value_template": "{{ 'ON' if value_json.event else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "safety",
            "json_attributes_topic": f"{base}/state",
        },
        "score": {
            "state_topic": f"{base}/anomaly",
            "value_template": "{{ value_json.score }}",
            "state_class": "measurement",
            "suggested_display_precision": 2,
            "icon": "mdi:gauge",
        },
        "label": {
            "state_topic": f"{base}/state",
            "value_template": "{{ value_json.label }}",
            "icon": "mdi:tag-text-outline",
        },
        "event": {
            "state_topic": f"{base}/event",
            "event_types": event_types(camera),
            "icon": "mdi:alert-octagon-outline",
        },
        "snapshot": {"topic": f"{base}/snapshot"},
    }
    out: dict[str, dict] = {}
    for key, (component, label) in ENTITIES.items():
        object_id = f"{name}_{key}"
        topic = f"{discovery_prefix}/{component}/{node}/{object_id}/config"
        out[topic] = {
            "name": label,
            "unique_id": f"{node}_{object_id}",
            **specific[key],
            **common,
        }
    return out


def event_message(after: dict, severity: dict[str, str]) -> dict:
    """What the ``event`` entity receives when an event opens: ``event_type`` is its class, the
    rest become the entity's attributes."""
    return {
        "event_type": after["label"],
        "id": after["id"],
        "camera": after["camera"],
        "score": after.get("top_score"),
        "start_time": after["start_time"],
        "severity": severity_of([after["label"]], severity),
    }


def review_item(
    event: dict, labels: list[str], severity: dict[str, str], thumb_path: str | None
) -> dict:
    """A Frigate review item for one event (``before`` / ``after`` of a ``reviews`` message)."""
    return {
        "id": event["id"],
        "camera": event["camera"],
        "start_time": event["start_time"],
        "end_time": event["end_time"],
        "severity": severity_of(labels, severity),
        "thumb_path": thumb_path,
        "data": {
            "detections": [event["id"]],
            "objects": list(labels),
            "sub_labels": [],
            "zones": [],
            "audio": [],
        },
    }


def _read_topics(path: Path) -> list[str]:
    """The discovery topics a previous run announced (none when the file is absent or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.warning("home assistant: cannot read %s (%s); nothing withdrawn", path, e)
        return []
    topics = data.get("topics") if isinstance(data, dict) else None
    return [t for t in topics if isinstance(t, str)] if isinstance(topics, list) else []


def _write_topics(path: Path, topics: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"topics": sorted(topics)}, indent=1), encoding="utf-8")
    os.replace(tmp, path)


class DiscoveryPublisher(Publisher):
    """Announces each camera's entities to Home Assistant and feeds its event and snapshot.

    ``enabled`` False: only withdraws what an earlier run announced (discovery turned off)."""

    name = "homeassistant"

    def __init__(
        self,
        mqtt: MqttPublisher,
        discovery_prefix: str,
        storage: Path,
        severity: dict[str, str] | None = None,
        enabled: bool = True,
        ignore: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.ignore = dict(ignore or {})  # camera -> classes that never name its events
        self.prefix = mqtt.prefix
        self.discovery_prefix = discovery_prefix
        self.state_file = Path(storage) / STATE_FILE
        self.snapshots = Path(storage) / "snapshots"
        self.severity = dict(severity or {})
        self.enabled = enabled
        self.announced = 0
        self.withdrawn = 0
        self.snapshots_sent = 0
        self._unsent: dict[str, bytes] = {}  # camera -> snapshot not sent yet (disconnected)
        self._lock = threading.Lock()

    def cameras(self, cameras: list[dict]) -> None:
        before = _read_topics(self.state_file)
        configs: dict[str, dict] = {}
        if self.enabled:
            for cam in cameras:
                cam = {"ignore": self.ignore.get(cam["name"], ()), **cam}
                configs.update(discovery_configs(cam, self.prefix, self.discovery_prefix))
            known = {c for cam in cameras for c in cam.get("classes") or ()}
            unknown = sorted(k for k in self.severity if k != "default" and k not in known)
            if unknown and known:
                log.warning("severity: classes not in any camera's checkpoint: %s", unknown)
        gone = [t for t in before if t not in configs]
        for topic in gone:
            self.mqtt.enqueue(topic, "", retain=True)
        for topic, payload in configs.items():
            self.mqtt.enqueue(topic, json.dumps(payload, allow_nan=False), retain=True)
        if configs:
            _write_topics(self.state_file, list(configs))
        elif before:
            self.state_file.unlink(missing_ok=True)
        self.announced, self.withdrawn = len(configs), len(gone)
        if configs or gone:
            log.info(
                "home assistant: %d entities announced for %d camera(s), %d withdrawn",
                len(configs),
                len(cameras) if configs else 0,
                len(gone),
            )

    def event(
        self, kind: str, before: dict | None, after: dict, record: dict | None = None
    ) -> None:
        if not self.enabled:
            return
        camera = after["camera"]
        if kind == "new":
            payload = json.dumps(event_message(after, self.severity), allow_nan=False)
            self.mqtt.enqueue(f"{self.prefix}/{camera}/event", payload)
        elif kind == "end" and after.get("has_snapshot"):
            snap = self.snapshots / f"{after['id']}.jpg"
            try:
                data = snap.read_bytes()
            except OSError:
                return
            # sent now, before the review's `end` is queued (same connection, in order); while
            # disconnected, kept (the latest per camera) for the next segment or state change
            with self._lock:
                self._unsent[camera] = data
            self._send_snapshots()

    def anomaly(self, camera: str, payload: dict) -> None:
        if self._unsent:
            self._send_snapshots()

    def state(self, camera: str, payload: dict) -> None:
        if self._unsent:
            self._send_snapshots()

    def _send_snapshots(self) -> None:
        with self._lock:
            for camera, data in list(self._unsent.items()):
                if not self.mqtt.publish(f"{self.prefix}/{camera}/snapshot", data, retain=True):
                    return
                del self._unsent[camera]
                self.snapshots_sent += 1

    def stats(self) -> dict | None:
        return {
            "announced": self.announced,
            "withdrawn": self.withdrawn,
            "snapshots": self.snapshots_sent,
        }


class ReviewsPublisher(Publisher):
    """Frigate's ``reviews`` messages: ``new`` when an event opens, ``update`` when a new class
    joins it while open, ``end`` once its clip and snapshot are written."""

    name = "reviews"

    def __init__(
        self, mqtt: MqttPublisher, storage: Path, severity: dict[str, str] | None = None
    ) -> None:
        self.mqtt = mqtt
        self.topic = f"{mqtt.prefix}/reviews"
        self.snapshots = Path(storage) / "snapshots"
        self.severity = dict(severity or {})
        self.published = 0
        self._lock = threading.Lock()
        self._open: dict[str, tuple[list[str], dict]] = {}  # event id -> (classes seen, last item)

    def _thumb(self, event: dict) -> str | None:
        if not event.get("has_snapshot"):
            return None
        snap = self.snapshots / f"{event['id']}.jpg"
        return str(snap.resolve()) if snap.is_file() else None

    def event(
        self, kind: str, before: dict | None, after: dict, record: dict | None = None
    ) -> None:
        eid = after["id"]
        with self._lock:
            seen = self._open.get(eid)
            if kind == "new":
                labels = [after["label"]]
                item = review_item(after, labels, self.severity, None)
                self._open[eid] = (labels, item)
                self._send("new", item, item)
            elif kind == "update":
                if seen is None or after.get("end_time") is not None:
                    return  # reviews on the page after the end are not review-item changes
                labels, last = seen
                if after["label"] in labels:
                    return
                labels = [*labels, after["label"]]
                item = review_item(after, labels, self.severity, None)
                self._open[eid] = (labels, item)
                self._send("update", last, item)
            elif kind == "end":
                if seen is None:  # opened before a restart: its classes are what the row says
                    labels = [after["label"]]
                    last = review_item(before or after, labels, self.severity, None)
                else:
                    labels, last = seen
                    if after["label"] not in labels:
                        labels = [*labels, after["label"]]
                self._open.pop(eid, None)
                self._send(
                    "end", last, review_item(after, labels, self.severity, self._thumb(after))
                )

    def _send(self, kind: str, before: dict, after: dict) -> None:
        payload = json.dumps({"type": kind, "before": before, "after": after}, allow_nan=False)
        self.mqtt.enqueue(self.topic, payload)
        self.published += 1

    def stats(self) -> dict | None:
        return {"published": self.published, "open": len(self._open)}


def homeassistant_publishers(config: ServeConfig, mqtt: MqttPublisher) -> list[Publisher]:
    """The Home Assistant / Frigate publishers the configuration asks for, on ``mqtt``'s
    connection (a withdrawing DiscoveryPublisher when discovery is off but was on before)."""
    m = config.mqtt
    if m is None:
        return []
    storage = config.storage.path
    out: list[Publisher] = []
    if m.discovery or (storage / STATE_FILE).is_file():
        out.append(
            DiscoveryPublisher(
                mqtt,
                m.discovery_prefix,
                storage,
                config.severity,
                enabled=m.discovery,
                ignore={c.name: c.ignore for c in config.cameras},
            )
        )
    if m.reviews:
        out.append(ReviewsPublisher(mqtt, storage, config.severity))
    return out
