"""results.html of an ablation grid: each table with a bar chart (mean, std error bars over seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avarnet.plots import plot_grouped_bars
from avarnet.report.html import esc, figure, figure_png, markdown_table, write_page

RESULTS_HTML = "results.html"


@dataclass(frozen=True)
class BarChart:
    """Grouped bars: one cluster per label, one bar per group; means / stds (labels, groups), NaN = no bar."""

    labels: list[str]
    groups: list[str]
    means: np.ndarray
    stds: np.ndarray
    ylabel: str
    title: str


@dataclass(frozen=True)
class Section:
    """One table of the page (as markdown pipe-table lines) and its chart."""

    title: str
    table: list[str]
    chart: BarChart | None = None
    note: str = ""


def write_results_page(
    path: str | Path, title: str, intro: Sequence[str], sections: Sequence[Section]
) -> Path:
    """Write the page; ``intro`` holds paragraphs of plain text (escaped here)."""
    body = [f"<h1>{esc(title)}</h1>"]
    for p in intro:
        cls = ' class="warn"' if p.startswith("WARNING") else ""
        body.append(f"<p{cls}>{esc(p)}</p>")
    for s in sections:
        body.append(f"<h2>{esc(s.title)}</h2>")
        if s.note:
            body.append(f'<p class="meta">{esc(s.note)}</p>')
        body.append(markdown_table(s.table))
        c = s.chart
        if c is not None and np.isfinite(c.means).any():
            png = figure_png(
                plot_grouped_bars,
                c.labels,
                c.groups,
                c.means,
                c.stds,
                ylabel=c.ylabel,
                title=c.title,
            )
            body.append(figure(png, c.title))
    return write_page(Path(path), title, "\n".join(body))
