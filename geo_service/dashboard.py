"""The officials' dashboard, /dashboard (考核): a plain page (no Folium) over the scoreboard API.

It shows the period's totals, the trend of the on-time rate by week or month, the ten grids with
the worst on-time rate (among those with at least scoreboard.MIN_CLOSED_FOR_RANKING closed
incidents) and a choropleth of a chosen figure that drills from the towns to a town's communities
to a community's grids. Everything comes from this site: the page's script `web/js/dashboard.js`
and stylesheet `web/css/dashboard.css`, Leaflet from `web/vendor`, the data from
`/api/v1/scoreboard` and the area layers with the session cookie; the charts are SVG drawn by the
script. The HTML carries the top bar of the map pages, the defaults and the labels, not data.
"""

from __future__ import annotations

import datetime as dt
import html
import json

from geo_service import roles, scoreboard, security, webmap
from geo_service.config import Settings
from geo_service.generations import LOCAL_TZ

TITLE = webmap.PAGES["dashboard"]
PAGE_ROLES = roles.SCOREBOARD
VENDOR = webmap.VENDOR
# The figures the map can colour: name, label, whether more is better (green), how to show it.
MAP_FIGURES = (
    ("on_time_rate", "按期办结率 on-time rate", True, "percent"),
    ("backlog", "积压 open backlog", False, "count"),
    ("patrol_coverage", "巡查覆盖率 patrol coverage", True, "percent"),
    ("reopen_rate", "重办率 reopen rate", False, "percent"),
    ("whistle_on_time_rate", "吹哨按时报到率 whistles on time", True, "percent"),
    ("mean_hours", "平均办理时长 mean hours", False, "hours"),
    ("reported", "上报 reported", None, "count"),
)


def config(identity, settings: Settings, now: dt.datetime) -> dict:
    """What the page's script needs, for this caller: the default period, the labels, the rules."""
    default = scoreboard.period(None, None, now)
    last_day = (default.until - dt.timedelta(microseconds=1)).astimezone(LOCAL_TZ).date()
    return {
        "user": identity.name,
        "role": identity.role,
        "towns": sorted(identity.towns) if identity.towns is not None else None,
        "from": default.since.astimezone(LOCAL_TZ).date().isoformat(),
        "to": last_day.isoformat(),
        "minClosed": scoreboard.MIN_CLOSED_FOR_RANKING,
        "figures": [{"name": name, "label": label, "better": better, "format": kind}
                    for name, label, better, kind in MAP_FIGURES],
        "tileUrl": settings.tile_url,
        "tileAttribution": settings.tile_attribution,
        "center": list(webmap.CENTER),
    }


def _script_json(value) -> str:
    """JSON safe inside <script>: no `</script>` or `<!--` can end or change the element."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="/favicon.ico">
<link rel="stylesheet" href="{vendor}/leaflet-1.9.3/leaflet.css">
<link rel="stylesheet" href="/static/css/geomap.css">
<link rel="stylesheet" href="/static/css/dashboard.css">
</head><body class="geo-page-dashboard">
{topbar}
<main id="db-main">
<form id="db-controls" class="db-row" novalidate>
<label>自 From <input type="date" id="db-from" required></label>
<label>至 To <input type="date" id="db-to" required></label>
<label>趋势 Trend <select id="db-trend"><option value="week">按周 weekly</option>
<option value="month">按月 monthly</option></select></label>
<button type="submit" id="db-apply">更新 Update</button>
<span id="db-downloads"></span>
<span id="db-status" role="status" aria-live="polite"></span>
</form>
<section id="db-totals" aria-label="合计 totals"></section>
<div id="db-grid">
<section id="db-trend-box" aria-labelledby="db-trend-title">
<h2 id="db-trend-title">按期办结率趋势 On-time rate trend</h2>
<div id="db-trend-chart"></div>
</section>
<section id="db-map-box" aria-labelledby="db-map-title">
<h2 id="db-map-title">地图 Map <select id="db-figure" aria-label="指标 figure"></select></h2>
<nav id="db-crumbs" aria-label="层级 levels"></nav>
<div id="db-map" role="application" aria-label="分区着色地图 choropleth map: click an area to open its parts"></div>
<div id="db-legend"></div>
</section>
<section id="db-worst-box" aria-labelledby="db-worst-title">
<h2 id="db-worst-title">按期办结率最低的十个网格 Worst ten grids</h2>
<p class="db-hint" id="db-worst-rule"></p>
<table id="db-worst"><thead><tr><th>#</th><th>网格 grid</th><th>办结 closed</th><th>按期 on time</th>
<th>按期办结率 rate</th></tr></thead><tbody></tbody></table>
</section>
<section id="db-rows-box" aria-labelledby="db-rows-title">
<h2 id="db-rows-title">明细 Rows</h2>
<div id="db-rows"></div>
</section>
</div>
</main>
<script>window.dashboardConfig = {config};</script>
<script src="{vendor}/leaflet-1.9.3/leaflet.js"></script>
<script src="/static/js/dashboard.js"></script>
</body></html>
"""


def render(identity, settings: Settings, now: dt.datetime, csrf_token: str, nonce: str) -> str:
    """The page for this caller; the inline config script runs only with `nonce` (the page's CSP)."""
    page = PAGE.format(title=html.escape(TITLE), vendor=VENDOR, topbar=webmap.topbar("dashboard", identity, csrf_token),
                       config=_script_json(config(identity, settings, now)))
    return security.add_nonce(page, nonce)
