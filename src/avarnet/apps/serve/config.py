"""`avarnet serve` configuration: one YAML file, validated on start (one line per mistake).

Example::

    checkpoint: runs/vaar/best.ckpt          # global; a camera may name its own
    device: cpu
    runtime: torch                           # torch | onnx (checkpoint: an `avarnet export` folder)
    precision: fp32                          # fp32 | bf16 (CPUs with bf16) | int8; per camera too
    cameras:
      yard:
        source: rtsp://user:pass@192.168.1.20:554/stream1
        alerts: {threshold: 0.6, min_segments: 3, hysteresis: 0.1, ignore: [pain]}
      demo:
        source: clips/demo.mp4
        loop: true
        realtime: true
    clips: {pre_roll: 5, post_roll: 5}
    storage: {path: ./avarnet-data, retention: {max_size_mb: 2000, max_age_days: 14}}
    mqtt: {host: 127.0.0.1, port: 1883, topic_prefix: avarnet}
    web: {bind: 127.0.0.1, port: 5080, token: change-me}
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ...alerts import (
    DEFAULT_CLOSE_SEGMENTS,
    DEFAULT_HYSTERESIS,
    DEFAULT_MIN_SEGMENTS,
    DEFAULT_THRESHOLD,
    AlertRule,
)
from ...config import ONNX_PRECISIONS, PRECISIONS, RUNTIMES
from ...redact import redact

CAMERA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # also an MQTT topic level and a URL part
DEFAULT_PORT = 5080
DEFAULT_MQTT_PORT = 1883
MAX_CONFIG_BYTES = 1 << 20  # a configuration file is a few KiB; anything this large is a mistake
MAX_CONFIG_VALUES = 100_000  # values once aliases are expanded (an alias bomb makes billions)
SECRET_KEYS = ("token", "password", "username")  # read as the literal text YAML has for them
DEVICE = re.compile(r"^(cpu|cuda|auto|cuda:[0-9]{1,3})$")
HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class ConfigError(Exception):
    """The configuration has mistakes; ``lines`` holds one line per mistake, naming the key."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ClipSettings:
    pre_roll: float = 5.0  # s of video before an event's start kept in its clip
    post_roll: float = 5.0  # s after its end


@dataclass(frozen=True)
class CameraConfig:
    name: str
    source: str
    loop: bool = False  # files: start again at the end
    realtime: bool = False  # files: read at the file's own speed (live sources always are)
    input_format: str | None = None  # FFmpeg input format for capture devices (v4l2, ...)
    options: dict[str, str] = field(default_factory=dict)  # FFmpeg demuxer/protocol options
    checkpoint: Path | None = None  # a checkpoint file; with runtime onnx an export folder
    runtime: str = "torch"  # torch | onnx (ONNX Runtime on an `avarnet export` folder)
    precision: str = "fp32"  # fp32 | bf16 | int8 (onnx: fp32 | int8)
    rule: AlertRule = field(default_factory=AlertRule)
    ignore: tuple[str, ...] = ()  # classes that never make an event (treated like normal)
    clips: ClipSettings = field(default_factory=ClipSettings)
    retry_max_s: float = 30.0  # longest wait between reconnection attempts

    @property
    def is_file(self) -> bool:
        return (
            "://" not in self.source
            and self.input_format is None
            and not self.source.startswith("/dev/")
        )


@dataclass(frozen=True)
class StorageConfig:
    path: Path
    max_size_mb: float | None = None  # clips + snapshots beyond this are pruned, oldest first
    max_age_days: float | None = None

    @property
    def db(self) -> Path:
        return self.path / "events.db"


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int = DEFAULT_MQTT_PORT
    tls: bool = False
    ca_certs: str | None = None
    username: str | None = None
    password: str | None = None
    topic_prefix: str = "avarnet"
    client_id: str = "avarnet"
    keepalive: int = 30
    reconnect_max_s: float = 30.0
    discovery: bool = False  # Home Assistant MQTT discovery of each camera's entities
    discovery_prefix: str = "homeassistant"
    reviews: bool = True  # <prefix>/reviews: Frigate's review items


