"""Authentication and authorisation for every route: one `Allow` dependency per route.

Credentials come as `Authorization: Bearer <token or API key>` (API clients, GDAL, QGIS) or
as the `geo_session` cookie set by the login page. A cookie-authenticated request that changes
something must also send the `geo_csrf` cookie's value in an `X-CSRF-Token` header
(double-submit; the cookies are SameSite=Strict as well). Every route under /api/v1 except
`/healthz` declares who may call it with `Allow(...)`; tests/test_access.py fails when a route
has no such decision.
"""

from __future__ import annotations

import asyncio
import hmac

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from geo_service import auth
from geo_service.errors import Forbidden, Unauthenticated

SESSION_COOKIE = "geo_session"
CSRF_COOKIE = "geo_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EVERYONE = ("viewer", "worker", "dispatcher", "analyst", "admin")

# How /docs's "Authorize" button signs in (app.py adds it to the OpenAPI document once, rather
# than as a sub-dependency of every route, which cost the hottest route ~20 µs per request).
SECURITY_SCHEME = {"OAuth2PasswordBearer": {"type": "oauth2", "flows": {
    "password": {"tokenUrl": "/api/v1/auth/token", "scopes": {}}}}}


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def authenticate(request: Request) -> auth.Identity:
    """The caller's identity, from the identity cache or (on a miss) the database."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    from_cookie = False
    if (not secret or scheme.lower() != "bearer") and request.url.path.startswith("/open311/"):
        # GeoReport v2 clients send their key as an `api_key` parameter.
        secret = request.query_params.get("api_key", "")
        if not secret and request.method == "POST":
            secret = str((await request.form()).get("api_key") or "")
        scheme = "bearer" if secret else scheme
    if not secret or scheme.lower() != "bearer":
        secret = request.cookies.get(SESSION_COOKIE, "")
        from_cookie = True
    if not secret:
        raise Unauthenticated("authentication required: send `Authorization: Bearer <token or API key>`")
    if from_cookie and request.method not in SAFE_METHODS:
        sent, expected = request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header for a cookie-authenticated {request.method}")
    cache: auth.IdentityCache = request.app.state.identities
    identity, recheck = cache.get(secret)
    if identity is None:
        identity = await run_in_threadpool(_identify, request, secret)
        if identity is None:
            raise Unauthenticated("invalid, expired or revoked credentials")
        cache.put(secret, identity)
    elif recheck:
        # Known and recently valid: answer now, confirm with the database meanwhile.
        task = asyncio.create_task(_recheck(request, cache, secret))
        _background.add(task)
        task.add_done_callback(_background.discard)
    request.state.identity = identity
    return identity


_background: set = set()  # strong references to running re-checks


async def _recheck(request: Request, cache: auth.IdentityCache, secret: str) -> None:
    try:
        cache.put(secret, await run_in_threadpool(_identify, request, secret))
    except Exception:  # the database is down: keep the entry until it is too old, then refuse
        cache.put(secret, None)


def _identify(request: Request, secret: str) -> auth.Identity | None:
    with Session(request.app.state.engine) as session:
        return auth.identify(session, secret)


class Allow:
    """Route dependency: authenticate, then admit only the given roles."""

    def __init__(self, *roles: str):
        unknown = set(roles) - set(EVERYONE)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}")
        self.roles = frozenset(roles)

    async def __call__(self, request: Request) -> auth.Identity:
        identity = await authenticate(request)
        if identity.role not in self.roles:
            raise Forbidden(f"role {identity.role!r} may not {request.method} {request.url.path}; "
                            f"allowed: {', '.join(sorted(self.roles))}")
        return identity
