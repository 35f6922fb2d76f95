"""The review page and its JSON API (Starlette, served by uvicorn in the server process).

Server-rendered HTML with a little inline JavaScript and SVG; no front-end build. Every route but
the login form needs the token (or password): a session cookie set by logging in, or an
``Authorization: Bearer <token>`` header for scripts. Clips are served with HTTP Range support
(Starlette's FileResponse), so the browser can seek in them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import secrets
import time
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from .events import REVIEW_STATES

COOKIE = "avarnet_session"
REVIEW_TEXT = {"unreviewed": "unreviewed", "true": "true alarm", "false": "false alarm"}

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
"""


def _e(x) -> str:
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


def _page(title: str, body: str, script: str = "") -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)} - avarnet</title>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{CSS}</style></head>"
        f"<body><header><h1><a href='/'>avarnet</a></h1><span>{_e(title)}</span>"
        f"<span style='flex:1'></span><a href='/logout'>log out</a></header><main>{body}</main>"
        f"{'<script>' + script + '</script>' if script else ''}</body></html>"
    )


def event_json(e: dict) -> dict:
    """An event as the API shows it (strict JSON)."""
    out = {
        k: e[k]
        for k in (
            "id",
            "camera",
            "label",
            "corrected_label",
            "final_label",
            "start_time",
            "end_time",
            "peak_score",
            "peak_time",
            "segments",
            "review",
            "closed_by",
            "clip_pruned",
        )
    }
    out["has_clip"], out["has_snapshot"] = bool(e["clip"]), bool(e["snapshot"])
    out["scores"] = e["scores"]
    return json.loads(json.dumps(out, allow_nan=False))


