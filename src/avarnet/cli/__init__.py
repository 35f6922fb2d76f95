"""Command line: parses, calls the library, prints, sets exit codes.

Exit codes: 0 success, 1 partial failure (some inputs failed; listed), 2 usage or input error.

One module per command group, each building its commands' parsers: :mod:`.data` (synth,
extract), :mod:`.train` (train, evaluate, models, ablate), :mod:`.predict` (predict, demo),
:mod:`.xdv` (the xdv group), :mod:`.live` (stream), :mod:`.server` (serve, export-reviewed)
and :mod:`.deploy` (export, quantize, bench); :mod:`.common` holds what they share and
:mod:`.stream_view` the terminal view of `avarnet stream`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import data, deploy, live, predict, server, train, xdv
from .common import EXIT_USAGE, run

GROUPS = (data, train, predict, xdv, live, server, deploy)
# The order `avarnet --help` lists the commands in.
ORDER = (
    "synth",
    "extract",
    "train",
    "evaluate",
    "predict",
    "demo",
    "models",
    "ablate",
    "xdv",
    "stream",
    "export",
    "quantize",
    "serve",
    "export-reviewed",
    "bench",
)
PARSERS = {name: add for group in GROUPS for name, add in group.PARSERS.items()}
COMMANDS = {name: command for group in GROUPS for name, command in group.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avarnet", description="Audio-visual anomaly recognition (AVAR-Net)."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ORDER:
        PARSERS[name](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 success, 1 partial failure, 2 usage or input error, 3 a defect."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an option refused at parse time (argparse printed why)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("avarnet").setLevel(logging.INFO)
    return run(COMMANDS[args.command], args)
