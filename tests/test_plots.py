"""Figures: confusion matrix, timeline, score curve, PR / ROC, bars; and the helpers they use."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from avarnet.inference import build_prediction
from avarnet.plots import (
    peak_indices,
    plot_confusion,
    plot_grouped_bars,
    plot_pr_roc,
    plot_score_curve,
    plot_timeline,
    truth_spans,
)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.size


def test_peak_indices():
    assert peak_indices(np.array([0.1, 0.2, 0.9, 0.3, 0.2, 0.8, 0.4, 0.1]), 3) == [2, 5]
    assert peak_indices(np.linspace(0, 1, 10), 3) == [9]
    assert peak_indices(np.array([0.5]), 3) == [0]
    assert peak_indices(np.array([]), 3) == []


def test_truth_spans():
    assert truth_spans(np.array([0, 1, 1, 0, 0, 1])) == [(1, 3), (5, 6)]
    assert truth_spans(np.ones(3)) == [(0, 3)] and truth_spans(np.zeros(4)) == []


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_png_with_an_empty_row(normalize):
    buf = io.BytesIO()
    plot_confusion(np.array([[3, 1, 0], [0, 0, 0], [1, 0, 2]]), ["a", "b", "c"], buf,
                   title="t", normalize=normalize)  # fmt: skip
    w, h = png_size(buf.getvalue())
    assert w > 200 and h > 200


def test_timeline_layout_maps_the_curve_to_seconds(tmp_path, rng):
    steps = rng.dirichlet(np.ones(3), size=12).astype(np.float32)
    pred = build_prediction("v.mp4", steps, ["crash", "normal", "pain"], 0.5, 5.8)
    plain = plot_timeline(pred, tmp_path / "t.png")
    thumbs = [(1.0, np.zeros((32, 48, 3), np.uint8)), (4.0, np.full((32, 48, 3), 255, np.uint8))]
    with_thumbs = plot_timeline(pred, tmp_path / "u.png", thumbnails=thumbs)
    for layout in (plain, with_thumbs):
        assert 0.0 < layout["x0"] < layout["x1"] < 1.0
        assert layout["t0"] == 0.0 and layout["t1"] == pytest.approx(5.8, abs=0.5)
    (w, h), (w2, h2) = (png_size((tmp_path / n).read_bytes()) for n in ("t.png", "u.png"))
    assert w > 300 and h2 > h  # the thumbnails get a row of their own under the curve


def test_curves_and_bars_write_pngs(tmp_path, rng):
    y = np.array([0, 0, 1, 1, 0, 1])
    plot_pr_roc(y, rng.random(6), tmp_path / "pr.png", title="x")
    plot_score_curve(rng.random(8), 1.0, tmp_path / "s.png", np.repeat([0, 1, 0, 1], 48), 24.0)
    for name in ("pr.png", "s.png"):
        assert png_size((tmp_path / name).read_bytes())[0] > 200, name
    means = np.array([[0.5, np.nan], [0.7, 0.6], [0.2, 0.3], [0.9, 0.8], [0.4, 0.1]])
    plot_grouped_bars(["a", "b"], ["x", "y"], means[:2], np.zeros((2, 2)), tmp_path / "b2.png")
    plot_grouped_bars(list("abcde"), ["x", "y"], means, np.zeros((5, 2)), tmp_path / "b5.png")
    w2, w5 = (png_size((tmp_path / n).read_bytes())[0] for n in ("b2.png", "b5.png"))
    assert w5 > w2  # the figure widens with the number of clusters
