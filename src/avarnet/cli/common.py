"""What every command group shares: exit codes, option types with their range checks, the
options and helpers several commands take, and the one-line error for a failed command."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from ..config import FeatureSpec, TrainConfig
from ..errors import Terminated

log = logging.getLogger("avarnet")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3
MIN_SEGMENT_SECONDS = 0.02  # one Wav2Vec2 frame (20 ms); shorter segments could hold no audio frame
MAX_SEQ_LEN = 100_000  # segments per window (about 28 h of 1-s segments)
MAX_FRAMES_PER_SEGMENT = 64
# Choices come from the configuration's lists (config.py) and defaults from its dataclasses;
# tests/test_cli.py checks every option against them.
DEVICE = TrainConfig().device
SPEC = FeatureSpec()


def number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse ``type`` that parses ``kind`` and checks the range at parse time (finite only)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(
                f"must be {' and '.join(x for x in (lo, hi) if x)}, got {text}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = number(int, 1)
COUNT = number(int, 0)
SEED = number(int, 0, 2**32 - 1)
THREADS = number(int, 0, 1024)
WORKERS = number(int, 0, 1024)
SEQ_LEN = number(int, 1, MAX_SEQ_LEN)
FRAMES_PER_SEGMENT = number(int, 1, MAX_FRAMES_PER_SEGMENT)
POSITIVE_FLOAT = number(float, 0, low_open=True)
NON_NEGATIVE_FLOAT = number(float, 0)
SEGMENT_SECONDS = number(float, MIN_SEGMENT_SECONDS)
PROBABILITY = number(float, 0, 1)
FRACTION = number(float, 0, 0.99)


def model_name(text: str) -> str:
    from ..models import list_models  # imported only when a model is named

    if text not in list_models():
        raise argparse.ArgumentTypeError(
            f"unknown model {text!r}; available: {', '.join(list_models())}"
        )
    return text


def add_backbone_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--video-backbone",
        help="MobileViT folder or hub id to use instead of the one the checkpoint "
        "records (must be the same backbone: checked)",
    )
    p.add_argument(
        "--audio-backbone", help="Wav2Vec2 folder or hub id instead of the recorded one (checked)"
    )


def checkpoint_with_backbones(a: argparse.Namespace):
    """The checkpoint of ``a.checkpoint``, its feature spec pointing at --video/--audio-backbone if given."""
    from ..checkpoint import load_checkpoint
    from ..runtime import resolve_device

    ckpt = load_checkpoint(a.checkpoint, resolve_device(a.device))
    changes = {
        k: v
        for k, v in (("video_backbone", a.video_backbone), ("audio_backbone", a.audio_backbone))
        if v
    }
    ckpt.spec = ckpt.spec.replace(**changes)
    return ckpt


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def trained(r) -> int:
    """The one line a finished training prints (supervised or weak)."""
    print(
        f"best epoch {r.best_epoch} (val loss {r.best_val_loss:.4f}), {r.params} parameters, "
        f"{r.seconds:.0f}s -> {r.checkpoint}"
    )
    return EXIT_OK


def evaluation(a: argparse.Namespace) -> dict:
    """The arguments every evaluation command passes on as they are."""
    return {"split": a.split, "out": a.out, "drop": a.drop, "device": a.device}


def remedy_options(e: BaseException) -> str:
    """The options for an error's remedies (library settings), e.g. `` [--weights random]``."""
    flags = []
    for remedy in getattr(e, "remedies", ()):
        name, _, value = remedy.partition("=")
        flag = "--" + name.replace("_", "-")
        flags.append(f"{flag} {value}" if value else flag)
    return f" [{' | '.join(flags)}]" if flags else ""


def error_line(e: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for an error the user can act on; None for a defect of avarnet."""
    from ..errors import AvarnetError, environment_error_line

    if isinstance(e, AvarnetError):
        return str(e) + remedy_options(e), EXIT_USAGE
    if isinstance(e, OSError):
        line = environment_error_line(e)
        return (line, EXIT_USAGE) if line else None
    if isinstance(e, MemoryError):
        return "out of memory", EXIT_BUG
    return None


# Commands that skip what an earlier run finished: videos in a store, cells of a grid.
RESUMABLE = ("extract", "ablate", "xdv import")


def run(command, args: argparse.Namespace) -> int:
    """Run one parsed command: its exit code, or one line and an exit code for an error."""
    debug = args.debug or os.environ.get("AVARNET_DEBUG", "") not in ("", "0")
    try:
        return command(args)
    except KeyboardInterrupt as e:
        name = " ".join(filter(None, (args.command, getattr(args, "xdv_command", None))))
        then = (
            "finished work is kept; run the same command again to resume"
            if name in RESUMABLE
            else "nothing resumes it; run the command again to start over"
        )
        how, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"avarnet {name}: {how}: {then}", file=sys.stderr)
        return code
    except Exception as e:
        known = error_line(e)
        if known is not None and not debug:
            print(f"avarnet {args.command}: error: {known[0]}", file=sys.stderr)
            return known[1]
        if debug:
            raise
        where = e.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        frame = (
            f" at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else ""
        )
        message = " ".join(str(e).split())[:200]
        print(
            f"avarnet {args.command}: internal error{frame}: {type(e).__name__}: {message} "
            f"(a defect in avarnet; run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_BUG
