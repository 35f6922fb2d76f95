"""Report pages rendered in headless Chromium (Debian's): every figure loads, no console error.

Screenshots are kept in build/test-artifacts/report/ (or $AVARNET_TEST_ARTIFACTS/report/).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import strict_load
from feature_factory import make_store
from media_factory import clip

from avarnet.apps.ablate import AblationGrid, run_ablation
from avarnet.config import ModelConfig, TrainConfig
from avarnet.evaluate import evaluate
from avarnet.models import create_model
from avarnet.predict import build_prediction, write_timeline
from avarnet.report import write_detection_report
from avarnet.train import train

ARTIFACTS = (
    Path(
        os.environ.get("AVARNET_TEST_ARTIFACTS")
        or Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
    )
    / "report"
)
TINY = dict(hidden=8, stages=2, layers=2, heads=2)


def render(browser, html: Path, name: str):
    """Open a page from disk; returns (page, images [{alt, w, src}], console errors). Screenshot kept."""
    page = browser.new_page(viewport={"width": 1240, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(html.resolve().as_uri(), wait_until="load")
    images = page.evaluate(
        "() => [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, src: i.src.slice(0, 30)}))"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    return page, images, errors


def assert_all_figures_load(images, errors):
    assert images, "the page has no images"
    broken = [i["alt"] for i in images if i["w"] <= 0]
    assert not broken, f"broken images: {broken}"
    assert all(i["src"].startswith("data:image/") for i in images), "an image is not embedded"
    assert not errors, f"console errors: {errors}"


# -- evaluation report ---------------------------------------------------------------------


def relabel_test_clips(store, label: str, new_label: str, count: int):
    """Give ``count`` test clips of ``label`` the truth ``new_label`` in the index; the reopened store."""
    from avarnet.store import INDEX_FILE, FeatureStore

    path = store.root / INDEX_FILE
    records = [json.loads(ln) for ln in path.read_text().splitlines()]
    for r in [r for r in records if r["split"] == "test" and r["label"] == label][:count]:
        r["label"] = new_label
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return FeatureStore.open(store.root)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A small store whose test clips have tiny videos (the 'normal' ones deleted) and a trained
    model, evaluated after one 'abuse' test clip was given the truth 'crash' (so it errs on it)."""
    root = tmp_path_factory.mktemp("eval")
    store = make_store(root / "feats", per_class=9)
    data = Path(store.info["data_root"])
    for e in store.split("test"):
        if e.label != "normal":
            (data / e.source).parent.mkdir(parents=True, exist_ok=True)
            clip(data / e.source, seconds=e.duration, fps=4.0, sample_rate=None)
    run = train(
        store,
        root / "run",
        TrainConfig(epochs=10, batch_size=16, seed=0, device="cpu", lr=3e-3, num_threads=1),
        model_overrides=TINY,
        progress=False,
    )
    store = relabel_test_clips(store, "abuse", "crash", 1)
    out = root / "report"
    metrics = evaluate(run.checkpoint, store, split="test", out=out, device="cpu")
    return store, run, out, metrics


def test_evaluation_report_renders_every_figure(browser, evaluated):
    store, _, out, metrics = evaluated
    html = (out / "report.html").read_text()
    assert not re.search(r'src="(?!data:)', html), "the page must not load anything from beside it"
    page, images, errors = render(browser, out / "report.html", "evaluation")
    assert_all_figures_load(images, errors)
    alts = [i["alt"] for i in images]
    assert {
        "confusion matrix, counts",
        "confusion matrix, row-normalised",
        "t-SNE of input features",
        "t-SNE of hidden features",
    } <= set(alts)
    assert sum(a.startswith("anomaly-score curve of a") for a in alts) == len(store.classes)
    wrong = [p for p in metrics["predictions"] if p["label"] != p["predicted"]]
    assert wrong  # the relabelled clip at least
    text = page.inner_text("body")
    assert "weighted F1" in text and "macro F1" in text
    # misclassified clips with a video have a frame strip; red frames mark wrong segments
    with_video = [p for p in wrong if p["label"] != "normal"]
    assert page.locator(".strip").count() == len(with_video) >= 1
    assert page.locator(".frame.wrong").count() >= 1
    # the deleted 'normal' videos are named in place of their pictures and the page goes on
    assert "video not found" in text
    page.close()


