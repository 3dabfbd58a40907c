"""The map pages (behind the login page), the static assets and an offline /docs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from geo_service import webmap
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
    return HTMLResponse(webmap.render(page, identity, request.app.state.settings, CSRF_COOKIE))


@router.get("/map")
async def overview(request: Request):
    return await _page(request, "overview")


@router.get("/map/dispatch")
async def dispatch_page(request: Request):
    return await _page(request, "dispatch")


@router.get("/map/hotspots")
async def hotspots_page(request: Request):
    return await _page(request, "hotspots")


@router.get("/")
def home():
    return RedirectResponse("/map", status_code=303)


@router.get("/favicon.ico")
def favicon():
    return FileResponse(WEB / "favicon.ico", media_type="image/x-icon")


@router.get("/docs")
def docs():
    return get_swagger_ui_html(openapi_url="/openapi.json", title="geo_service API",
                               swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
                               swagger_css_url=f"{SWAGGER}/swagger-ui.css",
                               swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png")
