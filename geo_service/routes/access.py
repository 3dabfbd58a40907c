"""Authentication and authorisation for every route: one `Allow` dependency per route.

Credentials come as `Authorization: Bearer <token or API key>` (API clients, GDAL, QGIS) or
as the `geo_session` cookie set by the login page. A cookie-authenticated request that changes
something must also send the `geo_csrf` cookie's value in an `X-CSRF-Token` header
(double-submit; the cookies are SameSite=Strict as well). A credential in a query string is
refused (401), never used: URLs end up in logs. Every route under /api/v1 except
`/healthz` declares who may call it with `Allow(...)`; tests/test_access.py fails when a route
has no such decision.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from geo_service import auth, security
from geo_service import roles as role_names
from geo_service.errors import Forbidden, Unauthenticated

SESSION_COOKIE = "geo_session"
CSRF_COOKIE = "geo_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# How /docs's "Authorize" button signs in (app.py adds it to the OpenAPI document once, rather
# than as a sub-dependency of every route, which cost the hottest route ~20 µs per request).
SECURITY_SCHEME = {"OAuth2PasswordBearer": {"type": "oauth2", "flows": {
    "password": {"tokenUrl": "/api/v1/auth/token", "scopes": {}}}}}


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def authenticate(request: Request, csrf_token: str | None = None) -> auth.Identity:
    """The caller's identity, from the identity cache or (on a miss) the database.

    `csrf_token` is the CSRF token when a form sent it in a field rather than the header.
    """
    refuse_credentials_in_url(request)
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    from_cookie = False
    if (not secret or scheme.lower() != "bearer") and request.method == "POST" \
            and request.url.path.startswith("/open311/"):
        # GeoReport v2 clients send their key as an `api_key` field of the POST body.
        secret = str((await request.form()).get("api_key") or "")
        scheme = "bearer" if secret else scheme
    if not secret or scheme.lower() != "bearer":
        secret = request.cookies.get(SESSION_COOKIE, "")
        from_cookie = True
    if not secret:
        raise Unauthenticated("authentication required: send `Authorization: Bearer <token or API key>`")
    if from_cookie and request.method not in SAFE_METHODS:
        check_csrf(request, csrf_token)
    return await identify(request, secret)


def refuse_credentials_in_url(request: Request) -> None:
    """A key or token in a query string ends up in access logs, proxies and browser history:
    refuse it, so that it is sent properly (and replaced) rather than kept working."""
    query = request.scope.get("query_string")
    if query:
        name = security.credential_in_query(query)
        if name is not None:
            raise Unauthenticated(
                f"credentials are not accepted in the URL (query parameter {name!r}): send "
                "`Authorization: Bearer <token or API key>`, or for Open311 the `api_key` field of a POST body")


def check_csrf(request: Request, csrf_token: str | None = None) -> None:
    """Double-submit check for a cookie-authenticated change: the geo_csrf cookie's value must
    come back in the X-CSRF-Token header (scripts) or, where a route allows it, a form field."""
    sent = request.headers.get(CSRF_HEADER) or csrf_token or ""
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden(f"missing or wrong {CSRF_HEADER} header for a cookie-authenticated {request.method}")


async def identify(request: Request, secret: str) -> auth.Identity:
    """The identity behind a secret (cache first), or Unauthenticated."""
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
    # From a standby when there is one: answering callers must not need the primary. A secret the
    # standby does not know may be one signed in a moment ago, not yet replayed: the primary decides.
    replicas = request.app.state.replicas
    engine = replicas.reader()
    with replicas.read_session(request.app.state, engine) as session:
        identity = auth.identify(session, secret)
    if identity is None and engine is not replicas.primary and replicas.primary_up:
        with replicas.read_session(request.app.state, replicas.primary) as session:
            identity = auth.identify(session, secret)
    return identity


class Allow:
    """Route dependency: authenticate, then admit only the given roles."""

    def __init__(self, *roles: str):
        unknown = set(roles) - set(role_names.ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}")
        self.roles = frozenset(roles)

    async def __call__(self, request: Request) -> auth.Identity:
        identity = await authenticate(request)
        if identity.role not in self.roles:
            raise Forbidden(f"role {identity.role!r} may not {request.method} {request.url.path}; "
                            f"allowed: {', '.join(sorted(self.roles))}")
        return identity


# The route dependencies, one per role group (geo_service/roles.py).
AnyoneDep = Annotated[auth.Identity, Depends(Allow(*role_names.EVERYONE))]
ReporterDep = Annotated[auth.Identity, Depends(Allow(*role_names.REPORTERS))]
ActorDep = Annotated[auth.Identity, Depends(Allow(*role_names.ACTORS))]
AnalystDep = Annotated[auth.Identity, Depends(Allow(*role_names.ANALYSTS))]
PublisherDep = Annotated[auth.Identity, Depends(Allow(*role_names.PUBLISHERS))]
AdminDep = Annotated[auth.Identity, Depends(Allow(*role_names.ADMINS))]
