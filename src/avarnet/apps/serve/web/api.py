"""The JSON API: events, cameras, statistics, and reviews (``POST`` with an ``application/json``
body). Every answer is strict JSON; camera and server state never carries a credential."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .security import Redactor

EVENT_FIELDS = (
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
REVIEW_KEYS = ("review", "label")
REVIEW_SHAPE = '{"review": "true" | "false" | "unreviewed", "label": "<class>"}'


def event_json(e: dict) -> dict:
    """An event as the API shows it (strict JSON)."""
    out = {k: e[k] for k in EVENT_FIELDS}
    out["has_clip"], out["has_snapshot"] = bool(e["clip"]), bool(e["snapshot"])
    out["scores"] = e["scores"]
    return json.loads(json.dumps(out, allow_nan=False))


def review_body(raw: bytes, content_type: str) -> tuple[dict | None, tuple[int, str] | None]:
    """(the review's fields, None) or (None, (status, one-line reason)) for a review request."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return None, (415, "the body must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, (400, f"the body is not valid JSON; expected {REVIEW_SHAPE}")
    if not isinstance(body, dict):
        return None, (400, f"the body must be a JSON object such as {REVIEW_SHAPE}")
    unknown = sorted(set(body) - set(REVIEW_KEYS))
    if unknown:
        return None, (400, f"unknown key {unknown[0]!r}; expected {REVIEW_SHAPE}")
    for key in REVIEW_KEYS:
        if body.get(key) is not None and not isinstance(body[key], str):
            return None, (400, f"{key} must be a string, got {type(body[key]).__name__}")
    return body, None


def routes(server, redactor: Redactor) -> list[Route]:
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

    async def api_review(request: Request) -> Response:
        event_id = request.path_params["event_id"]
        body, problem = review_body(await request.body(), request.headers.get("content-type", ""))
        if problem is not None:
            return JSONResponse({"error": problem[1]}, status_code=problem[0])
        try:
            event = server.review(event_id, body.get("review"), body.get("label"))
        except KeyError:
            return JSONResponse({"error": f"no event {event_id}"}, status_code=404)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return JSONResponse(event_json(event))

    async def api_cameras(request: Request) -> Response:
        return JSONResponse(redactor.tree(server.camera_status()))

    async def api_stats(request: Request) -> Response:
        stats = redactor.tree(server.stats())
        return Response(json.dumps(stats, allow_nan=False), media_type="application/json")

    return [
        Route("/api/events", api_events),
        Route("/api/events/{event_id}", api_event),
        Route("/api/events/{event_id}/review", api_review, methods=["POST"]),
        Route("/api/cameras", api_cameras),
        Route("/api/stats", api_stats),
    ]
