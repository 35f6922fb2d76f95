"""Tests for the ablation grid: which cells run, the result files, resuming after a kill, the CLI."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest
from feature_factory import make_store

import avarnet.apps.ablate as ablate
from avarnet.apps.ablate import (
    RESULT_FILE,
    RUNS_DIR,
    AblationError,
    AblationGrid,
    Cell,
    load_result,
    run_ablation,
)
from avarnet.cli import main
from avarnet.report.ablation import CSV_COLUMNS, main_table, winner_line

TINY = dict(hidden=8, stages=2, layers=2, heads=2)
EPOCHS = 2
GRID = AblationGrid(
    models=("gru", "transformer"),
    modalities=("fused", "audio"),
    fusions=("early", "late"),
    seq_lens=(5, 10),
    seeds=(0, 1),
)
GRID_CELLS = 16  # per model and seed: fused/audio early L10, fused late L10, fused early L5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("feats") / "s", per_class=6)


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    return run_ablation(store, out, GRID, epochs=EPOCHS, model_overrides=TINY, progress=False)


def counting_train(monkeypatch) -> list[str]:
    """Wrap avarnet.apps.ablate.train; returns the list that collects the run folder of every call."""
    calls: list[str] = []
    real = ablate.train

    def wrapper(store, out, cfg, *args, **kwargs):
        calls.append(out.name)
        return real(store, out, cfg, *args, **kwargs)

    monkeypatch.setattr(ablate, "train", wrapper)
    return calls


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_is_the_deduplicated_union_and_late_fusion_only_fuses():
    cells = GRID.cells()
    assert len(cells) == len(set(cells)) == GRID_CELLS
    assert {c.modality for c in cells if c.fusion == "late"} == {"fused"}
    assert {c.seq_len for c in cells if c.modality == "audio"} == {10}
    assert (
        Cell("gru", "fused", "early", 5, 1) in cells
        and Cell("gru", "audio", "early", 5, 0) not in cells
    )
    default = AblationGrid().cells()
    assert len(default) == 6 * 3 * 3 and {(c.fusion, c.seq_len) for c in default} == {("early", 10)}
    assert AblationGrid(seq_lens=(5, 15)).base_seq_len == 5
    assert [m for m in AblationGrid().resolved_models()] == [
        "gru",
        "bigru",
        "lstm",
        "bilstm",
        "transformer",
        "mtcn",
    ]


@pytest.mark.parametrize(
    "grid",
    [
        AblationGrid(models=("nope",)),
        AblationGrid(modalities=("smell",)),
        AblationGrid(fusions=("middle",)),
        AblationGrid(seeds=()),
        AblationGrid(seq_lens=(0,)),
    ],
)
def test_invalid_grids_are_refused(grid):
    with pytest.raises(AblationError):
        grid.cells()


def test_results_csv_has_one_row_per_run_with_the_columns(finished, store):
    rows = read_csv(finished.csv)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == GRID_CELLS and not finished.reused
    keys = {(r["model"], r["modality"], r["fusion"], r["seq_len"], r["seed"]) for r in rows}
    assert len(keys) == GRID_CELLS
    n_test = len(store.split("test"))
    for r in rows:
        correct = float(r["accuracy"]) * n_test  # a fraction of the test clips
        assert correct == pytest.approx(round(correct), abs=1e-6) and 0 <= round(correct) <= n_test
        assert int(r["params"]) > 0 and float(r["train_seconds"]) > 0
        assert (r["accuracy_no_audio"] == "") == (r["modality"] != "fused")
        assert 1 <= int(r["epochs_run"]) <= EPOCHS


def test_results_md_has_the_paper_tables_with_spread_and_warns_about_random_weights(finished):
    md = finished.markdown.read_text()
    assert "RANDOM WEIGHTS" in md and "2 seeds" in md
    for heading in (
        "## Modalities",
        "## Fusion strategy",
        "## Sequence length",
        "## Missing sense",
    ):
        assert heading in md
    rows = [
        [c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln[:1] == "|"
    ]
    assert ["Model", "Audio: Acc", "Pre", "Rec", "F1", "Fused: Acc"] == rows[0][:6]
    assert any(r[-2:] == ["L = 5", "L = 10"] for r in rows)
    assert any(r[1:3] == ["Early Acc", "Late Acc"] for r in rows)
    gru_row = next(line for line in md.splitlines() if line.startswith("| GRU "))
    assert gru_row.count("±") == 8  # two modality groups of four metrics
    assert finished.winner in md and finished.winner.startswith("Best mean accuracy:")
    assert finished.figure is not None and finished.figure.stat().st_size > 5000


def test_rerun_trains_only_the_cell_whose_result_is_missing(
    finished, tmp_path, monkeypatch, store, caplog
):
    out = tmp_path / "copy"
    shutil.copytree(finished.csv.parent, out)
    victim = Cell("transformer", "fused", "late", 10, 1)
    (
        out / RUNS_DIR / victim.key / RESULT_FILE
    ).unlink()  # killed after training, before the result was written
    (out / "results.csv").unlink()
    calls = counting_train(monkeypatch)
    caplog.set_level(logging.INFO, logger="avarnet")
    again = run_ablation(store, out, GRID, epochs=EPOCHS, model_overrides=TINY, progress=False)
    assert calls == [victim.key]
    said = [r.getMessage() for r in caplog.records]
    assert (
        sum(m.startswith("RANDOM WEIGHTS") for m in said) == 1
    )  # once for the grid, not once per run
    assert any("15 of 16 cells already finished" in m for m in said)
    assert again.ran == [victim] and len(again.reused) == GRID_CELLS - 1
    assert len(read_csv(out / "results.csv")) == GRID_CELLS


def test_interrupted_grid_resumes_where_it_stopped(store, tmp_path, monkeypatch):
    grid = AblationGrid(models=("gru",), modalities=("fused", "audio"), seeds=(0, 1))
    real, calls = ablate.train, []

    def dies_on_third(st, out, cfg, *args, **kwargs):
        calls.append(out.name)
        if len(calls) == 3:
            out.mkdir(parents=True)
            (out / "best.ckpt").write_bytes(b"half written")
            raise KeyboardInterrupt
        return real(st, out, cfg, *args, **kwargs)

    monkeypatch.setattr(ablate, "train", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(store, tmp_path, grid, epochs=EPOCHS, model_overrides=TINY, progress=False)
    assert len(read_csv(tmp_path / "results.csv")) == 2
    calls_after = counting_train(monkeypatch)
    r = run_ablation(store, tmp_path, grid, epochs=EPOCHS, model_overrides=TINY, progress=False)
    assert calls_after == [c.key for c in grid.cells()[2:]]
    assert len(r.rows) == 4 and len(read_csv(r.csv)) == 4


def test_results_made_with_other_settings_are_not_reused(finished):
    run_dir = finished.csv.parent / RUNS_DIR / Cell("gru", "audio", "early", 10, 0).key
    settings = ablate.json.loads((run_dir / RESULT_FILE).read_text())["settings"]
    assert load_result(run_dir, settings)["model"] == "gru"
    other = {**settings, "train": {**settings["train"], "epochs": EPOCHS + 1}}
    assert load_result(run_dir, other) is None


def test_tables_and_winner_are_computed_from_the_rows():
    def row(model, modality, seed, acc):
        return {
            "model": model,
            "modality": modality,
            "fusion": "early",
            "seq_len": 10,
            "seed": seed,
            "accuracy": acc,
            "precision": acc,
            "recall": acc,
            "f1": acc,
        }

    rows = [
        row("mtcn", "fused", 0, 0.9),
        row("mtcn", "fused", 1, 0.8),
        row("mtcn", "audio", 0, 0.95),
        row("mtcn", "audio", 1, 0.55),
        row("gru", "fused", 0, 0.6),
        row("gru", "fused", 1, 0.4),
    ]
    line = winner_line(rows, 10)
    assert line.startswith("Best mean accuracy: MTCN on fused input, 85.00% over 2 seeds")
    assert "35.00 points above the runner-up model, GRU (50.00% on fused input)" in line
    tie = winner_line([*rows, row("gru", "audio", 0, 0.85)], 10)
    assert "tied with the runner-up model, GRU (85.00% on audio input)" in tie
    table = main_table(rows, ["gru", "mtcn"], ["fused", "audio"], 10)
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in table}
    assert cells["MTCN"][0] == "75.00 ± 28.28"
    assert cells["GRU"][:5] == ["–", "–", "–", "–", "50.00 ± 14.14"]


def test_cli_ablate_writes_the_files_and_refuses_unknown_models(store, tmp_path):
    def args(model: str) -> list[str]:
        return [
            "-q",
            "ablate",
            str(store.root),
            "--out",
            str(tmp_path),
            "--models",
            model,
            "--modalities",
            "fused",
            "--seeds",
            "0",
            "--epochs",
            str(EPOCHS),
            "--hidden",
            "8",
            "--layers",
            "2",
        ]

    assert main(args("gru")) == 0
    for name in ("results.csv", "results.md", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(read_csv(tmp_path / "results.csv")) == 1
    assert main(args("nope")) == 2
