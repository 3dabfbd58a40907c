"""Signing in and out (API token and login page), who am I, and the audit trail."""

from __future__ import annotations

import datetime as dt
import html
import secrets
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import OAuth2PasswordRequestForm
from starlette.concurrency import run_in_threadpool

from geo_service import audit, auth, security
from geo_service.db import SessionDep
from geo_service.errors import Unauthenticated
from geo_service.routes.access import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    AdminDep,
    AnyoneDep,
    check_csrf,
    client_address,
    identify,
    refuse_credentials_in_url,
)
from geo_service.routes.params import Offset, json_response
from geo_service.schemas import AuditRead, ErrorRead, IdentityRead, Instant, TokenRead, TooManyRead

router = APIRouter(tags=["access"])


@router.post("/api/v1/auth/token", response_model=TokenRead,
             responses={401: {"model": ErrorRead}, 429: {"model": TooManyRead}})
def issue_token(request: Request, session: SessionDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]):
    """OAuth2 password flow: a short-lived bearer token for `Authorization: Bearer ...`.

    The form travels in the POST body; a password in the query string is refused (401)."""
    refuse_credentials_in_url(request)
    ttl = dt.timedelta(minutes=request.app.state.settings.token_minutes)
    token, expires_at = auth.sign_in(session, form.username, form.password, kind="bearer", ttl=ttl,
                                     address=client_address(request))
    return {"access_token": token, "token_type": "bearer", "expires_at": expires_at.isoformat()}


@router.get("/api/v1/auth/me", response_model=IdentityRead)
def who_am_i(session: SessionDep, identity: AnyoneDep):
    """The caller's name, kind (user or API key), role and towns, the person a worker account
    belongs to, and what it reports as."""
    return {"kind": identity.kind, "name": identity.name, "role": identity.role,
            "towns": sorted(identity.towns) if identity.towns is not None else None,
            "grid_worker_id": identity.grid_worker_id, "police_officer_id": identity.police_officer_id,
            "reporter_kind": auth.reporter_kind(session, identity)}


@router.get("/api/v1/audit", response_model=list[AuditRead], responses={403: {"model": ErrorRead}})
def list_audit(session: SessionDep, identity: AdminDep,
               actor: Annotated[str | None, Query(max_length=200,
                                                  description="Actor name (username or key name).")] = None,
               action: Annotated[str | None, Query(max_length=200,
                                                   description="Action or action prefix, e.g. `auth.`.")] = None,
               since: Annotated[Instant | None, Query(description="From this time (ISO 8601).")] = None,
               until: Annotated[Instant | None, Query(description="Before this time (ISO 8601).")] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               offset: Offset = 0):
    """The audit trail, newest first (admins only)."""
    return json_response(audit.query(session, identity, actor=actor, action=action, since=since, until=until,
                                     limit=limit, offset=offset))


LOGIN_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>登录 · geo_service</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/favicon.ico">
<style>
body {{ font-family: sans-serif; background: #eef1f4; display: flex; justify-content: center; margin-top: 12vh; }}
form {{ background: #fff; padding: 2em 2.5em; border-radius: 6px; box-shadow: 0 1px 4px #0002; width: 18em; }}
h1 {{ font-size: 1.2em; margin: 0 0 1em; }} label {{ display: block; margin: .8em 0 .2em; }}
input {{ width: 100%; box-sizing: border-box; padding: .45em; }}
button {{ margin-top: 1.2em; width: 100%; padding: .55em; background: #1f5fa8; color: #fff; border: 0;
         border-radius: 4px; }}
.error {{ color: #b00020; margin-top: .8em; }}
</style></head>
<body><form method="post" action="/login">
<h1>鹤山网格治理 · 登录<br><small>geo_service sign in</small></h1>
<input type="hidden" name="next" value="{next}">
<label for="username">用户名 Username</label><input id="username" name="username" autocomplete="username" required>
<label for="password">密码 Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">登录 Sign in</button>
{error}</form></body></html>"""


DEFAULT_NEXT = "/map"


def _next_or_error(value: str | None) -> tuple[str, str]:
    """(where to go after signing in, an error message when `value` was refused).

    Only a plain local path is followed: an open redirect would let a link send users anywhere
    after login (see security.local_path for what is refused).
    """
    if not value:
        return DEFAULT_NEXT, ""
    if security.local_path(value):
        return value, ""
    return DEFAULT_NEXT, f"next {value[:200]!r} is not a local path on this site; refused"


def login_page(next_path: str = DEFAULT_NEXT, error: str = "", status_code: int = 200) -> HTMLResponse:
    message = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return HTMLResponse(LOGIN_PAGE.format(next=html.escape(next_path, quote=True), error=message),
                        status_code=status_code, headers={"Cache-Control": "no-store"})


def login_redirect(request: Request) -> RedirectResponse:
    query = request.url.query
    if query and security.credential_in_query(query):
        query = ""  # a secret in the URL is not carried on into the next URL (and its log line)
    target = request.url.path + (f"?{query}" if query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def show_login(next: str | None = None):
    target, error = _next_or_error(next)
    return login_page(target, error, 400 if error else 200)


@router.post("/login", include_in_schema=False)
async def do_login(request: Request, username: Annotated[str, Form()], password: Annotated[str, Form()],
                   next: Annotated[str | None, Form()] = None):
    refuse_credentials_in_url(request)
    target, error = _next_or_error(next)
    if error:  # the page never offers a bad target (show_login replaces it): someone crafted this form
        return login_page(target, error, 400)
    settings = request.app.state.settings
    try:
        secret, expires_at = await run_in_threadpool(
            _sign_in, request, username, password, dt.timedelta(hours=settings.session_hours))
    except Unauthenticated as exc:
        return login_page(target, str(exc), 401)
    response = RedirectResponse(target, status_code=303)
    max_age = settings.session_hours * 3600
    response.set_cookie(SESSION_COOKIE, secret, max_age=max_age, httponly=True, samesite="strict",
                        secure=settings.secure_cookies, path="/")
    # Readable by the pages' scripts, which echo it in X-CSRF-Token on changes.
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), max_age=max_age, httponly=False,
                        samesite="strict", secure=settings.secure_cookies, path="/")
    return response


def _sign_in(request: Request, username: str, password: str, ttl: dt.timedelta):
    with request.app.state.sessionmaker() as session:
        return auth.sign_in(session, username, password, kind="session", ttl=ttl, address=client_address(request))


@router.post("/logout", include_in_schema=False)
async def do_logout(request: Request):
    """End the page session. Needs the session cookie and, like every cookie-authenticated
    change, the CSRF token: in the X-CSRF-Token header or the `csrf` field of the pages'
    sign-out form (else any site could sign users out)."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        raise Unauthenticated("no session to end: /logout needs the geo_session cookie of a sign-in")
    form = await request.form()
    check_csrf(request, str(form.get("csrf") or ""))
    try:
        identity = await identify(request, secret)
    except Unauthenticated:
        identity = None  # expired or revoked already: nothing to end but the cookies
    if identity is not None:
        await run_in_threadpool(_sign_out, request, secret, identity)
        request.app.state.identities.put(secret, None)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


def _sign_out(request: Request, secret: str, identity: auth.Identity) -> None:
    with request.app.state.sessionmaker() as session:
        audit.record(session, audit.Actor("user", identity.id, identity.name), "auth.sign_out", "user",
                     identity.name, address=client_address(request))
        auth.sign_out(session, secret)  # commits the audit row with the revocation
