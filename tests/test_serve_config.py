"""`avarnet serve`'s configuration file: every mistake is one line naming its key, exit 2, before
anything starts; hostile YAML (alias bombs, duplicate keys, non-finite numbers) is refused."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from avarnet.apps.serve.config import ConfigError, load_config
from avarnet.cli import main

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "m.ckpt").write_bytes(b"not read while checking the config")
    (tmp_path / "cam.mp4").write_bytes(b"not read while checking the config")
    return tmp_path


def config(**parts) -> str:
    """A valid configuration text with the given top-level blocks replaced (raw YAML)."""
    blocks = {
        "checkpoint": "m.ckpt",
        "cameras": "\n  yard:\n    source: cam.mp4",
        "storage": "{path: st}",
        "web": "{token: a-good-token}",
        **parts,
    }
    return "".join(f"{k}: {v}\n" for k, v in blocks.items() if v is not None)


def serve(folder, text: str, capsys) -> tuple[int, list[str]]:
    """(2, the error lines) for a refused configuration, (0, []) for a valid one; each line is
    one line naming a key (the command line prints them as they are, with exit code 2)."""
    path = folder / "serve.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as e:
        assert all("\n" not in line and "Traceback" not in line for line in e.lines)
        return 2, e.lines
    return 0, []


def test_the_base_config_is_valid(folder):
    (folder / "ok.yaml").write_text(config())
    assert load_config(folder / "ok.yaml").cameras[0].name == "yard"


@pytest.mark.parametrize(
    "parts, key",
    [
        ({"clips": "{pre_roll: .nan}"}, "clips.pre_roll: must be a finite number"),
        (
            {"cameras": "\n  yard:\n    source: cam.mp4\n    clips: {post_roll: .inf}"},
            "cameras.yard.clips.post_roll: must be a finite number",
        ),
        (
            {"storage": "{path: st, retention: {max_age_days: .nan}}"},
            "storage.retention.max_age_days: must be a finite number",
        ),
        (
            {"storage": "{path: st, retention: {max_size_mb: .inf}}"},
            "storage.retention.max_size_mb: must be a finite number",
        ),
        (
            {"mqtt": "{host: 127.0.0.1, reconnect_max_s: .inf}"},
            "mqtt.reconnect_max_s: must be a finite number",
        ),
        (
            {"cameras": "\n  yard:\n    source: cam.mp4\n    retry_max_s: .nan"},
            "cameras.yard.retry_max_s: must be a finite number",
        ),
    ],
)
def test_non_finite_numbers_are_refused(folder, capsys, parts, key):
    code, lines = serve(folder, config(**parts), capsys)
    assert code == 2 and lines == [key + lines[0][len(key) :]] and lines[0].startswith(key)


def test_an_alias_bomb_is_refused_at_once(folder, capsys):
    start = time.process_time()
    code, lines = serve(folder, config() + BOMB, capsys)
    assert code == 2 and len(lines) == 1 and "aliases (*name) expand to more than" in lines[0]
    assert time.process_time() - start < 2.0
    code, lines = serve(folder, config(device="&d [*d]"), capsys)
    assert code == 2 and lines == [
        f"config: {folder / 'serve.yaml'}: not valid YAML (an alias refers to itself)"
    ]


def test_a_few_aliases_are_fine(folder):
    """yaml.safe_dump writes an alias for a mapping two cameras share: such a file loads."""
    shared = {"threshold": 0.7, "min_segments": 2}
    cams = {n: {"source": "cam.mp4", "alerts": shared} for n in ("yard", "gate")}
    text = yaml.safe_dump({"checkpoint": "m.ckpt", "cameras": cams, "web": {"token": "a-token"}})
    assert "*id" in text
    (folder / "a.yaml").write_text(text)
    cfg = load_config(folder / "a.yaml")
    assert [c.rule.threshold for c in cfg.cameras] == [0.7, 0.7]


@pytest.mark.parametrize(
    "text, line",
    [
        (
            config(cameras="\n  yard:\n    source: cam.mp4\n  yard:\n    source: cam.mp4"),
            "cameras.yard: duplicate key (line 5)",
        ),
        (config(web="\n  token: first-token\n  token: second-token"), "web.token: duplicate key"),
        (config() + "device: cpu\ndevice: cuda\n", "device: duplicate key"),
    ],
)
def test_duplicate_keys_are_refused_naming_the_key(folder, capsys, text, line):
    code, lines = serve(folder, text, capsys)
    assert code == 2 and len(lines) == 1 and line in lines[0], lines


def test_tokens_and_passwords_are_the_literal_text(folder):
    path = folder / "s.yaml"
    path.write_text(
        config(
            web="{token: 0123, password: 1e3}",
            mqtt="{host: h, username: 0o17, password: 0x1F}",
        )
    )
    cfg = load_config(path)
    assert (cfg.web.token, cfg.web.password) == ("0123", "1e3")
    assert (cfg.mqtt.username, cfg.mqtt.password) == ("0o17", "0x1F")


def test_a_token_that_is_not_text_is_refused_without_repeating_it(folder, capsys):
    code, lines = serve(folder, config(web="{token: [hunter2x]}"), capsys)
    assert code == 2 and lines[0] == "web.token: must be a non-empty string, got a list"
    assert "hunter2x" not in "\n".join(lines)


@pytest.mark.parametrize(
    "parts, line",
    [
        ({"device": "cuda:abc"}, "device: must be cpu, cuda, cuda:N or auto, got 'cuda:abc'"),
        ({"device": "'cuda:'"}, "device: must be"),
        ({"checkpoint": '"m\\0.ckpt"'}, "checkpoint: must not contain a NUL character"),
        (
            {"cameras": '\n  yard:\n    source: "cam\\0.mp4"'},
            "cameras.yard.source: must not contain a NUL character",
        ),
        ({"storage": '{path: "st\\0x"}'}, "storage.path: must not contain a NUL character"),
        (
            {"mqtt": "{host: 127.0.0.1, tls: true, ca_certs: missing-ca.pem}"},
            "mqtt.ca_certs: file not found",
        ),
        ({"mqtt": "{host: 127.0.0.1, ca_certs: m.ckpt}"}, "mqtt.ca_certs: needs mqtt.tls: true"),
        ({"web": "{token: a-good-token, bind: 'not an address'}"}, "web.bind: must be an IP"),
        ({"web": "{token: a-good-token, bind: '127.0.0.1:5080'}"}, "web.bind: must be an IP"),
        ({"web": "{token: a-good-token, bind: 300.1.1.1}"}, "web.bind: must be an IP"),
        ({"web": "{token: a-good-token, bind: 'http://x'}"}, "web.bind: must be an IP"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(folder, capsys, parts, line):
    code, lines = serve(folder, config(**parts), capsys)
    assert code == 2 and lines[0].startswith(line), lines


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "::1", "localhost", "cam-server.lan"])
def test_valid_bind_addresses(folder, bind):
    (folder / "b.yaml").write_text(config(web=f"{{token: a-good-token, bind: '{bind}'}}"))
    assert load_config(folder / "b.yaml").web.bind == bind


def test_no_credential_in_a_config_error_line(folder, capsys):
    code, lines = serve(
        folder,
        config(
            webhook="ftp://hookuser:hooksecret99@hooks.example.com/x?token=tok3nvalue",
            cameras="\n  yard:\n    source: rtsp://cam:campass77@10.0.0.5/s\n    loop: true"
            "\n  gate:\n    source: rtsp:/cam:campass77@10.0.0.5/s",  # a typo: one slash
            mqtt="{host: h, password: 12345678}",
        ),
        capsys,
    )
    text = "\n".join(lines)
    assert code == 2 and "webhook:" in text and "cameras.yard.loop" in text
    assert "mqtt.password: needs mqtt.username" in text
    assert "cameras.gate.source: neither a file nor a URL" in text
    for secret in ("hooksecret99", "tok3nvalue", "campass77", "12345678"):
        assert secret not in text


def test_yaml_syntax_errors_do_not_quote_the_line(folder, capsys):
    code, lines = serve(folder, "web: {token: s3cretvalue\ncameras: [\n", capsys)
    assert code == 2 and len(lines) == 1 and "not valid YAML" in lines[0]
    assert "s3cretvalue" not in lines[0]


def test_booleans_are_not_numbers_in_checkpoint_metadata(tmp_path):
    """`seq_len: true` is not the number 1, in any config dataclass and so in a checkpoint."""
    from conftest import untrained_checkpoint
    from safetensors import safe_open
    from safetensors.torch import save_file

    from avarnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from avarnet.config import FeatureSpec, ModelConfig, TrainConfig

    for cls, field in ((TrainConfig, "seq_len"), (ModelConfig, "hidden"), (TrainConfig, "lr")):
        with pytest.raises(ValueError, match=f"{field} must be a number"):
            cls.from_dict({field: True})
    spec = FeatureSpec(video_dim=8, audio_dim=8)
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, untrained_checkpoint(spec, seq_len=4))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    train = json.loads(meta["train_config"])
    train["seq_len"] = True
    meta["train_config"] = json.dumps(train)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="seq_len"):
        load_checkpoint(path)


def test_the_command_line_prints_each_mistake_on_one_line_and_exits_2(folder, capsys):
    path = folder / "serve.yaml"
    path.write_text(config(clips="{pre_roll: .nan}", device="cuda:abc"))
    assert main(["serve", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "avarnet serve: clips.pre_roll: must be a finite number, got nan",
        "avarnet serve: device: must be cpu, cuda, cuda:N or auto, got 'cuda:abc'",
    ]
    path.write_text(config() + BOMB)
    assert main(["serve", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aliases (*name) expand to more than" in err[0]