def create_app(server) -> Starlette:
    """The ASGI app over a running :class:`avarnet.serve.app.Server` (its store, cameras, config)."""
    secret_values = [v for v in (server.config.web.token, server.config.web.password) if v]
    session_key = secrets.token_bytes(32)
    session_value = hmac.new(session_key, b"avarnet-session", hashlib.sha256).hexdigest()
    media = server.config.storage.path

    def authorised(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip().encode()
            return any(hmac.compare_digest(given, v.encode()) for v in secret_values)
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value.encode())

    def guard(handler):
        async def wrapped(request: Request) -> Response:
            if not authorised(request):
                if request.url.path.startswith("/api/") or request.method != "GET":
                    return JSONResponse({"error": "unauthorised"}, status_code=401)
                return RedirectResponse(
                    f"/login?{urlencode({'next': request.url.path})}", status_code=303
                )
            return await handler(request)

        return wrapped

    async def login(request: Request) -> Response:
        error = ""
        nxt = request.query_params.get("next", "/")
        if request.method == "POST":
            form = await request.form()
            given = str(form.get("secret", "")).encode()
            nxt = str(form.get("next", "/"))
            if any(hmac.compare_digest(given, v.encode()) for v in secret_values):
                target = nxt if nxt.startswith("/") and not nxt.startswith("//") else "/"
                resp = RedirectResponse(target, status_code=303)
                resp.set_cookie(COOKIE, session_value, httponly=True, samesite="strict")
                return resp
            error = "<p style='color:#dc2626'>wrong token or password</p>"
            await asyncio.sleep(0.5)  # slows guessing
        return HTMLResponse(
            f"<!doctype html><html><head><meta charset='utf-8'><title>log in - avarnet</title>"
            f"<style>{CSS}</style></head><body><main style='max-width:360px;margin:60px auto'>"
            f"<h2>avarnet</h2>{error}<form method='post' action='/login'>"
            f"<input type='hidden' name='next' value='{_e(nxt)}'>"
            f"<input type='password' name='secret' id='secret' placeholder='token or password' "
            f"style='width:100%;padding:8px' autofocus><p><button type='submit' id='login'>log in</button>"
            f"</p></form></main></body></html>",
            status_code=401 if error else 200,
        )

    async def logout(request: Request) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    def camera_card(c: dict) -> str:
        score = c["score"]
        hot = score is not None and score >= c["threshold"]
        return (
            f"<div class='cam' id='cam-{_e(c['name'])}' data-camera='{_e(c['name'])}'>"
            f"<h3>{_e(c['name'])} <span class='badge {_e(c['status'])}'>{_e(c['status'])}</span></h3>"
            f"<div><span class='label'>{_e(c['label'] or '-')}</span> "
            f"<span class='score{' hot' if hot else ''}'>{'' if score is None else f'{score:.2f}'}</span>"
            f"{' <b class=hot>EVENT</b>' if c['event'] else ''}</div>"
            f"<div class='sparkbox'>{sparkline(c['history'], threshold=c['threshold'])}</div>"
            f"<div style='font-size:12px;color:#6b7280' class='err'>{_e(c['error'] or '')}</div></div>"
        )

    async def index(request: Request) -> Response:
        q = request.query_params
        camera, label, review = (
            q.get("camera") or None,
            q.get("label") or None,
            q.get("review") or None,
        )
        cams = server.camera_status()
        events = server.store.list(camera=camera, label=label, review=review, limit=200)

        def options(values, current, texts=None):
            texts = texts or {}
            return "<option value=''>all</option>" + "".join(
                f"<option value='{_e(v)}'{' selected' if v == current else ''}>{_e(texts.get(v, v))}</option>"
                for v in values
            )

        rows = []
        for e in events:
            thumb = (
                f"<img class='thumb' src='/events/{_e(e['id'])}/snapshot.jpg' alt='snapshot'>"
                if e["snapshot"]
                else "<span class='thumb'>no snapshot</span>"
            )
            duration = (
                "open" if e["end_time"] is None else f"{e['end_time'] - e['start_time']:.0f} s"
            )
            rows.append(
                f"<tr class='event' data-id='{_e(e['id'])}'><td><a href='/events/{_e(e['id'])}'>{thumb}</a></td>"
                f"<td>{_e(e['camera'])}</td><td><a href='/events/{_e(e['id'])}'>{_e(e['final_label'])}</a></td>"
                f"<td>{_when(e['start_time'])}</td>"
                f"<td>{duration}</td>"
                f"<td>{e['peak_score']:.2f}</td>"
                f"<td class='review-{_e(e['review'])}'>{_e(REVIEW_TEXT[e['review']])}</td></tr>"
            )
        body = (
            f"<div class='cams' id='cams'>{''.join(camera_card(c) for c in cams)}</div>"
            f"<form class='filters' method='get' action='/'>camera <select name='camera'>"
            f"{options([c['name'] for c in cams], camera)}</select> class <select name='label'>"
            f"{options(server.store.labels(), label)}</select> review <select name='review'>"
            f"{options(list(REVIEW_STATES), review, REVIEW_TEXT)}</select>"
            f"<button type='submit'>filter</button></form>"
            f"<table id='events'><tr><th></th><th>camera</th><th>class</th><th>start</th><th>duration</th>"
            f"<th>peak</th><th>review</th></tr>{''.join(rows) or '<tr><td colspan=7>no events</td></tr>'}</table>"
        )
        script = """
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
        return _page("cameras and events", body, script)

    async def event_page(request: Request) -> Response:
        e = server.store.get(request.path_params["event_id"])
        if e is None:
            return _page("not found", "<p>no such event</p>")
        threshold = server.threshold(e["camera"])
        clip = (
            f"<video id='clip' controls muted preload='metadata' src='/events/{_e(e['id'])}/clip.mp4'></video>"
            if e["clip"]
            else f"<p>{'clip removed by retention' if e['clip_pruned'] else 'no clip (yet)'}</p>"
        )
        classes = server.classes(e["camera"])
        opts = "".join(
            f"<option value='{_e(c)}'{' selected' if c == e['final_label'] else ''}>{_e(c)}</option>"
            for c in classes
        )
        body = (
            f"<h2>{_e(e['final_label'])} on {_e(e['camera'])}</h2>"
            f"<p>{_when(e['start_time'])} - {_when(e['end_time']) or 'open'}; peak {e['peak_score']:.2f} at "
            f"{_when(e['peak_time'])}; {e['segments']} segments; detected as {_e(e['label'])}; "
            f"review: <b id='review' class='review-{_e(e['review'])}'>{_e(REVIEW_TEXT[e['review']])}</b></p>"
            f"{clip}<div>{score_curve(e, threshold) if e['scores'] else ''}</div>"
            f"<form method='post' action='/events/{_e(e['id'])}/review' style='margin-top:12px;display:flex;gap:8px'>"
            f"<button class='true' name='review' value='true' id='mark-true'>true alarm</button>"
            f"<button class='false' name='review' value='false' id='mark-false'>false alarm</button></form>"
            f"<form method='post' action='/events/{_e(e['id'])}/review' style='margin-top:8px'>"
            f"<select name='label' id='label'>{opts}</select> <button id='correct' name='review' value='true'>"
            f"correct class (true alarm)</button></form>"
            + (
                f"<p><img src='/events/{_e(e['id'])}/snapshot.jpg' style='max-width:360px' alt='snapshot'></p>"
                if e["snapshot"]
                else ""
            )
        )
        script = """
