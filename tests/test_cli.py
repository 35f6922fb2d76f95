"""The whole job through the library's demo entry point, and the CLI's error contract."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import subprocess
import sys

import pytest

from avarnet.apps.demo import DemoOptions, run_demo
from avarnet.cli import build_parser, main
from avarnet.config import (
    AUDIO_MODES,
    DEFAULT_AUDIO_CONTEXT_S,
    DEVICES,
    FUSIONS,
    LATE_COMBINES,
    MODALITIES,
    PRECISIONS,
    RUNTIMES,
    SENSES,
    SPLITS,
    WEIGHTS,
    FeatureSpec,
    ModelConfig,
    TrainConfig,
)
from avarnet.store import FeatureStore


def tiny_demo(tiny_backbones, **changes) -> DemoOptions:
    vdir, adir = tiny_backbones
    return DemoOptions(clips_per_class=3, device="cpu", video_backbone=str(vdir),
                       audio_backbone=str(adir), **changes)  # fmt: skip


@pytest.mark.slow
def test_demo_runs_every_stage_and_falls_back_to_random_weights_with_a_warning(
    tiny_backbones, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from avarnet.apps import demo

    # the requested pretrained video backbone cannot be loaded; the random fallback uses the tiny configs
    opts = tiny_demo(tiny_backbones, duration=(1.5, 2.0), epochs=3)
    monkeypatch.setattr(
        demo, "choose_weights", lambda o: ("random", "no-such/model could not be loaded")
    )
    with caplog.at_level(logging.WARNING, logger="avarnet"):
        s = run_demo(tmp_path / "demo", opts, progress=False)
    # every stage ran into the one folder
    assert s["videos"] == 30 and s["extraction_failures"] == 0
    metrics = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())
    cm = metrics["confusion_matrix"]
    assert s["test_clips"] == metrics["n"] == sum(map(sum, cm)) == 10
    assert s["test_accuracy"] == metrics["accuracy"] == sum(cm[i][i] for i in range(len(cm))) / 10
    for key in ("report", "confusion_matrix", "timeline"):
        assert (tmp_path / "demo").joinpath(s[key].split("demo/", 1)[1]).exists()
    assert (
        json.loads((tmp_path / "demo" / "summary.json").read_text())["true_label"]
        == s["true_label"]
    )
    # and says, everywhere, that its features come from random weights
    assert (
        s["weights_note"] == "RANDOM WEIGHTS (offline fallback): no-such/model could not be loaded"
    )
    assert any("falling back to random weights" in r.getMessage() for r in caplog.records)
    store = FeatureStore.open(metrics["features"])  # the features really come from random weights
    assert metrics["weights"] == store.spec.weights == "random" and store.spec.random_init
    assert store.load_encoder_state() is not None  # BatchNorm calibrated on the demo's frames


def test_choose_weights_reports_why(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from avarnet.apps.demo import choose_weights

    weights, reason = choose_weights(DemoOptions(video_backbone="no-such-org/no-model"))
    assert weights == "random" and "random weights" in reason


def test_module_entry_point_and_usage_errors(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "avarnet", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "extract" in r.stdout
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "avarnet extract" in err[0]
    assert (
        main(
            [
                "extract",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "f"),
                "--weights",
                "random",
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_text("x")
    assert main(["predict", str(bad), "--checkpoint", str(bad)]) == 2


def test_models_command_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("mtcn", "gru", "bigru", "lstm", "bilstm", "transformer"))


# ---------------------------------------------------------------- options vs configuration


def subcommand_parsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict:
    """{"train": parser, "xdv train": parser, ...} for every (nested) subcommand."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[prefix + name] = sub
                out |= subcommand_parsers(sub, prefix + name + " ")
    return out


