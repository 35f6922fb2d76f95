"""`serve` and `export-reviewed`: the camera server and the clips its users reviewed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_OK, EXIT_USAGE


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="camera server: many cameras, events with clips, MQTT, review page (CONFIG.yaml)",
    )
    p.add_argument(
        "config", type=Path, help="YAML file: cameras, checkpoint, alerts, storage, mqtt, web"
    )


def add_export_reviewed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-reviewed", help="reviewed event clips of a server as a class-per-folder dataset"
    )
    p.add_argument(
        "config", type=Path, help="the server's YAML file (its storage holds the events)"
    )
    p.add_argument("--out", type=Path, required=True, help="dataset folder: OUT/<class>/<clip>.mp4")


def _serve_config(a: argparse.Namespace):
    """The server's validated config, or None after printing one line per mistake."""
    from ..apps.serve.config import ConfigError, load_config

    try:
        return load_config(a.config)
    except ConfigError as e:
        for line in e.lines:
            print(f"avarnet {a.command}: {line}", file=sys.stderr)
        return None


def cmd_serve(a: argparse.Namespace) -> int:
    import os

    # before torch loads: idle encoder threads sleep instead of spinning on the cores that the
    # cameras' decoders need
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..apps.serve.app import run_server

    config = _serve_config(a)
    return EXIT_USAGE if config is None else run_server(config)


def cmd_export_reviewed(a: argparse.Namespace) -> int:
    from ..apps.serve.reviewed import export_reviewed

    config = _serve_config(a)
    if config is None:
        return EXIT_USAGE
    if not config.storage.db.is_file():
        print(f"avarnet export-reviewed: no event database at {config.storage.db}", file=sys.stderr)
        return EXIT_USAGE
    r = export_reviewed(config, a.out)
    total = sum(r.classes.values())
    per = ", ".join(f"{c}: {n}" for c, n in sorted(r.classes.items())) or "none"
    print(
        f"exported {total} reviewed clip(s) to {a.out} ({per}); {r.skipped} without a clip on "
        f"disk; {len(r.unknown) + len(r.invalid)} with an unknown class or name; "
        f"{r.removed} stale cop{'y' if r.removed == 1 else 'ies'} removed"
    )
    return EXIT_OK


PARSERS = {
    "serve": add_serve,
    "export-reviewed": add_export_reviewed,
}

COMMANDS = {
    "serve": cmd_serve,
    "export-reviewed": cmd_export_reviewed,
}