@dataclass(frozen=True)
class WebConfig:
    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class ServeConfig:
    cameras: list[CameraConfig]
    storage: StorageConfig
    web: WebConfig
    mqtt: MqttConfig | None = None
    webhook: str | None = None
    device: str = "cpu"
    threads: int | None = None  # torch threads for the shared encoders
    batch_segments: int = 16  # most segments (over all cameras) encoded together
    queue_segments: int = 8  # per camera; a live camera that falls further behind drops its oldest
    path: Path | None = None  # the YAML file
    severity: dict[str, str] = field(default_factory=dict)  # class|default -> alert|detection

    def checkpoints(self) -> list[Path]:
        """Distinct checkpoint files (and export folders), in camera order."""
        out: list[Path] = []
        for cam in self.cameras:
            if cam.checkpoint is not None and cam.checkpoint not in out:
                out.append(cam.checkpoint)
        return out

    def models(self) -> list[ModelKey]:
        """Distinct (checkpoint, runtime, precision) the cameras use, in camera order: one
        engine each."""
        out: list[ModelKey] = []
        for cam in self.cameras:
            key = model_key(cam)
            if cam.checkpoint is not None and key not in out:
                out.append(key)
        return out


@dataclass(frozen=True)
class ModelKey:
    """What one engine runs: a checkpoint (or export folder) at a runtime and precision."""

    checkpoint: Path
    runtime: str = "torch"
    precision: str = "fp32"

    @property
    def label(self) -> str:
        """The checkpoint's name, with the runtime and precision unless torch fp32."""
        name = self.checkpoint.name
        if (self.runtime, self.precision) == ("torch", "fp32"):
            return name
        return f"{name} ({self.runtime} {self.precision})"


def model_key(cam: CameraConfig) -> ModelKey:
    """The engine a camera's segments go to."""
    return ModelKey(cam.checkpoint, cam.runtime, cam.precision)  # type: ignore[arg-type]