const v=document.getElementById('clip'),c=document.getElementById('curve');
if(v&&c){v.addEventListener('timeupdate',()=>{const x=parseFloat(c.dataset.t0)+parseFloat(c.dataset.scale)*(v.currentTime+parseFloat(c.dataset.offset));
const l=document.getElementById('cursor');l.setAttribute('x1',x);l.setAttribute('x2',x);});}"""
        return _page(f"event {e['id']}", body, script)

    async def review_form(request: Request) -> Response:
        event_id = request.path_params["event_id"]
        form = await request.form()
        state = form.get("review") or None
        label = form.get("label")
        try:
            server.review(event_id, state, None if label is None else str(label))
        except (KeyError, ValueError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return RedirectResponse(f"/events/{event_id}", status_code=303)

    async def review_api(request: Request) -> Response:
        try:
            body = await request.json()
            event = server.review(
                request.path_params["event_id"], body.get("review"), body.get("label")
            )
        except (KeyError, ValueError, json.JSONDecodeError, AttributeError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return JSONResponse(event_json(event))

    def media_file(kind: str):
        async def serve(request: Request) -> Response:
            e = server.store.get(request.path_params["event_id"])
            name = e and e[kind]
            path = media / ("clips" if kind == "clip" else "snapshots") / name if name else None
            if path is None or not path.is_file():
                return Response("not found", status_code=404)
            return FileResponse(path, media_type="video/mp4" if kind == "clip" else "image/jpeg")

        return serve

    async def not_found(request: Request) -> Response:
        return Response("not found", status_code=404)

    async def api_events(request: Request) -> Response:
        q = request.query_params
        try:
            limit = max(1, min(1000, int(q.get("limit", "200"))))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        events = server.store.list(
            q.get("camera") or None, q.get("label") or None, q.get("review") or None, limit
        )
        return JSONResponse([event_json(e) for e in events])

    async def api_event(request: Request) -> Response:
        e = server.store.get(request.path_params["event_id"])
        return (
            JSONResponse(event_json(e))
            if e
            else JSONResponse({"error": "not found"}, status_code=404)
        )

    async def api_cameras(request: Request) -> Response:
        return JSONResponse(server.camera_status())

    async def api_stats(request: Request) -> Response:
        stats = server.stats()
        return Response(json.dumps(stats, allow_nan=False), media_type="application/json")

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout),
        Route("/", guard(index)),
        Route("/events/{event_id}", guard(event_page)),
        Route("/events/{event_id}/review", guard(review_form), methods=["POST"]),
        Route("/events/{event_id}/clip.mp4", guard(media_file("clip"))),
        Route("/events/{event_id}/snapshot.jpg", guard(media_file("snapshot"))),
        Route("/api/events", guard(api_events)),
        Route("/api/events/{event_id}", guard(api_event)),
        Route("/api/events/{event_id}/review", guard(review_api), methods=["POST"]),
        Route("/api/cameras", guard(api_cameras)),
        Route("/api/stats", guard(api_stats)),
    ]
    # any other path: 401 without the token, 404 with it (nothing is told about what exists)
    routes.append(Route("/{path:path}", guard(not_found), methods=["GET", "POST", "PUT", "DELETE"]))
    app = Starlette(routes=routes)

    return app