def option_config_map() -> dict[str, tuple[type, ...]]:
    """The dataclasses whose fields a command's options set."""
    from avarnet.alerts import AlertRule
    from avarnet.apps.ablate import AblationGrid
    from avarnet.apps.bench import BenchOptions
    from avarnet.stream import StreamOptions
    from avarnet.weak import WeakConfig

    return {
        "extract": (FeatureSpec,),
        "train": (TrainConfig,),
        "demo": (DemoOptions,),
        "ablate": (AblationGrid, TrainConfig, ModelConfig),
        "xdv train": (WeakConfig,),
        "stream": (AlertRule, StreamOptions),
        "bench": (BenchOptions,),
    }


def allowed_values() -> dict[str, tuple]:
    """Field name -> the constant its dataclass checks it against."""
    from avarnet import weak

    return {
        "modality": MODALITIES,
        "modalities": MODALITIES,
        "fusion": FUSIONS,
        "fusions": FUSIONS,
        "device": DEVICES,
        "weights": WEIGHTS,
        "audio_mode": AUDIO_MODES,
        "precision": PRECISIONS,
        "runtime": RUNTIMES,
        "objective": weak.OBJECTIVES,
        "runtimes": RUNTIMES,
        "late_combine": LATE_COMBINES,
    }


RENAMED = {"audio_features": "audio_mode", "audio_context": "audio_context_seconds"}
# Options whose default differs from the field's on purpose.
OWN_DEFAULTS = {
    ("ablate", "threads"): 1,  # one thread per run: small models run fastest so
    # the spec's field is 0 for chunked audio; a causal extraction's look-back defaults to this
    ("extract", "audio_context"): DEFAULT_AUDIO_CONTEXT_S,
}


def same_text(text: str, value) -> bool:
    """Whether a default written in a help text is ``value`` (or its one element)."""
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return re.fullmatch(r"\d+(\.\d+)?", text) is not None and float(text) == value
    return text == str(value)


def as_value(value):
    return tuple(value) if isinstance(value, list | tuple) else value


def disagreements(
    configs: dict[str, tuple[type, ...]], allowed: dict[str, tuple], checked: set | None = None
) -> list[str]:
    """Every option that names a config field with another default or other choices."""
    bad, checked = [], set() if checked is None else checked
    for command, sub in subcommand_parsers(build_parser()).items():
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            for cls in configs.get(command, ()):
                fields = {f.name: f for f in dataclasses.fields(cls)}
                name = action.dest if action.dest in fields else RENAMED.get(action.dest)
                if name not in fields:
                    continue
                where = f"{command} {action.option_strings[-1]} vs {cls.__name__}.{name}"
                checked.add(f"{command} {action.option_strings[-1]}")
                default = as_value(getattr(cls(), name))
                expected = OWN_DEFAULTS.get((command, action.dest), default)
                if action.default is not None and as_value(action.default) != expected:
                    bad.append(f"{where}: default {action.default!r} != {default!r}")
                stated = re.search(r"default (\w+(?:\.\d+)?)\)", action.help or "")
                if action.default is None and stated and not same_text(stated[1], expected):
                    bad.append(
                        f"{where}: help says default {stated[1]}, the field's is {expected!r}"
                    )
                if name in allowed:
                    if action.choices is None:
                        bad.append(f"{where}: no choices, the field allows {allowed[name]}")
                    elif tuple(action.choices) != tuple(allowed[name]):
                        bad.append(f"{where}: choices {action.choices} != {allowed[name]}")
    return bad


def test_options_agree_with_the_configuration_dataclasses():
    checked: set[str] = set()
    assert not disagreements(option_config_map(), allowed_values(), checked)
    assert {
        "extract --audio-features",
        "extract --precision",
        "extract --runtime",
        "train --modality",
        "train --device",
        "ablate --fusions",
        "ablate --batch-size",
        "xdv train --objective",
        "stream --min-segments",
        "bench --runtimes",
        "demo --weights",
    } <= checked
    assert len(checked) >= 50


