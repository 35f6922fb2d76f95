"""HTML building blocks: embedded images, tables, one page template, atomic writing."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from avarnet.io import atomic_write_text

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1180px; padding: 0 16px; color: #1b1f23; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em;
border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 1.0em; margin: 1em 0 0.3em; }
.meta { color: #57606a; font-size: 0.9em; }
.warn { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 8px 12px; margin: 10px 0; }
.missing { background: #f6f8fa; border: 1px dashed #aaa; color: #57606a; padding: 10px 12px;
           margin: 6px 0; font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.85em; }
td { white-space: nowrap; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; }
td.na { color: #8c959f; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card .v { font-size: 1.4em; font-weight: 600; } .card .k { color: #57606a; font-size: 0.8em; }
.figs { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; } figcaption { color: #57606a; font-size: 0.85em; max-width: 560px; }
img { max-width: 100%; }
.strip { display: flex; gap: 4px; flex-wrap: wrap; margin: 4px 0 14px; }
.frame { text-align: center; font-size: 0.75em; border: 2px solid #2da44e; padding: 2px; }
.frame.wrong { border-color: #cf222e; color: #cf222e; }
.frame img { display: block; height: 84px; }
.wrong-text { color: #cf222e; font-weight: 600; } .ok-text { color: #1a7f37; font-weight: 600; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_png(plot: Callable[..., object], *args, **kwargs) -> bytes:
    """PNG bytes of a plots.py function, called as plot(*args, <file object>, **kwargs)."""
    buf = io.BytesIO()
    plot(*args, buf, **kwargs)
    return buf.getvalue()


def jpeg_bytes(frame: np.ndarray, quality: int = 80) -> bytes:
    """JPEG of an RGB uint8 frame (H, W, 3)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def img(data: bytes, alt: str, mime: str = "image/png", attrs: str = "") -> str:
    return f'<img src="{data_uri(data, mime)}" alt="{esc(alt)}"{(" " + attrs) if attrs else ""}>'


def figure(data: bytes, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{img(data, alt)}{cap}</figure>"


def fmt(value: object, digits: int = 4) -> str:
    """A metric value for a table cell; None (undefined) shows as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = "".join(
            '<td class="na">–</td>' if v is None else f"<td>{fmt(v, digits)}</td>" for v in r
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def pipe_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a Markdown pipe table, columns padded to their widest cell (None: n/a)."""
    cells = [["n/a" if c is None else str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)]


def markdown_table(lines: Sequence[str]) -> str:
    """HTML table from the lines of a simple pipe table (header, separator, rows) as ablate writes."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.strip()]
    if len(rows) < 2:
        return ""
    return table(rows[0], rows[2:])


def cards(items: Sequence[tuple[str, object]]) -> str:
    out = "".join(
        f'<div class="card"><div class="v">{fmt(v)}</div><div class="k">{esc(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="cards">{out}</div>'


def page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}{js}</body></html>\n"
    )


def write_page(path: Path, title: str, body: str, script: str = "") -> Path:
    path = Path(path)
    atomic_write_text(path, page(title, body, script))
    return path
