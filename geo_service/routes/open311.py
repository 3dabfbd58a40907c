"""Open311 GeoReport v2 at /open311/v2, every endpoint as .json and .xml (geo_service/open311.py
says what is answered). Keys go in the bearer header, or for a POST in the form's `api_key` field;
with GEO_OPEN311_PUBLIC the reads need none (`Open311Reader`). Every error under /open311 is
answered in the standard's shape by `Open311Errors`, the one place that does it."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from geo_service import audit, auth, intake, open311
from geo_service import roles as role_names
from geo_service.db import SessionDep
from geo_service.routes.access import SESSION_COOKIE, Allow, ReporterDep, client_address, refuse_credentials_in_url
from geo_service.routes.incidents import outside_error
from geo_service.routes.params import comma_list, json_response
from geo_service.schemas import (
    MAX_ID,
    Code,
    Instant,
    Open311Error,
    Open311Posted,
    Open311Request,
    Open311Service,
    Open311ServiceDefinition,
    Open311Token,
)

PREFIX = "/open311/v2"
router = APIRouter(prefix=PREFIX, tags=["open311"])


class Open311Reader(Allow):
    """Allow(every role) for the Open311 reads; with GEO_OPEN311_PUBLIC a caller who sends no
    credentials at all is admitted as open311.PUBLIC, which gets the public view. Credentials that
    are sent must be valid (401 otherwise, never a silent fall back to the public view), and a key
    in the query string is refused either way."""

    async def __call__(self, request: Request) -> auth.Identity:
        if (request.app.state.settings.open311_public and not request.headers.get("authorization")
                and not request.cookies.get(SESSION_COOKIE)):
            refuse_credentials_in_url(request)
            return open311.PUBLIC
        return await super().__call__(request)


ReaderDep = Annotated[auth.Identity, Depends(Open311Reader(*role_names.EVERYONE))]
Jurisdiction = Annotated[Code | None, Query(description="Optional: the one jurisdiction served "
                                                        "(GEO_OPEN311_JURISDICTION); any other is 404.")]
ERRORS = {401: "No or invalid credentials (reads: unless GEO_OPEN311_PUBLIC)", 403: "The role may not",
          404: "Not found, or a jurisdiction_id not served here", 422: "A bad parameter, named"}


class XMLResponse(Response):
    media_type = open311.XML


def both_formats(path: str, model, method: str = "GET", status_code: int = 200, errors=(401, 404, 422)):
    """Register the endpoint at `path.json` (answering `model`) and `path.xml` (GeoReport v2 XML)."""
    def register(endpoint):
        for fmt in open311.FORMATS:
            if fmt == "json":
                options = {"response_model": model,
                           "responses": {s: {"model": list[Open311Error], "description": ERRORS[s]} for s in errors}}
            else:
                xml = {"content": {open311.XML: {"schema": {"type": "string"}}}}
                options = {"response_model": None, "response_class": XMLResponse, "responses": {
                    status_code: {**xml, "description": "GeoReport v2 XML"},
                    **{s: {**xml, "description": ERRORS[s] + " (<errors><error>)"} for s in errors}}}
            router.add_api_route(f"{path}.{fmt}", endpoint, methods=[method], status_code=status_code,
                                 summary=f"{(endpoint.__doc__ or '').split('.')[0]} ({fmt.upper()})", **options)
        return endpoint
    return register


def answer(request: Request, root: str, content, status_code: int = 200) -> Response:
    """`content` as JSON, or as GeoReport v2 XML under `root` when the path ends in .xml."""
    if request.scope["path"].endswith(".xml"):
        return XMLResponse(open311.to_xml(root, content), status_code=status_code)
    response = json_response(content)
    response.status_code = status_code
    return response


def _served(request: Request, jurisdiction_id: str | None) -> None:
    open311.check_jurisdiction(jurisdiction_id, request.app.state.settings.open311_jurisdiction)


@both_formats("/services", list[Open311Service])
def services(request: Request, session: SessionDep, identity: ReaderDep, jurisdiction_id: Jurisdiction = None):
    """The service list: one service per incident category."""
    _served(request, jurisdiction_id)
    return answer(request, "services", open311.services(session))


@both_formats("/services/{service_code}", Open311ServiceDefinition)
def service_definition(request: Request, session: SessionDep, identity: ReaderDep,
                       service_code: Annotated[str, Path(max_length=64, description="A service code.")],
                       jurisdiction_id: Jurisdiction = None):
    """A service definition: the attributes a POST may carry as attribute[code]."""
    _served(request, jurisdiction_id)
    return answer(request, "service_definition", open311.service_definition(session, service_code))


@both_formats("/requests", list[Open311Request])
def requests(request: Request, session: SessionDep, identity: ReaderDep, jurisdiction_id: Jurisdiction = None,
             service_request_id: Annotated[str | None, Query(description="Comma-separated ids (at most 50); "
                                                                         "the other filters are then ignored.")] = None,
             service_code: Annotated[str | None, Query(description="Comma-separated service codes.")] = None,
             start_date: Annotated[Instant | None, Query(description="Requested at or after (ISO 8601).")] = None,
             end_date: Annotated[Instant | None, Query(description="Requested before (ISO 8601).")] = None,
             status: Annotated[str | None, Query(description="open, closed, or both comma-separated.")] = None):
    """Service requests (incidents the caller may see), newest first, at most 1,000."""
    _served(request, jurisdiction_id)
    asked = comma_list(service_request_id, "service_request_id")
    ids = None if asked is None else [int(i) for i in asked if i.isdigit() and 1 <= int(i) <= MAX_ID]
    return answer(request, "service_requests", open311.requests_for(
        session, identity, base_url=str(request.base_url), ids=ids, status=comma_list(status, "status"),
        start_date=start_date, end_date=end_date, service_codes=comma_list(service_code, "service_code")))


@both_formats("/requests/{request_id}", list[Open311Request])
def one_request(request: Request, session: SessionDep, identity: ReaderDep,
                request_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The service request id.")],
                jurisdiction_id: Jurisdiction = None):
    """One service request, as a list of one (as GeoReport v2 answers)."""
    _served(request, jurisdiction_id)
    return answer(request, "service_requests", open311.request_for(
        session, identity, request_id, str(request.base_url), request.app.state.clock()))


@both_formats("/tokens/{token}", list[Open311Token])
def token(request: Request, session: SessionDep, identity: ReaderDep,
          token: Annotated[str, Path(max_length=64, description="A token a POST answered.")],
          jurisdiction_id: Jurisdiction = None):
    """The service request a token stands for (our intake is synchronous: it is the request's id)."""
    _served(request, jurisdiction_id)
    return answer(request, "service_requests", open311.token_for(session, identity, token))


async def form_fields(request: Request) -> dict[str, str]:
    """The text fields of a GeoReport v2 POST (the body is already capped by the request guard)."""
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@both_formats("/requests", list[Open311Posted], method="POST", status_code=201, errors=(401, 403, 404, 422))
def create_request(request: Request, session: SessionDep, identity: ReporterDep,
                   form: Annotated[dict[str, str], Depends(form_fields)], jurisdiction_id: Jurisdiction = None):
    """Submit a service request (form fields: api_key unless a bearer header, service_code, lat and long
    or address_id, description; attribute[reporter_kind], attribute[external_id], attribute[crs])."""
    _served(request, jurisdiction_id if jurisdiction_id is not None else form.get("jurisdiction_id"))
    incident, _ = intake.intake(session, outside_error(request), identity, audit.actor_of(identity),
                                open311.report(form), request.app.state.clock(), source="open311",
                                address=client_address(request))
    return answer(request, "service_requests", open311.posted(incident), status_code=201)


class Open311Errors:
    """Every error under /open311 in GeoReport v2's shape, whoever answered it (a domain error, a
    validation error, the request guard's 413 or NUL 422, an unknown path): `[{"code": status,
    "description": detail}]`, or `<errors><error><code/><description/></error></errors>` when the
    path ends in .xml, with the same status and headers (WWW-Authenticate, Retry-After). The
    service's other fields of an error (limit_bytes, nearest_grid) are not part of the standard
    and are dropped. Pure ASGI, put outside the request guard by app.py; other paths pass
    straight through."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX + "/"):
            return await self.app(scope, receive, send)
        xml = scope["path"].endswith(".xml")
        held: dict | None = None  # the start of an error answer, sent once its body is rewritten
        body = bytearray()

        async def reshape(message):
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or ())
                if (message["status"] >= 400 and headers.get(b"content-type", b"").startswith(b"application/json")
                        and b"content-encoding" not in headers):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                status = held["status"]
                try:
                    detail = orjson.loads(bytes(body))
                    detail = detail.get("detail", detail) if isinstance(detail, dict) else detail
                except orjson.JSONDecodeError:
                    detail = bytes(body).decode("utf-8", "replace")
                errors = open311.errors(status, detail if isinstance(detail, str) else str(detail))
                content, media_type = ((open311.to_xml("errors", errors), open311.XML) if xml
                                       else (orjson.dumps(errors), "application/json"))
                kept = [(k, v) for k, v in held.get("headers") or () if k not in (b"content-type", b"content-length")]
                await send({**held, "headers": [*kept, (b"content-type", media_type.encode()),
                                                (b"content-length", str(len(content)).encode())]})
                message = {"type": "http.response.body", "body": content}
            await send(message)

        await self.app(scope, receive, reshape)
