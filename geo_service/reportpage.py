"""The phone report page, /report: a light page (no Folium) for grid workers, riders and police.

The place comes from the phone's GPS or from a 粤居码 door plate: the plate's QR code opens
`/report?plate=CODE` (any form the door-plate lookup accepts; the route answers a redirect to
the plain code). The page works offline once visited: `web/report-sw.js`, a service worker
with the scope /report, keeps the page and its assets, and `web/js/report-outbox.js` keeps
the reports not yet sent in IndexedDB, each with its `external_id`, so a report sent twice is
recorded once.

The HTML is the same for every URL of the page (the plate is read by the script), so the one
copy the service worker keeps serves any plate offline. It carries the caller's name and what
they report as; the categories travel in it too, so the form works without the network.
"""

from __future__ import annotations

import html
import json

from geo_service import auth, incidents, models, roles, security, webmap
from geo_service.config import Settings
from geo_service.errors import InvalidInput
from geo_service.ownership import normalize_door_plate_code

TITLE = "上报 · Report"
PAGE_ROLES = roles.REPORTERS
SCOPE = "/report"
SERVICE_WORKER = "/report-sw.js"  # at the root: a worker's scope may not be above its own directory
VENDOR = webmap.VENDOR
# The files the page loads. It keeps them in Cache Storage on every visit, and the service worker
# serves them from there to a page opened offline (tests/test_report_page.py checks that the page
# loads nothing else).
ASSETS = (
    "/static/css/report.css",
    f"{VENDOR}/leaflet-1.9.3/leaflet.css",
    f"{VENDOR}/leaflet-1.9.3/leaflet.js",
    "/static/js/report-outbox.js",
    "/static/js/report.js",
    "/favicon.ico",
)


def canonical_plate(raw: str | None) -> str | None:
    """The plain code of `?plate=` when it differs from what was sent (the page then redirects
    to it), else None: a plain code already, absent, or not a plate at all (the page shows the
    lookup's own error for that)."""
    if not raw:
        return None
    try:
        code = normalize_door_plate_code(raw)
    except InvalidInput:
        return None
    return code if code != raw else None


def config(session, identity, settings: Settings, csrf_cookie: str) -> dict:
    """What the page's script needs, for this caller."""
    return {
        "user": identity.name,
        "role": identity.role,
        # None (dispatchers, admins: accounts of no person): the page lets them choose.
        "reporterKind": auth.reporter_kind(session, identity),
        "reporterKinds": list(models.REPORTER_KINDS),
        "categories": [{"code": c["code"], "name": c["name"], "name_en": c["name_en"]}
                       for c in incidents.categories(session)],
        "csrfCookie": csrf_cookie,
        "maxPhotos": settings.photos_per_request,
        "maxPhotoBytes": settings.photo_max_bytes,
        "tileUrl": settings.tile_url,
        "tileAttribution": settings.tile_attribution,
        "center": list(webmap.CENTER),
        "serviceWorker": SERVICE_WORKER,
        "scope": SCOPE,
        "assets": list(ASSETS),
    }


