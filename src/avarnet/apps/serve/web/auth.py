"""Logging in and out. The form takes the token or the password; each login gets its own random
session (the cookie: HttpOnly, SameSite=Strict), revoked when that session logs out."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .pages import CSS, escape
from .security import COOKIE, Credentials, cookies

WRONG_SECRET_DELAY_S = 0.5  # slows guessing
LOGIN_FIELDS = ("secret", "next")


def safe_next(target: str) -> str:
    """Where to go after logging in: a path on this site only (no other host, no scheme)."""
    ok = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok else "/"


def login_page(nxt: str, error: str = "") -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>log in - avarnet</title>"
        f"<style>{CSS}</style></head><body><main style='max-width:360px;margin:60px auto'>"
        f"<h2>avarnet</h2>{error}<form method='post' action='/login'>"
        f"<input type='hidden' name='next' value='{escape(nxt)}'>"
        f"<input type='password' name='secret' id='secret' placeholder='token or password' "
        f"style='width:100%;padding:8px' autofocus><p><button type='submit' id='login'>log in</button>"
        f"</p></form></main></body></html>",
        status_code=401 if error else 200,
    )


def routes(credentials: Credentials) -> list[Route]:
    async def login(request: Request) -> Response:
        if request.method != "POST":
            return login_page(request.query_params.get("next", "/"))
        form = await request.form(max_files=0, max_fields=len(LOGIN_FIELDS))
        given, nxt = form.get("secret", ""), form.get("next", "/")
        given = given if isinstance(given, str) else ""
        nxt = nxt if isinstance(nxt, str) else "/"
        if not credentials.matches(given):
            await asyncio.sleep(WRONG_SECRET_DELAY_S)
            return login_page(nxt, "<p style='color:#dc2626'>wrong token or password</p>")
        resp = RedirectResponse(safe_next(nxt), status_code=303)
        resp.set_cookie(
            COOKIE,
            credentials.sessions.new(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return resp

    async def logout(request: Request) -> Response:
        credentials.sessions.revoke(cookies(request.headers).get(COOKIE, ""))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
