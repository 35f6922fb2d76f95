"""timeline.html of a prediction: the score curve over the video, click the curve to seek."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np

from avarnet.plots import peak_indices
from avarnet.report.frames import grab_frames
from avarnet.report.html import esc, img, table, write_page

TIMELINE_HTML = "timeline.html"
PEAK_THUMBS = 3
THUMB_EDGE = 128

SEEK_JS = """
const video = document.getElementById("video");
const curve = document.getElementById("curve");
const cursor = document.getElementById("cursor");
const L = JSON.parse(curve.dataset.layout);
function seek(t) {
  t = Math.min(Math.max(t, L.t0), L.t1);
  video.currentTime = t;
  curve.dataset.seeked = t.toFixed(3);
  place(t);
}
function place(t) {
  const f = L.x0 + (t - L.t0) / (L.t1 - L.t0) * (L.x1 - L.x0);
  cursor.style.left = (100 * f) + "%";
  cursor.style.display = "block";
}
curve.addEventListener("click", (e) => {
  const r = curve.getBoundingClientRect();
  const f = (e.clientX - r.left) / r.width;
  if (f >= L.x0 && f <= L.x1) seek(L.t0 + (f - L.x0) / (L.x1 - L.x0) * (L.t1 - L.t0));
});
video.addEventListener("timeupdate", () => place(video.currentTime));
document.querySelectorAll("tr[data-t]").forEach((row) =>
  row.addEventListener("click", () => seek(parseFloat(row.dataset.t))));
"""

EXTRA_CSS = """<style>
.player { display: flex; flex-direction: column; align-items: flex-start; gap: 10px; }
.player video { width: 640px; max-width: 100%; height: 360px; background: #000; }
.curvebox { position: relative; display: inline-block; cursor: crosshair; }
.curvebox img { display: block; }
#cursor { position: absolute; top: 0; bottom: 0; width: 2px; background: #cf222e; display: none;
          pointer-events: none; }
tr[data-t] { cursor: pointer; } tr[data-t]:hover { background: #f1f8ff; }
</style>"""


def timeline_thumbnails(
    pred: dict, video: str | Path, k: int = PEAK_THUMBS
) -> tuple[list[tuple[float, np.ndarray]] | None, str | None]:
    """Frames at the anomaly-score peaks of a prediction: ([(time, frame)], None) or (None, why)."""
    segs = pred["segments"]
    if not segs:
        return None, "the video has no segments"
    scores = np.array([s["anomaly_score"] for s in segs])
    times = [(segs[i]["start"] + segs[i]["end"]) / 2 for i in peak_indices(scores, k)]
    frames, why = grab_frames(Path(video), times, edge=THUMB_EDGE)
    return (list(zip(times, frames, strict=True)), None) if frames else (None, why)


def video_src(video: Path, folder: Path) -> str:
    """URL of the video as seen from a page in ``folder``: relative when possible, else file://."""
    video, folder = Path(video).resolve(), Path(folder).resolve()
    try:
        rel = os.path.relpath(video, folder)
    except ValueError:  # another drive
        return video.as_uri()
    return quote(Path(rel).as_posix())


def write_timeline_page(
    out: str | Path, pred: dict, curve_png: bytes, layout: dict, note: str | None = None
) -> Path:
    """Write ``OUT/timeline.html``: the video, the curve (click to seek) and the segment table."""
    out = Path(out)
    video = Path(pred["video"])
    top = sorted(pred["probabilities"].items(), key=lambda kv: -kv[1])[:3]
    rows = "".join(
        f'<tr data-t="{(s["start"] + s["end"]) / 2:.3f}"><td>{s["start"]:.1f}–{s["end"]:.1f} s</td>'
        f"<td>{esc(s['label'])}</td><td>{s['anomaly_score']:.3f}</td></tr>"
        for s in pred["segments"]
    )
    missing = "" if video.is_file() else f'<div class="missing">video not found: {esc(video)}</div>'
    body = [
        EXTRA_CSS,
        f"<h1>{esc(video.name)}: {esc(pred['label'])}</h1>",
        '<p class="meta">'
        + ", ".join(f"{esc(c)} {p:.2f}" for c, p in top)
        + f". Video: <code>{esc(video)}</code>. Click the curve (or a segment row) to seek.</p>",
        missing,
        f'<div class="missing">{esc(note)}</div>' if note else "",
        '<div class="player">',
        f'<video id="video" controls preload="metadata" src="{esc(video_src(video, out))}"></video>',
        '<div class="curvebox">'
        + img(
            curve_png,
            "anomaly-score timeline",
            attrs=f"id=\"curve\" data-layout='{json.dumps(layout)}'",
        )
        + '<div id="cursor"></div></div>',
        "</div>",
        "<h2>Segments</h2>",
        table(["time", "predicted", "anomaly score"], []).replace(
            "<tbody></tbody>", f"<tbody>{rows}</tbody>"
        ),
    ]
    return write_page(
        out / TIMELINE_HTML, f"{video.name}: {pred['label']}", "\n".join(body), SEEK_JS
    )