class _Checker:
    """Collects mistakes as 'key: reason' lines while reading typed values."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, key: str, reason: str) -> None:
        # one line, and never a credential (a source or webhook URL quoted in the reason)
        self.errors.append(redact(" ".join(f"{key}: {reason}".split())))

    def mapping(self, value: Any, key: str, allowed: set[str]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(key, f"must be a mapping, got {type(value).__name__}")
            return {}
        for k in value:
            if str(k) not in allowed:
                self.error(
                    f"{key}.{k}" if key else str(k),
                    f"unknown key (known: {', '.join(sorted(allowed))})",
                )
        return value

    def number(self, d: dict, key: str, path: str, default, lo=None, hi=None, integer=False):
        v = d.get(key, default)
        if v is None:
            return default
        where = f"{path}.{key}" if path else key
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or (integer and not isinstance(v, int))
        ):
            self.error(where, f"must be {'an integer' if integer else 'a number'}, got {v!r}")
            return default
        if not math.isfinite(v):
            self.error(where, f"must be a finite number, got {v!r}")
            return default
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            self.error(where, f"must be {rng}, got {v!r}")
            return default
        return v

    def boolean(self, d: dict, key: str, path: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            self.error(f"{path}.{key}", f"must be true or false, got {v!r}")
            return default
        return v

    def string(self, d: dict, key: str, path: str, default=None, required=False, secret=False):
        """A non-empty string. A number is taken as its text unless ``secret`` (a token or
        password must be the literal text of the file, which the YAML reader keeps); a secret's
        value is never repeated in an error."""
        where = f"{path}.{key}" if path else key
        v = d.get(key, default)
        if v is None:
            if required:
                self.error(where, "is required")
            return default
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not secret:
            v = str(v)
        if not isinstance(v, str) or not v.strip():
            shown = f"a {type(v).__name__}" if secret else repr(v)
            self.error(where, f"must be a non-empty string, got {shown}")
            return default
        if "\x00" in v:
            self.error(where, "must not contain a NUL character")
            return default
        return v


def _is_address(bind: str) -> bool:
    """An IP address (v4 or v6) or a syntactically valid host name; whether it can be bound is
    for the server to find out before it starts any camera."""
    try:
        ipaddress.ip_address(bind)
        return True
    except ValueError:
        return bool(HOSTNAME.match(bind)) and not bind.replace(".", "").isdigit()


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _camera(
    c: _Checker,
    name: Any,
    raw: Any,
    base: Path,
    default_ckpt,
    clips: ClipSettings,
    model: tuple[str, str] = ("torch", "fp32"),
) -> CameraConfig | None:
    path = f"cameras.{name}"
    if not isinstance(name, str) or not CAMERA_NAME.match(name):
        c.error(path, "camera names are 1-64 letters, digits, '_' or '-'")
    d = c.mapping(
        raw,
        path,
        {
            "source",
            "loop",
            "realtime",
            "input_format",
            "options",
            "checkpoint",
            "runtime",
            "precision",
            "alerts",
            "clips",
            "retry_max_s",
            "enabled",
        },
    )
    if not c.boolean(d, "enabled", path, True):
        return None
    source = c.string(d, "source", path, required=True)
    opts = c.mapping(
        d.get("options"),
        f"{path}.options",
        set(map(str, (d.get("options") or {}).keys()))
        if isinstance(d.get("options"), dict)
        else set(),
    )
    input_format = c.string(d, "input_format", path)
    loop = c.boolean(d, "loop", path, False)
    realtime = c.boolean(d, "realtime", path, False)
    ckpt = c.string(d, "checkpoint", path)
    ckpt_path = _resolve(base, ckpt) if ckpt else default_ckpt
    runtime = _choice(c, d, "runtime", path, model[0], RUNTIMES)
    precision = _choice(c, d, "precision", path, model[1], PRECISIONS)
    where = f"{path}.checkpoint" if ckpt else "checkpoint"
    if ckpt_path is None:
        c.error(f"{path}.checkpoint", "no checkpoint: set one here or a global 'checkpoint'")
    elif runtime == "onnx":
        if not (ckpt_path / "manifest.json").is_file():
            c.error(where, f"runtime onnx needs a folder written by `avarnet export`: {ckpt_path}")
    elif ckpt_path.is_dir():
        c.error(where, f"{ckpt_path} is a folder (an ONNX export needs runtime: onnx)")
    elif not ckpt_path.is_file():
        c.error(where, f"file not found: {ckpt_path}")
    if source and "://" not in source and input_format is None and not source.startswith("/dev/"):
        src = _resolve(base, source)
        if not src.is_file() and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", source):
            # a URL with a typo (rtsp:/...) is not a file name; it may hold a password
            c.error(f"{path}.source", "neither a file nor a URL (scheme://...)")
        elif not src.is_file():
            c.error(f"{path}.source", f"file not found: {src}")
        source = str(src)
    elif loop:
        c.error(f"{path}.loop", "only files can loop")
    a = c.mapping(
        d.get("alerts"),
        f"{path}.alerts",
        {"threshold", "min_segments", "hysteresis", "close_segments", "ignore"},
    )
    threshold = c.number(a, "threshold", f"{path}.alerts", DEFAULT_THRESHOLD, 0.0, 1.0)
    hysteresis = c.number(a, "hysteresis", f"{path}.alerts", DEFAULT_HYSTERESIS, 0.0, 1.0)
    rule = AlertRule(
        threshold=float(threshold),
        min_segments=c.number(
            a, "min_segments", f"{path}.alerts", DEFAULT_MIN_SEGMENTS, 1, integer=True
        ),
        hysteresis=float(hysteresis),
        close_segments=c.number(
            a, "close_segments", f"{path}.alerts", DEFAULT_CLOSE_SEGMENTS, 1, integer=True
        ),
    )
    ignore = a.get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
        c.error(f"{path}.alerts.ignore", "must be a list of class names")
        ignore = []
    cl = c.mapping(d.get("clips"), f"{path}.clips", {"pre_roll", "post_roll"})
    cam_clips = ClipSettings(
        float(c.number(cl, "pre_roll", f"{path}.clips", clips.pre_roll, 0.0, 300.0)),
        float(c.number(cl, "post_roll", f"{path}.clips", clips.post_roll, 0.0, 300.0)),
    )
    return CameraConfig(
        name=str(name),
        source=source or "",
        loop=loop,
        realtime=realtime,
        input_format=input_format,
        options={str(k): str(v) for k, v in opts.items()},
        checkpoint=ckpt_path,
        runtime=runtime,
        precision=precision,
        rule=rule,
        ignore=tuple(ignore),
        clips=cam_clips,
        retry_max_s=float(c.number(d, "retry_max_s", path, 30.0, 0.1, 3600.0)),
    )


def _choice(c: _Checker, d: dict, key: str, path: str, default: str, allowed: tuple) -> str:
    """One of ``allowed`` (``default`` when absent)."""
    v = d.get(key, default)
    if v not in allowed:
        where = f"{path}.{key}" if path else key
        c.error(where, f"must be one of {', '.join(allowed)}, got {v!r}")
        return default
    return v


def _check_models(c: _Checker, cameras: list[CameraConfig], device: str, named: set[str]) -> None:
    """Each camera's runtime and precision run here (:func:`avarnet.runtime.check_precision`
    decides what the device runs; ONNX Runtime runs fp32 or int8 on the CPU). ``named``: the
    cameras that set their own precision or runtime (an error names where it was set)."""
    import torch

    from ...runtime import check_precision

    kind = "cpu" if device == "cpu" else "cuda"
    if device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    said: set[tuple[str, str, str]] = set()
    for cam in cameras:
        onnx = cam.runtime == "onnx"
        dev = torch.device("cpu" if onnx else kind)
        where = f"cameras.{cam.name}.precision" if cam.name in named else "precision"
        if (where, cam.runtime, cam.precision) in said:
            continue  # one line per setting, not per camera
        said.add((where, cam.runtime, cam.precision))
        try:
            check_precision(cam.precision, dev, ONNX_PRECISIONS if onnx else PRECISIONS)
        except ValueError as e:
            c.error(where, f"{cam.runtime}: {e}")


def _severity(c: _Checker, raw: Any) -> dict[str, str]:
    """``severity``: class (or ``default``) -> ``alert`` | ``detection``, for review items."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.error("severity", "must be a mapping of class -> alert or detection")
        return {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if v not in ("alert", "detection"):
            c.error(f"severity.{k}", f"must be alert or detection, got {v!r}")
        else:
            out[str(k)] = v
    return out


TOP_KEYS = {
    "cameras",
    "checkpoint",
    "runtime",
    "precision",
    "device",
    "threads",
    "batch_segments",
    "queue_segments",
    "clips",
    "storage",
    "mqtt",
    "web",
    "webhook",
    "severity",
}


def _mqtt(c: _Checker, raw: Any, base: Path) -> MqttConfig:
    """The ``mqtt`` section (given: not None)."""
    m = c.mapping(
        raw,
        "mqtt",
        {
            "host",
            "port",
            "tls",
            "ca_certs",
            "username",
            "password",
            "topic_prefix",
            "client_id",
            "keepalive",
            "reconnect_max_s",
            "discovery",
            "discovery_prefix",
            "reviews",
        },
    )
    prefix = c.string(m, "topic_prefix", "mqtt", "avarnet")
    if prefix and any(ch in prefix for ch in "#+"):
        c.error("mqtt.topic_prefix", "must not contain MQTT wildcards '#' or '+'")
    mqtt = MqttConfig(
        host=c.string(m, "host", "mqtt", required=True) or "",
        port=c.number(m, "port", "mqtt", DEFAULT_MQTT_PORT, 1, 65535, integer=True),
        tls=c.boolean(m, "tls", "mqtt", False),
        ca_certs=c.string(m, "ca_certs", "mqtt"),
        username=c.string(m, "username", "mqtt", secret=True),
        password=c.string(m, "password", "mqtt", secret=True),
        topic_prefix=(prefix or "avarnet").rstrip("/"),
        client_id=c.string(m, "client_id", "mqtt", "avarnet"),
        keepalive=c.number(m, "keepalive", "mqtt", 30, 5, 3600, integer=True),
        reconnect_max_s=float(c.number(m, "reconnect_max_s", "mqtt", 30.0, 0.5, 3600.0)),
        discovery=c.boolean(m, "discovery", "mqtt", False),
        discovery_prefix=c.string(m, "discovery_prefix", "mqtt", "homeassistant").strip("/"),
        reviews=c.boolean(m, "reviews", "mqtt", True),
    )
    if not re.match(r"^[^#+\x00]+$", mqtt.discovery_prefix):
        c.error("mqtt.discovery_prefix", "must be a topic without MQTT wildcards '#' or '+'")
    if mqtt.password and not mqtt.username:
        c.error("mqtt.password", "needs mqtt.username")
    if mqtt.ca_certs:
        ca = _resolve(base, mqtt.ca_certs)
        if not ca.is_file():
            c.error("mqtt.ca_certs", f"file not found: {ca}")
        elif not mqtt.tls:
            c.error("mqtt.ca_certs", "needs mqtt.tls: true")
        mqtt = replace(mqtt, ca_certs=str(ca))
    return mqtt


def _web(c: _Checker, top: dict) -> WebConfig:
    """The ``web`` section: where the page listens and what it asks for."""
    w = c.mapping(top.get("web"), "web", {"bind", "port", "token", "password"})
    web = WebConfig(
        bind=c.string(w, "bind", "web", "127.0.0.1"),
        port=c.number(w, "port", "web", DEFAULT_PORT, 0, 65535, integer=True),
        token=c.string(w, "token", "web", secret=True),
        password=c.string(w, "password", "web", secret=True),
    )
    if not _is_address(web.bind):
        c.error("web.bind", f"must be an IP address or a host name, got {web.bind!r}")
    if not web.token and not web.password:
        c.error("web.token", "set web.token or web.password: the page and its API always need one")
    return web


def parse_config(raw: Any, base: Path, path: Path | None = None) -> ServeConfig:
    """Validate a parsed YAML document; raises ConfigError listing every mistake."""
    c = _Checker()
    top = c.mapping(raw, "", TOP_KEYS) if raw is not None else {}
    if raw is None:
        c.error("cameras", "is required (the file is empty)")
    ckpt = c.string(top, "checkpoint", "")
    default_ckpt = _resolve(base, ckpt) if ckpt else None
    cl = c.mapping(top.get("clips"), "clips", {"pre_roll", "post_roll"})
    clips = ClipSettings(
        float(c.number(cl, "pre_roll", "clips", 5.0, 0.0, 300.0)),
        float(c.number(cl, "post_roll", "clips", 5.0, 0.0, 300.0)),
    )
    model = (
        _choice(c, top, "runtime", "", "torch", RUNTIMES),
        _choice(c, top, "precision", "", "fp32", PRECISIONS),
    )
    cams_raw = top.get("cameras")
    cameras: list[CameraConfig] = []
    if raw is not None and not cams_raw:
        c.error("cameras", "is required: at least one camera")
    elif cams_raw and not isinstance(cams_raw, dict):
        c.error("cameras", "must be a mapping of camera name -> settings")
    elif cams_raw:
        for name, cam in cams_raw.items():
            made = _camera(c, name, cam, base, default_ckpt, clips, model)
            if made is not None:
                cameras.append(made)
    s = c.mapping(top.get("storage"), "storage", {"path", "retention"})
    r = c.mapping(s.get("retention"), "storage.retention", {"max_size_mb", "max_age_days"})
    storage = StorageConfig(
        path=_resolve(base, c.string(s, "path", "storage", "avarnet-data")),
        max_size_mb=c.number(r, "max_size_mb", "storage.retention", None, 0.0, 1e9),
        max_age_days=c.number(r, "max_age_days", "storage.retention", None, 0.0, 36500.0),
    )
    mqtt = _mqtt(c, top["mqtt"], base) if top.get("mqtt") is not None else None
    web = _web(c, top)
    webhook = c.string(top, "webhook", "")
    if webhook and not re.match(r"^https?://[^/]+", webhook):
        c.error("webhook", f"must be an http:// or https:// URL, got {redact(webhook)!r}")
    device = c.string(top, "device", "", "cpu")
    if not DEVICE.match(device):
        c.error("device", f"must be cpu, cuda, cuda:N or auto, got {device!r}")
    else:
        named = {
            str(n)
            for n, cam in (cams_raw.items() if isinstance(cams_raw, dict) else [])
            if isinstance(cam, dict) and ("precision" in cam or "runtime" in cam)
        }
        _check_models(c, cameras, device, named)
    cfg = ServeConfig(
        cameras=cameras,
        storage=storage,
        web=web,
        mqtt=mqtt,
        webhook=webhook,
        device=device,
        threads=c.number(top, "threads", "", None, 1, 256, integer=True),
        batch_segments=c.number(top, "batch_segments", "", 16, 1, 512, integer=True),
        queue_segments=c.number(top, "queue_segments", "", 8, 1, 1000, integer=True),
        path=path,
        severity=_severity(c, top.get("severity")),
    )
    names = [cam.name for cam in cameras]
    if raw is not None and cams_raw and not cameras and not c.errors:
        c.error("cameras", "every camera is disabled")
    if len(set(names)) != len(names):
        c.error("cameras", "camera names must be unique")
    if c.errors:
        raise ConfigError(c.errors)
    return cfg


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded, counted without expanding
    anything (each node once); ConfigError past ``MAX_CONFIG_VALUES`` or for a recursive alias."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(["config: not valid YAML (an alias refers to itself)"])
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_VALUES:
                raise ConfigError(
                    [f"config: aliases (*name) expand to more than {MAX_CONFIG_VALUES} values"]
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _check_nodes(node: yaml.Node, path: str) -> None:
    """Duplicate keys are refused (naming the key); a token's or password's plain scalar is kept
    as its literal text (YAML would read ``0123`` as the number 83)."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_nodes(item, f"{path}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        where = f"{path}.{key}" if path else key
        if isinstance(key_node, yaml.ScalarNode):
            if key in seen:
                raise ConfigError([f"{where}: duplicate key (line {key_node.start_mark.line + 1})"])
            seen.add(key)
        if (
            key in SECRET_KEYS
            and isinstance(value_node, yaml.ScalarNode)
            and not (
                value_node.style is None and value_node.value in ("", "~", "null", "Null", "NULL")
            )
        ):
            value_node.tag = "tag:yaml.org,2002:str"
        _check_nodes(value_node, where)


def read_yaml(text: str) -> Any:
    """A configuration document: safe YAML, aliases within a small budget, no duplicate keys,
    secrets as text. Raises ConfigError (one line)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)  # before anything walks the tree: an alias bomb stops here
        _check_nodes(node, "")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        # the problem and where, never the quoted line (it may hold a password)
        mark = getattr(e, "problem_mark", None)
        what = getattr(e, "problem", None) or type(e).__name__
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"config: not valid YAML ({what}{where})"]) from None
    except RecursionError:
        raise ConfigError(["config: not valid YAML (nested too deeply)"]) from None
    finally:
        loader.dispose()


def load_config(path: str | Path) -> ServeConfig:
    """Read and validate a YAML file; raises ConfigError (one line per mistake)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config: file not found: {path}"])
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError([f"config: {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"config: {path} is not UTF-8 text ({e.reason})"]) from None
    try:
        raw = read_yaml(text)
    except ConfigError as e:
        lines = [f"config: {path}: {x[8:]}" if x.startswith("config: ") else x for x in e.lines]
        raise ConfigError(lines) from None
    return parse_config(raw, path.resolve().parent, path)