def test_a_changed_dataclass_default_or_choice_list_is_caught():
    from avarnet.weak import WeakConfig

    @dataclasses.dataclass(frozen=True)
    class Longer(TrainConfig):
        seq_len: int = 12

    @dataclasses.dataclass(frozen=True)
    class Coarser(FeatureSpec):
        segment_seconds: float = 2.0

    bad = sorted(disagreements({"train": (Longer,), "extract": (Coarser,)}, allowed_values()))
    assert bad == [
        "extract --segment-seconds vs Coarser.segment_seconds: default 1.0 != 2.0",
        "train --seq-len vs Longer.seq_len: default 10 != 12",
    ]

    @dataclasses.dataclass(frozen=True)
    class Shorter(WeakConfig):
        max_seq_len: int = 100

    bad = disagreements({"xdv train": (Shorter,)}, allowed_values())
    assert bad == [
        "xdv train --max-seq-len vs Shorter.max_seq_len: help says default 200, the field's is 100"
    ]
    fewer = allowed_values() | {"modality": ("fused", "video")}
    assert [b for b in disagreements(option_config_map(), fewer) if "--modality " in b]


def test_every_shared_option_offers_the_shared_choices():
    shared = {"device": DEVICES, "split": SPLITS, "drop": SENSES, "weights": WEIGHTS}
    seen = set()
    for command, sub in subcommand_parsers(build_parser()).items():
        for action in sub._actions:
            if action.dest in shared:
                assert tuple(action.choices) == shared[action.dest], (command, action.dest)
                seen.add(action.dest)
            if action.dest in ("precision", "precisions"):
                assert set(action.choices) <= set(PRECISIONS), (command, action.dest)
            if action.dest in ("runtime", "runtimes"):
                assert tuple(action.choices) == RUNTIMES, (command, action.dest)
    assert seen == set(shared)


def test_dataclasses_refuse_values_outside_the_choice_lists():
    from avarnet.errors import InvalidArgumentError

    for bad in (
        lambda: TrainConfig(modality="both"),
        lambda: TrainConfig(fusion="middle"),
        lambda: TrainConfig(device="tpu"),
        lambda: ModelConfig(fusion="middle"),
        lambda: ModelConfig(late_combine="max"),
        lambda: FeatureSpec(precision="fp64"),
        lambda: FeatureSpec(runtime="tensorrt"),
        lambda: FeatureSpec(runtime="onnx", precision="bf16"),  # an export runs fp32 or int8
    ):
        with pytest.raises(InvalidArgumentError, match="must be one of"):
            bad()
    assert TrainConfig(device="cuda:1").device == "cuda:1"


def test_model_option_takes_every_registered_model():
    from avarnet.models import list_models

    train = subcommand_parsers(build_parser())["train"]
    model = next(a for a in train._actions if a.dest == "model")
    assert model.default == TrainConfig().model in list_models()
    assert [model.type(name) for name in list_models()] == list_models()
    with pytest.raises(argparse.ArgumentTypeError, match="unknown model"):
        model.type("no-such-model")


def test_library_error_gets_its_remedies_as_options(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    (data / "clip.mp4").write_bytes(b"")
    code = main(
        ["extract", str(tmp_path / "data"), "--out", str(tmp_path / "f")]
        + ["--video-backbone", "no-such-org/no-model"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].endswith("random weights [--video-backbone DIR | --weights random]")


@pytest.mark.parametrize(
    ("command", "sub", "resumes"),
    [
        ("extract", None, True),
        ("xdv", "import", True),
        ("train", None, False),
        ("xdv", "train", False),
    ],
)
def test_ctrl_c_says_whether_running_again_resumes(command, sub, resumes, capsys):
    """Ctrl-C is one line; only commands that skip finished work promise to resume."""
    from avarnet.cli.common import run

    def interrupted(args):
        raise KeyboardInterrupt

    args = argparse.Namespace(command=command, xdv_command=sub, debug=False)
    assert run(interrupted, args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    name = " ".join(filter(None, (command, sub)))
    assert len(err) == 1 and err[0].startswith(f"avarnet {name}: interrupted")
    assert ("run the same command again to resume" in err[0]) == resumes
