"""`avarnet serve` configuration: one YAML file, validated on start (one line per mistake).

Example::

    checkpoint: runs/vaar/best.ckpt          # global; a camera may name its own
    device: cpu
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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..alerts import (
    DEFAULT_CLOSE_SEGMENTS,
    DEFAULT_HYSTERESIS,
    DEFAULT_MIN_SEGMENTS,
    DEFAULT_THRESHOLD,
    AlertRule,
)

CAMERA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # also an MQTT topic level and a URL part
DEFAULT_PORT = 5080
DEFAULT_MQTT_PORT = 1883


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
    checkpoint: Path | None = None
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

    def checkpoints(self) -> list[Path]:
        """Distinct checkpoint files, in camera order."""
        out: list[Path] = []
        for cam in self.cameras:
            if cam.checkpoint is not None and cam.checkpoint not in out:
                out.append(cam.checkpoint)
        return out


class _Checker:
    """Collects mistakes as 'key: reason' lines while reading typed values."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, key: str, reason: str) -> None:
        self.errors.append(f"{key}: {reason}")

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
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or (integer and not isinstance(v, int))
        ):
            self.error(
                f"{path}.{key}", f"must be {'an integer' if integer else 'a number'}, got {v!r}"
            )
            return default
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            self.error(f"{path}.{key}", f"must be {rng}, got {v!r}")
            return default
        return v

    def boolean(self, d: dict, key: str, path: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            self.error(f"{path}.{key}", f"must be true or false, got {v!r}")
            return default
        return v

    def string(self, d: dict, key: str, path: str, default=None, required=False):
        v = d.get(key, default)
        if v is None:
            if required:
                self.error(f"{path}.{key}" if path else key, "is required")
            return default
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not v.strip():
            self.error(f"{path}.{key}" if path else key, f"must be a non-empty string, got {v!r}")
            return default
        return v


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _camera(
    c: _Checker, name: Any, raw: Any, base: Path, default_ckpt, clips: ClipSettings
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
    if ckpt_path is None:
        c.error(f"{path}.checkpoint", "no checkpoint: set one here or a global 'checkpoint'")
    elif not ckpt_path.is_file():
        c.error(f"{path}.checkpoint" if ckpt else "checkpoint", f"file not found: {ckpt_path}")
    if source and "://" not in source and input_format is None and not source.startswith("/dev/"):
        src = _resolve(base, source)
        if not src.is_file():
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
        rule=rule,
        ignore=tuple(ignore),
        clips=cam_clips,
        retry_max_s=float(c.number(d, "retry_max_s", path, 30.0, 0.1)),
    )


TOP_KEYS = {
    "cameras",
    "checkpoint",
    "device",
    "threads",
    "batch_segments",
    "queue_segments",
    "clips",
    "storage",
    "mqtt",
    "web",
    "webhook",
}


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
    cams_raw = top.get("cameras")
    cameras: list[CameraConfig] = []
    if raw is not None and not cams_raw:
        c.error("cameras", "is required: at least one camera")
    elif cams_raw and not isinstance(cams_raw, dict):
        c.error("cameras", "must be a mapping of camera name -> settings")
    elif cams_raw:
        for name, cam in cams_raw.items():
            made = _camera(c, name, cam, base, default_ckpt, clips)
            if made is not None:
                cameras.append(made)
    s = c.mapping(top.get("storage"), "storage", {"path", "retention"})
    r = c.mapping(s.get("retention"), "storage.retention", {"max_size_mb", "max_age_days"})
    storage = StorageConfig(
        path=_resolve(base, c.string(s, "path", "storage", "avarnet-data")),
        max_size_mb=c.number(r, "max_size_mb", "storage.retention", None, 0.0),
        max_age_days=c.number(r, "max_age_days", "storage.retention", None, 0.0),
    )
    mqtt = None
    if top.get("mqtt") is not None:
        m = c.mapping(
            top.get("mqtt"),
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
            username=c.string(m, "username", "mqtt"),
            password=c.string(m, "password", "mqtt"),
            topic_prefix=(prefix or "avarnet").rstrip("/"),
            client_id=c.string(m, "client_id", "mqtt", "avarnet"),
            keepalive=c.number(m, "keepalive", "mqtt", 30, 5, 3600, integer=True),
            reconnect_max_s=float(c.number(m, "reconnect_max_s", "mqtt", 30.0, 0.5)),
        )
        if mqtt.password and not mqtt.username:
            c.error("mqtt.password", "needs mqtt.username")
    w = c.mapping(top.get("web"), "web", {"bind", "port", "token", "password"})
    web = WebConfig(
        bind=c.string(w, "bind", "web", "127.0.0.1"),
        port=c.number(w, "port", "web", DEFAULT_PORT, 0, 65535, integer=True),
        token=c.string(w, "token", "web"),
        password=c.string(w, "password", "web"),
    )
    if not web.token and not web.password:
        c.error("web.token", "set web.token or web.password: the page and its API always need one")
    webhook = c.string(top, "webhook", "")
    if webhook and not re.match(r"^https?://[^/]+", webhook):
        c.error("webhook", f"must be an http:// or https:// URL, got {webhook!r}")
    device = c.string(top, "device", "", "cpu")
    if device not in ("cpu", "cuda", "auto") and not str(device).startswith("cuda:"):
        c.error("device", f"must be cpu, cuda, cuda:N or auto, got {device!r}")
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
    )
    names = [cam.name for cam in cameras]
    if raw is not None and cams_raw and not cameras and not c.errors:
        c.error("cameras", "every camera is disabled")
    if len(set(names)) != len(names):
        c.error("cameras", "camera names must be unique")
    if c.errors:
        raise ConfigError(c.errors)
    return cfg


def load_config(path: str | Path) -> ServeConfig:
    """Read and validate a YAML file; raises ConfigError (one line per mistake)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config: file not found: {path}"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(
            [f"config: {path} is not valid YAML ({' '.join(str(e).split())})"]
        ) from None
    return parse_config(raw, path.resolve().parent, path)
