"""The map pages (behind the login page), the static assets and an offline /docs (behind it too,
unless GEO_PUBLIC_DOCS opens /docs and /openapi.json)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from geo_service import dashboard, reportpage, security, webmap
from geo_service.config import PROJECT_ROOT
from geo_service.errors import Forbidden, Unauthenticated
from geo_service.routes.access import CSRF_COOKIE, authenticate
from geo_service.routes.auth import login_redirect

router = APIRouter(include_in_schema=False)
WEB = PROJECT_ROOT / "web"
SWAGGER = "/static/vendor/swagger-ui-5.17.14"


async def _page(request: Request, page: str):
    try:
        identity = await authenticate(request)
    except (Unauthenticated, Forbidden):
        return login_redirect(request)
    if identity.role not in webmap.PAGE_ROLES[page]:
        return HTMLResponse(webmap.forbidden_page(page, identity), status_code=403)
    page_html = webmap.render(page, identity, request.app.state.settings, CSRF_COOKIE,
                              csrf_token=request.cookies.get(CSRF_COOKIE, ""), nonce=security.page_nonce(request))
    # no-store: the page carries the CSRF token and is rendered for this user only.
    return HTMLResponse(page_html, headers={"Cache-Control": "no-store"})


@router.get("/map")
async def overview(request: Request):
    return await _page(request, "overview")


@router.get("/map/dispatch")
async def dispatch_page(request: Request):
    return await _page(request, "dispatch")


@router.get("/map/hotspots")
async def hotspots_page(request: Request):
    return await _page(request, "hotspots")


@router.get("/dashboard")
async def dashboard_page(request: Request):
    """The officials' scoreboard page (geo_service/dashboard.py): not a Folium map."""
    try:
        identity = await authenticate(request)
    except (Unauthenticated, Forbidden):
        return login_redirect(request)
    if identity.role not in dashboard.PAGE_ROLES:
        return HTMLResponse(webmap.forbidden_page("dashboard", identity), status_code=403)
    page_html = dashboard.render(identity, request.app.state.settings, request.app.state.clock(),
                                 request.cookies.get(CSRF_COOKIE, ""), security.page_nonce(request))
    return HTMLResponse(page_html, headers={"Cache-Control": "no-store"})


@router.get("/report")
async def report_page(request: Request):
    """The phone report page (geo_service/reportpage.py)."""
    plate = reportpage.canonical_plate(request.query_params.get("plate"))
    if plate is not None:  # a scanned URL or a lower-case code: on to the plain code
        return RedirectResponse(f"/report?plate={quote(plate, safe='')}", status_code=303)
    try:
        identity = await authenticate(request)
    except (Unauthenticated, Forbidden):
        if reportpage.needs_another_look(request.headers):
            return HTMLResponse(reportpage.again_page(), headers={"Cache-Control": "no-store"})
        return login_redirect(request)
    if identity.role not in reportpage.PAGE_ROLES:
        return HTMLResponse(reportpage.forbidden_page(identity), status_code=403)

    def page_config() -> dict:
        with request.app.state.replicas.session_for(request) as session:
            return reportpage.config(session, identity, request.app.state.settings, CSRF_COOKIE)

    page_html = reportpage.render(await run_in_threadpool(page_config), request.cookies.get(CSRF_COOKIE, ""),
                                  security.page_nonce(request))
    # no-store: rendered for this user. The service worker keeps its own copy for offline use,
    # recognising the page by X-Geo-Page (not the sign-in or "open again" pages of this URL).
    return HTMLResponse(page_html, headers={"Cache-Control": "no-store", "X-Geo-Page": "report"})


@router.get(reportpage.SERVICE_WORKER)
def report_service_worker():
    # Served from the root, so that its scope may be /report; no-cache: a new version is seen at once.
    return FileResponse(WEB / "report-sw.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"})


@router.get("/")
def home():
    return RedirectResponse("/map", status_code=303)


@router.get("/favicon.ico")
def favicon():
    return FileResponse(WEB / "favicon.ico", media_type="image/x-icon")


async def _docs_reader(request: Request) -> bool:
    """Whether this caller may read the API documentation: anyone when GEO_PUBLIC_DOCS is set,
    otherwise whoever is signed in (the document maps every route an attacker could try)."""
    if request.app.state.settings.public_docs:
        return True
    try:
        await authenticate(request)
    except (Unauthenticated, Forbidden):
        return False
    return True


@router.get("/docs")
async def docs(request: Request):
    if not await _docs_reader(request):
        return login_redirect(request)
    swagger = get_swagger_ui_html(openapi_url="/openapi.json", title="geo_service API",
                                  swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
                                  swagger_css_url=f"{SWAGGER}/swagger-ui.css",
                                  swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png")
    # Swagger UI starts from an inline script: it runs only with this response's nonce.
    return HTMLResponse(security.add_nonce(swagger.body.decode(), security.page_nonce(request)))


@router.get("/openapi.json")
async def openapi_document(request: Request):
    if not await _docs_reader(request):
        raise Unauthenticated("the API documentation needs a sign-in: send `Authorization: Bearer <token or API key>`"
                              " or sign in at /login")
    return JSONResponse(request.app.openapi())
