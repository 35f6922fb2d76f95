"""The review page and its JSON API (Starlette, served by uvicorn in the server process).

Routers: :mod:`.auth` (log in and out), :mod:`.pages` (the HTML pages and the review form),
:mod:`.api` (JSON), :mod:`.media` (clips and snapshots). In front of them, outermost first
(:mod:`.security`): a cap on request bodies, then the gate: every request but the login form
needs the token (or password), as a session cookie set by logging in or an
``Authorization: Bearer <token>`` header for scripts; a request that changes something must come
from this server's own pages.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from . import api, auth, media, pages
from .security import MAX_BODY_BYTES, BodyLimit, Credentials, Gate, Redactor, Sessions

__all__ = ["create_app"]


def create_app(server, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The ASGI app over a running :class:`avarnet.apps.serve.app.Server` (its store, cameras, config)."""
    config = server.config
    credentials = Credentials([config.web.token, config.web.password], Sessions())
    redactor = Redactor(config)
    page_routes = pages.routes(server, redactor)
    app = Starlette(
        routes=[
            *auth.routes(credentials),
            *page_routes,
            *api.routes(server, redactor),
            *media.routes(server),
        ],
        middleware=[
            Middleware(BodyLimit, max_bytes=max_body_bytes),
            Middleware(Gate, credentials=credentials, pages=page_routes),
        ],
    )
    app.state.sessions = credentials.sessions
    return app