def test_evaluation_metrics_json_is_strict_with_weighted_metrics(evaluated):
    _, _, out, metrics = evaluated
    doc = strict_load((out / "metrics.json").read_text())
    for key in ("precision_weighted", "recall_weighted", "f1_weighted", "averaging"):
        assert key in doc
    assert doc["recall_weighted"] == pytest.approx(doc["accuracy"])


def test_strict_json_when_a_class_has_no_test_clips(evaluated, tmp_path):
    """Drop the 'crash' test clips from the index: its recall / F1 / AP are null with a reason."""
    store, run, _, _ = evaluated
    import shutil

    from avarnet.store import INDEX_FILE, FeatureStore

    copy = tmp_path / "feats"
    shutil.copytree(store.root, copy)
    lines = (copy / INDEX_FILE).read_text().splitlines()
    kept = [
        ln
        for ln in lines
        if not (json.loads(ln)["label"] == "crash" and json.loads(ln)["split"] == "test")
    ]
    assert len(kept) < len(lines)
    (copy / INDEX_FILE).write_text("\n".join(kept) + "\n")
    evaluate(
        run.checkpoint,
        FeatureStore.open(copy),
        split="test",
        out=tmp_path / "eval",
        device="cpu",
        report=False,
    )
    doc = strict_load((tmp_path / "eval" / "metrics.json").read_text())
    crash = doc["per_class"]["crash"]
    assert crash["support"] == 0 and crash["recall"] is None and crash["ap"] is None
    assert "no test clips" in doc["undefined"]["per_class.crash.recall"]
    assert not (tmp_path / "eval" / "report.html").exists()


# -- ablation page -------------------------------------------------------------------------


def test_ablation_results_page_has_a_chart_per_table(browser, tmp_path):
    store = make_store(tmp_path / "feats", per_class=6)
    grid = AblationGrid(models=("gru", "transformer"), modalities=("fused", "audio"), seeds=(0, 1))
    r = run_ablation(store, tmp_path / "abl", grid, epochs=2, model_overrides=TINY, progress=False)
    assert r.page == tmp_path / "abl" / "results.html"
    page, images, errors = render(browser, r.page, "ablation")
    assert_all_figures_load(images, errors)
    # modality tables (macro, weighted) and missing-sense table, each with its chart
    assert page.locator("table").count() == 3 and len(images) == 3
    text = page.inner_text("body")
    assert "support-weighted" in text and "wF1" in text and "±" in text
    md = (tmp_path / "abl" / "results.md").read_text()
    assert "wPre" in md and "macro precision" in md
    page.close()


# -- prediction timeline -------------------------------------------------------------------


def test_timeline_page_seeks_the_video_when_the_curve_is_clicked(browser, tmp_path):
    video = clip(tmp_path / "clip.mp4", seconds=8.0, fps=10.0)
    T = 8
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.2, 0.8, 0.4, 0.1])  # peaks at 2 and 5
    steps = np.stack([1 - scores, scores], axis=1).astype(np.float32)  # classes: normal, fight
    pred = build_prediction(str(video), steps, ["normal", "fight"], 1.0, float(T))
    out = tmp_path / "pred"
    out.mkdir()
    write_timeline(pred, out)
    assert (out / "timeline.png").stat().st_size > 5000
    page, images, errors = render(browser, out / "timeline.html", "timeline")
    assert_all_figures_load(images, errors)
    assert page.get_attribute("video", "src") == "../clip.mp4"  # relative to the page
    page.wait_for_function("document.getElementById('video').readyState >= 1", timeout=10_000)
    layout = json.loads(page.get_attribute("#curve", "data-layout"))
    box = page.locator("#curve").bounding_box()
    target = 5.0  # seconds
    frac = layout["x0"] + (target - layout["t0"]) / (layout["t1"] - layout["t0"]) * (
        layout["x1"] - layout["x0"]
    )
    x = box["x"] + frac * box["width"]
    page.mouse.click(x, box["y"] + box["height"] * 0.2)
    seeked = float(page.get_attribute("#curve", "data-seeked"))
    assert seeked == pytest.approx(target, abs=0.1)
    cursor = page.locator("#cursor").bounding_box()
    assert cursor["x"] == pytest.approx(x, abs=3)  # the cursor sits where the curve was clicked
    page.wait_for_function(
        f"Math.abs(document.getElementById('video').currentTime - {seeked}) < 0.2", timeout=10_000
    )
    page.screenshot(path=str(ARTIFACTS / "timeline-seeked.png"))
    assert not errors
    page.close()


