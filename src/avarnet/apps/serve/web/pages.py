"""The review pages: server-rendered HTML with a little inline JavaScript and SVG, no front-end
build. The index shows the cameras (live, polling ``/api/cameras``) and the events; an event's
page plays its clip over its score curve and takes the review (an HTML form, so it works without
JavaScript)."""

from __future__ import annotations

import html
import time

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..events import REVIEW_STATES
from .security import Redactor

REVIEW_TEXT = {"unreviewed": "unreviewed", "true": "true alarm", "false": "false alarm"}
REVIEW_FORM_FIELDS = ("review", "label")

CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1c1e21}
header{background:#1f2937;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none}header h1{font-size:18px;margin:0}
main{padding:16px 20px;max-width:1200px}
.cams{display:flex;flex-wrap:wrap;gap:12px}
.cam{background:#fff;border-radius:8px;padding:10px 12px;width:260px;box-shadow:0 1px 2px #0002}
.cam h3{margin:0 0 4px;font-size:15px}.badge{font-size:12px;padding:1px 6px;border-radius:8px;color:#fff}
.online{background:#16a34a}.unhealthy{background:#dc2626}.connecting,.starting{background:#d97706}
.ended,.stopped{background:#6b7280}.hot{color:#dc2626;font-weight:bold}
table{border-collapse:collapse;width:100%;background:#fff;margin-top:10px}
td,th{padding:6px 8px;border-bottom:1px solid #e5e7eb;text-align:left;font-size:14px}
img.thumb{width:120px;height:68px;object-fit:cover;border-radius:4px;background:#ddd}
form.filters{margin-top:18px;display:flex;gap:8px;align-items:center}
button{padding:6px 12px;border-radius:6px;border:1px solid #999;background:#fff;cursor:pointer}
button.true{background:#dc2626;color:#fff}button.false{background:#16a34a;color:#fff}
.review-unreviewed{color:#6b7280}.review-true{color:#dc2626}.review-false{color:#16a34a}
video{width:100%;max-width:720px;background:#000;border-radius:6px}
.curve{background:#fff;border-radius:6px;margin-top:8px}
header button.link{background:none;border:0;color:#fff;padding:0;font:inherit}
"""


def escape(x) -> str:
    return html.escape("" if x is None else str(x))


def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def sparkline(
    values: list[float], width: int = 236, height: int = 40, threshold: float | None = None
) -> str:
    """SVG polyline of scores in [0, 1]."""
    pts = []
    n = len(values)
    for i, v in enumerate(values):
        x = width * i / max(1, n - 1)
        y = height - height * min(1.0, max(0.0, v))
        pts.append(f"{x:.1f},{y:.1f}")
    line = (
        ""
        if threshold is None
        else (
            f'<line x1="0" x2="{width}" y1="{height - height * threshold:.1f}" '
            f'y2="{height - height * threshold:.1f}" stroke="#dc2626" stroke-dasharray="3 3"/>'
        )
    )
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<rect width="{width}" height="{height}" fill="#f9fafb"/>{line}'
        f'<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="{" ".join(pts)}"/></svg>'
    )


def score_curve(event: dict, threshold: float | None, width: int = 720, height: int = 140) -> str:
    """The event's per-segment scores over the clip's time axis, with a playback cursor."""
    scores = event["scores"]
    t0 = event["clip_start"] or (scores[0][0] if scores else event["start_time"])
    t1 = max([s[0] for s in scores] + [event["end_time"] or event["start_time"]]) + 1.0
    span = max(1e-6, t1 - t0)

    def x(t):
        return 30 + (width - 40) * (t - t0) / span

    def y(v):
        return 10 + (height - 30) * (1 - min(1.0, max(0.0, v)))

    pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in scores)
    band = (
        f'<rect x="{x(event["start_time"]):.1f}" y="10" height="{height - 30}" fill="#fee2e2" '
        f'width="{max(1.0, x(event["end_time"] or t1) - x(event["start_time"])):.1f}"/>'
    )
    thr = (
        ""
        if threshold is None
        else (
            f'<line x1="30" x2="{width - 10}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
            f'stroke="#dc2626" stroke-dasharray="4 3"/>'
        )
    )
    ticks = "".join(
        f'<text x="2" y="{y(v) + 4:.1f}" font-size="10">{v:.1f}</text>' for v in (0.0, 0.5, 1.0)
    )
    return (
        f'<svg class="curve" id="curve" width="{width}" height="{height}" data-t0="{x(t0):.1f}" '
        f'data-scale="{(width - 40) / span:.4f}" data-offset="{(t0 - (event["clip_start"] or t0)):.3f}">'
        f'{band}{thr}{ticks}<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{pts}"/>'
        f'<line id="cursor" x1="30" x2="30" y1="10" y2="{height - 20}" stroke="#111" stroke-width="1"/>'
        f'<text x="30" y="{height - 4}" font-size="10">clip start</text></svg>'
    )


def page(title: str, body: str, script: str = "", status_code: int = 200) -> HTMLResponse:
    """A page of the site: header (with the log-out button), body, optional inline script."""
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)} - avarnet</title>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{CSS}</style></head>"
        f"<body><header><h1><a href='/'>avarnet</a></h1><span>{escape(title)}</span>"
        f"<span style='flex:1'></span><form method='post' action='/logout' style='margin:0'>"
        f"<button type='submit' id='logout' class='link'>log out</button></form></header>"
        f"<main>{body}</main>"
        f"{'<script>' + script + '</script>' if script else ''}</body></html>",
        status_code=status_code,
    )


def camera_card(c: dict) -> str:
    """One camera of the index: status badge, label, score, sparkline, last error."""
    score = c["score"]
    hot = score is not None and score >= c["threshold"]
    return (
        f"<div class='cam' id='cam-{escape(c['name'])}' data-camera='{escape(c['name'])}'>"
        f"<h3>{escape(c['name'])} <span class='badge {escape(c['status'])}'>{escape(c['status'])}</span></h3>"
        f"<div><span class='label'>{escape(c['label'] or '-')}</span> "
        f"<span class='score{' hot' if hot else ''}'>{'' if score is None else f'{score:.2f}'}</span>"
        f"{' <b class=hot>EVENT</b>' if c['event'] else ''}</div>"
        f"<div class='sparkbox'>{sparkline(c['history'], threshold=c['threshold'])}</div>"
        f"<div style='font-size:12px;color:#6b7280' class='err'>{escape(c['error'] or '')}</div></div>"
    )


def select_options(values, current, texts: dict | None = None) -> str:
    """``<option>``s of a filter: "all", then ``values`` (shown as ``texts`` where given)."""
    texts = texts or {}
    return "<option value=''>all</option>" + "".join(
        f"<option value='{escape(v)}'{' selected' if v == current else ''}>{escape(texts.get(v, v))}</option>"
        for v in values
    )


def event_row(e: dict) -> str:
    """One event of the index's table."""
    thumb = (
        f"<img class='thumb' src='/events/{escape(e['id'])}/snapshot.jpg' alt='snapshot'>"
        if e["snapshot"]
        else "<span class='thumb'>no snapshot</span>"
    )
    duration = "open" if e["end_time"] is None else f"{e['end_time'] - e['start_time']:.0f} s"
    return (
        f"<tr class='event' data-id='{escape(e['id'])}'><td><a href='/events/{escape(e['id'])}'>{thumb}</a></td>"
        f"<td>{escape(e['camera'])}</td><td><a href='/events/{escape(e['id'])}'>{escape(e['final_label'])}</a></td>"
        f"<td>{_when(e['start_time'])}</td>"
        f"<td>{duration}</td>"
        f"<td>{e['peak_score']:.2f}</td>"
        f"<td class='review-{escape(e['review'])}'>{escape(REVIEW_TEXT[e['review']])}</td></tr>"
    )


INDEX_SCRIPT = """
    function spark(v,thr){const w=236,h=40;let p=v.map((s,i)=>(w*i/Math.max(1,v.length-1)).toFixed(1)+','+(h-h*Math.min(1,Math.max(0,s))).toFixed(1)).join(' ');
    const ty=(h-h*thr).toFixed(1);
    return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><rect width="${w}" height="${h}" fill="#f9fafb"/><line x1="0" x2="${w}" y1="${ty}" y2="${ty}" stroke="#dc2626" stroke-dasharray="3 3"/><polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="${p}"/></svg>`}
    async function tick(){try{const r=await fetch('/api/cameras');if(!r.ok)return;const cams=await r.json();
    for(const c of cams){const el=document.getElementById('cam-'+c.name);if(!el)continue;
    const b=el.querySelector('.badge');b.textContent=c.status;b.className='badge '+c.status;
    el.querySelector('.label').textContent=c.label||'-';const s=el.querySelector('.score');
    s.textContent=c.score==null?'':c.score.toFixed(2);s.className='score'+(c.score!=null&&c.score>=c.threshold?' hot':'');
    el.querySelector('.sparkbox').innerHTML=spark(c.history,c.threshold);el.querySelector('.err').textContent=c.error||'';}}catch(e){}}
    setInterval(tick,1000);"""


def index_body(
    cams: list[dict],
    events: list[dict],
    labels: list[str],
    camera: str | None,
    label: str | None,
    review: str | None,
) -> str:
    """The index: camera cards, the filter form (``camera``, ``label``, ``review``: its current
    values) and the table of ``events``."""
    rows = "".join(event_row(e) for e in events)
    return (
        f"<div class='cams' id='cams'>{''.join(camera_card(c) for c in cams)}</div>"
        f"<form class='filters' method='get' action='/'>camera <select name='camera'>"
        f"{select_options([c['name'] for c in cams], camera)}</select> class <select name='label'>"
        f"{select_options(labels, label)}</select> review <select name='review'>"
        f"{select_options(list(REVIEW_STATES), review, REVIEW_TEXT)}</select>"
        f"<button type='submit'>filter</button></form>"
        f"<table id='events'><tr><th></th><th>camera</th><th>class</th><th>start</th><th>duration</th>"
        f"<th>peak</th><th>review</th></tr>{rows or '<tr><td colspan=7>no events</td></tr>'}</table>"
    )


EVENT_SCRIPT = """
    const v=document.getElementById('clip'),c=document.getElementById('curve');
    if(v&&c){v.addEventListener('timeupdate',()=>{const x=parseFloat(c.dataset.t0)+parseFloat(c.dataset.scale)*(v.currentTime+parseFloat(c.dataset.offset));
    const l=document.getElementById('cursor');l.setAttribute('x1',x);l.setAttribute('x2',x);});}"""


def event_body(e: dict, threshold: float | None, classes: list[str]) -> str:
    """An event's page: its facts, clip over the score curve, the review buttons and class form."""
    clip = (
        f"<video id='clip' controls muted preload='metadata' src='/events/{escape(e['id'])}/clip.mp4'></video>"
        if e["clip"]
        else f"<p>{'clip removed by retention' if e['clip_pruned'] else 'no clip (yet)'}</p>"
    )
    opts = "".join(
        f"<option value='{escape(c)}'{' selected' if c == e['final_label'] else ''}>{escape(c)}</option>"
        for c in classes
    )
    return (
        f"<h2>{escape(e['final_label'])} on {escape(e['camera'])}</h2>"
        f"<p>{_when(e['start_time'])} - {_when(e['end_time']) or 'open'}; peak {e['peak_score']:.2f} at "
        f"{_when(e['peak_time'])}; {e['segments']} segments; detected as {escape(e['label'])}; "
        f"review: <b id='review' class='review-{escape(e['review'])}'>{escape(REVIEW_TEXT[e['review']])}</b></p>"
        f"{clip}<div>{score_curve(e, threshold) if e['scores'] else ''}</div>"
        f"<form method='post' action='/events/{escape(e['id'])}/review' style='margin-top:12px;display:flex;gap:8px'>"
        f"<button class='true' name='review' value='true' id='mark-true'>true alarm</button>"
        f"<button class='false' name='review' value='false' id='mark-false'>false alarm</button></form>"
        f"<form method='post' action='/events/{escape(e['id'])}/review' style='margin-top:8px'>"
        f"<select name='label' id='label'>{opts}</select> <button id='correct' name='review' value='true'>"
        f"correct class (true alarm)</button></form>"
        + (
            f"<p><img src='/events/{escape(e['id'])}/snapshot.jpg' style='max-width:360px' alt='snapshot'></p>"
            if e["snapshot"]
            else ""
        )
    )


def routes(server, redactor: Redactor) -> list[Route]:
    """The page routes (GET, and HEAD with it); the gate redirects these to the login form."""

    async def index(request: Request) -> Response:
        q = request.query_params
        camera, label, review = (q.get(k) or None for k in ("camera", "label", "review"))
        cams = redactor.tree(server.camera_status())
        events = server.store.list(camera=camera, label=label, review=review, limit=200)
        body = index_body(cams, events, server.store.labels(), camera, label, review)
        return page("cameras and events", body, INDEX_SCRIPT)

    async def event_page(request: Request) -> Response:
        e = server.store.get(request.path_params["event_id"])
        if e is None:
            return page("not found", "<p>no such event</p>", status_code=404)
        body = event_body(e, server.threshold(e["camera"]), server.classes(e["camera"]))
        return page(f"event {e['id']}", body, EVENT_SCRIPT)

    async def review_form(request: Request) -> Response:
        """The event page's buttons: a form post, answered by the event page again."""
        event_id = request.path_params["event_id"]
        form = await request.form(max_files=0, max_fields=len(REVIEW_FORM_FIELDS))
        state = form.get("review") or None
        label = form.get("label")
        if not all(isinstance(v, str | None) for v in (state, label)):
            return JSONResponse({"error": "review and label must be text"}, status_code=400)
        try:
            server.review(event_id, state, label)
        except KeyError:
            return JSONResponse({"error": f"no event {event_id}"}, status_code=404)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return RedirectResponse(f"/events/{event_id}", status_code=303)

    return [
        Route("/", index),
        Route("/events/{event_id}", event_page),
        Route("/events/{event_id}/review", review_form, methods=["POST"]),
    ]