def _script_json(value) -> str:
    """JSON safe inside <script>: no `</script>` or `<!--` can end or change the element."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<meta name="theme-color" content="#1f3b5c">
<title>{title}</title>
<link rel="icon" href="/favicon.ico">
<link rel="stylesheet" href="{vendor}/leaflet-1.9.3/leaflet.css">
<link rel="stylesheet" href="/static/css/report.css">
</head><body>
<header id="rp-top"><span class="brand">鹤山网格治理 · 上报</span>
<span class="user">{user}</span>
<a href="/map/dispatch">调度 Queue</a>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{csrf}">
<button type="submit">退出</button></form></header>
<p id="rp-net" hidden>离线 Offline: 上报会保存在本机，联网后自动发送 reports wait on this phone</p>
<main>
<form id="rp-form" novalidate>
<section id="rp-where" aria-labelledby="rp-where-title">
<h2 id="rp-where-title">位置 Place</h2>
<div id="rp-plate" hidden><span class="label">门牌 粤居码</span> <code id="rp-plate-code"></code>
<div id="rp-plate-address"></div></div>
<div id="rp-map" role="application" aria-label="地图：拖动标记调整位置 map: drag the marker to adjust"></div>
<p id="rp-place" class="hint">正在定位… locating…</p>
<div class="rp-row">
<button type="button" id="rp-gps">我的位置 My location</button>
<button type="button" id="rp-back-to-plate" hidden>↩ 门牌位置 Plate</button>
</div>
<details id="rp-plate-entry"><summary>输入门牌码 Enter a door-plate code</summary>
<div class="rp-row"><input id="rp-plate-input" maxlength="512" autocomplete="off" autocapitalize="characters"
 placeholder="YJ… 或扫码网址 or scanned URL" aria-label="门牌码 door-plate code">
<button type="button" id="rp-plate-go">查找 Find</button></div></details>
</section>
<label for="rp-category">类别 Category</label>
<select id="rp-category" required></select>
<div id="rp-kind-row" hidden><label for="rp-kind">上报人 Reporter</label><select id="rp-kind"></select></div>
<label for="rp-description">描述 Description</label>
<textarea id="rp-description" maxlength="2000" rows="4" required
 placeholder="发生了什么？ What is wrong, where exactly?"></textarea>
<div id="rp-photo-buttons" class="rp-row">
<label class="rp-button">拍照 Take photo
<input type="file" id="rp-camera" accept="image/*" capture="environment"></label>
<label class="rp-button">选择 Choose<input type="file" id="rp-photos" accept="image/*" multiple></label>
<span id="rp-photo-count" class="hint"></span>
</div>
<ul id="rp-previews"></ul>
<button type="submit" id="rp-submit">提交 Send</button>
<p id="rp-status" role="status" aria-live="polite"></p>
</form>
<section id="rp-mine" aria-labelledby="rp-mine-title">
<h2 id="rp-mine-title">我的上报 My reports
<button type="button" id="rp-refresh" aria-label="刷新 refresh">↻</button></h2>
<p id="rp-mine-note" class="hint"></p>
<ul id="rp-list"></ul>
</section>
</main>
<script>window.reportConfig = {config};</script>
<script src="{vendor}/leaflet-1.9.3/leaflet.js"></script>
<script src="/static/js/report-outbox.js"></script>
<script src="/static/js/report.js"></script>
</body></html>
"""


def render(page_config: dict, csrf_token: str, nonce: str) -> str:
    """The page; the inline config script runs only with `nonce` (the page's CSP)."""
    page = PAGE.format(title=html.escape(TITLE), vendor=VENDOR, user=html.escape(page_config["user"]),
                       csrf=html.escape(csrf_token, quote=True), config=_script_json(page_config))
    return security.add_nonce(page, nonce)


# Opened from the phone's camera (a QR code), the page is a cross-site navigation: the browser
# keeps the SameSite=Strict session cookie back, and the request looks signed out. This page
# opens the same URL again from this site, which sends the cookie; if the caller is really
# signed out, that second request gets the login redirect as usual (it is same-origin, so it
# never comes back here).
AGAIN_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="0">
<title>{title}</title><link rel="icon" href="/favicon.ico"></head>
<body style="font-family:sans-serif;margin:2em"><p><a href="">继续 Continue</a></p></body></html>
"""


def needs_another_look(headers) -> bool:
    """Whether a signed-out navigation may be a signed-in caller whose cookie the browser withheld:
    one that did not start on this site (Sec-Fetch-Site cross-site, same-site or none)."""
    return (headers.get("sec-fetch-mode") == "navigate"
            and headers.get("sec-fetch-site") in ("cross-site", "same-site", "none"))


def again_page() -> str:
    return AGAIN_PAGE.format(title=html.escape(TITLE))


def forbidden_page(identity) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>403</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='icon' href='/favicon.ico'></head><body style='font-family:sans-serif;margin:2em'>"
            f"<h1>403</h1><p>Role {html.escape(identity.role)} may not report; allowed: "
            f"{html.escape(', '.join(PAGE_ROLES))}.</p><p><a href='/map'>Back to the map</a></p></body></html>")