def test_timeline_without_the_video_says_so(tmp_path):
    pred = build_prediction(
        str(tmp_path / "gone.mp4"), np.full((4, 2), 0.5, np.float32), ["normal", "x"], 1.0, 4.0
    )
    write_timeline(pred, tmp_path)
    html = (tmp_path / "timeline.html").read_text()
    assert "video not found" in html and (tmp_path / "timeline.png").exists()


# -- detection report (XD-Violence style) --------------------------------------------------


def test_detection_report_renders(browser, tmp_path):
    from avarnet.metrics import frame_level_metrics, snippet_to_frame_scores

    rng = np.random.default_rng(0)
    videos, ys, ss = [], [], []
    for k in range(4):
        T = 12
        truth = np.zeros(T * 24, np.uint8)
        if k % 2 == 0:
            truth[5 * 24 : 9 * 24] = 1
        scores = np.clip(rng.normal(0.3, 0.1, T) + 0.5 * truth[::24], 0, 1)
        entry = SimpleNamespace(
            id=f"v{k}", label="B1" if k % 2 == 0 else "A", fps=24.0, extra={"name": f"video {k}"}
        )
        videos.append(SimpleNamespace(entry=entry, scores=scores, frame_labels=truth))
        ys.append(truth)
        ss.append(snippet_to_frame_scores(scores, len(truth), 24.0, 1.0))
    y, s = np.concatenate(ys), np.concatenate(ss)
    metrics = frame_level_metrics(y, s) | {
        "n": 4,
        "split": "test",
        "model": "mtcn",
        "modality": "fused",
        "constant_baseline": frame_level_metrics(y, np.zeros_like(s)),
    }
    path = write_detection_report(tmp_path, metrics, videos, y, s, 1.0)
    page, images, errors = render(browser, path, "detection")
    assert_all_figures_load(images, errors)
    assert len(images) == 1 + 4  # PR + ROC, and one curve per video
    page.close()


# -- penultimate features ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mtcn", "gru", "bilstm", "transformer"])
def test_models_expose_penultimate_features_without_changing_forward(name):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, input_dim=6, num_classes=3, **TINY)
    model = create_model(cfg).eval()
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    with torch.no_grad():
        logits = model(x, mask)
        h = model.features(x, mask)
    assert h.shape[:2] == (2, 5) and h.ndim == 3
    head = model.stages[-1].conv_out if name == "mtcn" else model.head
    with torch.no_grad():
        again = head(h.transpose(1, 2)).transpose(1, 2) if name == "mtcn" else head(h)
    valid = mask.unsqueeze(-1)
    assert torch.allclose((again * valid), logits[-1], atol=1e-5)


def test_late_fusion_features_are_both_branches_side_by_side():
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="gru", fusion="late", input_dim=6, video_dim=4, audio_dim=2, num_classes=3, **TINY
    )
    model = create_model(cfg).eval()
    x, mask = torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        h = model.features(x, mask)
        video = model.video_model.features(x[..., :4], mask)
    assert h.shape == (2, 5, 2 * TINY["hidden"]) and torch.equal(h[..., : TINY["hidden"]], video)


def test_pipe_table_pads_columns_and_reads_back():
    from avarnet.report.html import markdown_table, pipe_table

    lines = pipe_table(["Model", "Acc"], [["GRU", "0.50"], ["Transformer", None]])
    assert lines == [
        "| Model       | Acc  |",
        "|-------------|------|",
        "| GRU         | 0.50 |",
        "| Transformer | n/a  |",
    ]
    html = markdown_table(lines)
    assert html.count("<tr>") == 3 and "<td>Transformer</td>" in html
