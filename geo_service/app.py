"""The FastAPI application, built by create_app(settings) and never at import time."""

import datetime as dt
import re
from contextlib import asynccontextmanager

import psycopg2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError

from geo_service import __version__
from geo_service.analytics_jobs import Runner as AnalyticsRunner
from geo_service.audit import AuditBuffer
from geo_service.auth import IdentityCache
from geo_service.config import Settings, get_settings
from geo_service.db import make_engine, make_sessionmaker
from geo_service.errors import (
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    GeoServiceError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    TooManyAttempts,
    Unauthenticated,
    UnsupportedMediaType,
)
from geo_service.jobs import Jobs
from geo_service.ownership import OwnershipCache
from geo_service.replicas import ReadYourWrites, Replicas
from geo_service.routes import (
    analytics,
    areas,
    auth,
    events,
    guard,
    incidents,
    layers,
    ogc,
    open311,
    ownership,
    pages,
    patrols,
    scoreboard,
    system,
    tiles,
    webhooks,
)
from geo_service.routes.compression import Compression
from geo_service.security import SecurityHeaders

# The one place where domain errors become HTTP statuses.
ERROR_STATUS = {
    Unauthenticated: 401,
    Forbidden: 403,
    TooManyAttempts: 429,
    InvalidInput: 422,
    NotFound: 404,  # also OutsideCoverage, which adds the nearest grid
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    DatabaseUnavailable: 503,
}


def _status_for(error: GeoServiceError) -> int:
    for kind, status in ERROR_STATUS.items():
        if isinstance(error, kind):
            return status
    return 500


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.replicas.start()
        if settings.background_jobs:
            app.state.jobs.start()
        yield
        app.state.jobs.close()
        app.state.analytics_jobs.close()
        app.state.audit.close()  # writes the buffered lookup audit rows: nothing lost on shutdown
        app.state.ownership.close()
        app.state.replicas.close()
        engine.dispose()

    app = FastAPI(
        docs_url=None,  # served by routes/pages.py with vendored Swagger UI (the default loads a CDN)
        redoc_url=None,
        openapi_url=None,  # served by routes/pages.py too: behind a sign-in unless GEO_PUBLIC_DOCS
        title="geo_service",
        version=__version__,
        description="Heshan grid governance: who owns a location, incidents, map and hotspots.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    # Reads on the primary are READ ONLY too (psycopg2 says so in the BEGIN): a GET that tried to write fails.
    app.state.read_sessionmaker = make_sessionmaker(engine.execution_options(postgresql_readonly=True))
    app.state.replicas = Replicas(engine, settings)
    app.state.ownership = OwnershipCache(app.state.replicas, settings.metric_crs)
    app.state.identities = IdentityCache(settings.identity_cache_seconds)
    app.state.audit = AuditBuffer(engine)
    app.state.clock = lambda: dt.datetime.now(dt.UTC)  # replaced by tests that need a controllable clock
    app.state.jobs = Jobs(engine, settings, lambda: app.state.clock())
    app.state.analytics_jobs = AnalyticsRunner(app.state.replicas, settings)

    @app.exception_handler(GeoServiceError)
    async def domain_error(request: Request, exc: GeoServiceError):
        status = _status_for(exc)
        headers = {503: {"Retry-After": "5"}, 401: {"WWW-Authenticate": "Bearer"},
                   429: {"Retry-After": str(exc.extra.get("retry_after", 30))}}.get(status)
        return JSONResponse({"detail": exc.message, **exc.extra}, status_code=status, headers=headers)

    app.add_exception_handler(RequestValidationError, guard.validation_error)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError):
        # Connection loss (database stopped or restarting) is temporary: say so with 503.
        if exc.connection_invalidated or isinstance(exc.orig, (psycopg2.OperationalError,
                                                               psycopg2.InterfaceError)):
            return JSONResponse({"detail": "database unavailable; retry shortly"}, status_code=503,
                                headers={"Retry-After": "5"})
        raise exc

    # First: the lookup is the hottest route, matched in order; its lean endpoint before the
    # documented one (routes/ownership.py says why).
    app.router.add_route("/api/v1/lookup", ownership.LookupEndpoint(), methods=["GET"], include_in_schema=False)
    app.router.add_route("/api/v1/incidents", incidents.ReportEndpoint(), methods=["POST"], include_in_schema=False)
    app.router.add_route("/ogc/collections/{collection_id}/items", ogc.ItemsEndpoint(), methods=["GET"],
                         include_in_schema=False)
    app.include_router(ownership.router)
    app.include_router(auth.router)
    app.include_router(system.router)
    app.include_router(areas.router)
    app.include_router(incidents.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(layers.router)
    app.include_router(analytics.router)
    app.include_router(ogc.router)
    app.include_router(open311.router)
    app.include_router(patrols.router)
    app.include_router(scoreboard.router)
    app.include_router(tiles.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.WEB), name="static")
    # Large answers (map layers) travel compressed to browsers; lookups stay below the threshold.
    app.add_middleware(Compression, minimum_size=16_384)
    app.add_middleware(ReadYourWrites, replicas=app.state.replicas)
    # Outermost: bodies are capped and NUL characters refused before anything reads them.
    app.add_middleware(guard.RequestGuard, default_limit=settings.max_body_bytes,
                       limits={"/api/v1/lookup/batch": settings.batch_max_bytes},
                       uploads=(re.compile(r"/api/v1/incidents(/[0-9]+/attachments)?"),
                                settings.photos_per_request * settings.photo_max_bytes + settings.max_body_bytes))
    # Open311 clients parse GeoReport v2's error shape, not ours: every error under /open311 (the
    # handlers' above and the guard's alike) is rewritten here, the one place (routes/open311.py).
    app.add_middleware(open311.Open311Errors)
    app.add_middleware(SecurityHeaders, settings=settings)  # CSP, nosniff, HSTS...: on every answer
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """The OpenAPI document, with the bearer sign-in declared once for every route."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        from geo_service.routes.access import SECURITY_SCHEME

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEME
        schema["security"] = [{"OAuth2PasswordBearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def app_from_env() -> FastAPI:
    """Factory for uvicorn (`--factory`): settings from the environment."""
    return create_app()
