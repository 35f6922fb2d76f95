"""The JSON contracts (schemas/*.schema.json) hold for what the commands really write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import predict_argv, strict_load
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from avarnet.cli import main

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def validator(name: str) -> Draft202012Validator:
    docs = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")}
    registry = Registry().with_resources(
        (d["$id"], Resource.from_contents(d)) for d in docs.values()
    )
    schema = docs[name]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)


def strict_load_file(path: Path):
    """A JSON file that a strict parser accepts (no NaN / Infinity literals)."""
    return strict_load(path.read_text(encoding="utf-8"))


def errors(name: str, doc) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(name).iter_errors(doc)
    ]


@pytest.fixture(scope="module")
def pipeline(tiny_store, tiny_dataset, tmp_path_factory) -> Path:
    """extract -> train -> evaluate -> predict -> stream, through the CLI, on the tiny dataset."""
    root = tmp_path_factory.mktemp("schemas")
    shutil.copytree(tiny_store, root / "feats")
    assert (
        main(
            [
                "-q",
                "train",
                str(root / "feats"),
                "--out",
                str(root / "run"),
                "--epochs",
                "2",
                "--seq-len",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ckpt = str(root / "run" / "best.ckpt")
    assert (
        main(
            [
                "-q",
                "evaluate",
                ckpt,
                str(root / "feats"),
                "--out",
                str(root / "eval"),
                "--no-report",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    video = next(p for p in sorted(tiny_dataset.rglob("*.mp4")) if p.parent.name == "crash")
    assert main(predict_argv(str(video), ckpt, str(root / "pred"), "--device", "cpu")) == 0
    assert main(
        [
            "-q",
            "stream",
            str(video),
            "--checkpoint",
            ckpt,
            "--jsonl",
            str(root / "stream.jsonl"),
            "--threshold",
            "0.01",
            "--no-view",
            "--device",
            "cpu",
        ]
    ) in (0, 1)
    return root


def test_schemas_are_valid_draft_2020_12():
    names = sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
    assert names == [
        "metrics.schema.json",
        "prediction.schema.json",
        "spec.schema.json",
        "stream-record.schema.json",
    ]
    for name in names:
        validator(name)


def test_extract_spec_json_follows_its_schema(pipeline):
    doc = strict_load_file(pipeline / "feats" / "spec.json")
    assert errors("spec.schema.json", doc) == []


def test_metrics_json_follows_its_schema(pipeline):
    doc = strict_load_file(pipeline / "eval" / "metrics.json")
    assert errors("metrics.schema.json", doc) == []


def test_prediction_json_follows_its_schema(pipeline):
    doc = strict_load_file(pipeline / "pred" / "prediction.json")
    assert doc["segments"], "a prediction holds at least one segment"
    assert errors("prediction.schema.json", doc) == []


def test_stream_records_follow_their_schema(pipeline):
    lines = (pipeline / "stream.jsonl").read_text(encoding="utf-8").splitlines()
    records = [
        json.loads(line, parse_constant=lambda t: pytest.fail(f"non-standard constant {t}"))
        for line in lines
    ]
    kinds = [r["type"] for r in records]
    assert kinds[-1] == "summary" and "segment" in kinds and "event" in kinds
    for r in records:
        assert errors("stream-record.schema.json", r) == [], r


def test_schemas_refuse_what_breaks_the_contract(pipeline):
    pred = strict_load_file(pipeline / "pred" / "prediction.json")
    pred["segments"][0]["anomaly_score"] = 1.5
    del pred["label"]
    assert len(errors("prediction.schema.json", pred)) == 2
    metrics = strict_load_file(pipeline / "eval" / "metrics.json")
    metrics["accuracy"] = "high"
    assert errors("metrics.schema.json", metrics)
    assert errors("stream-record.schema.json", {"type": "segment", "segment": -1}) != []
