"""The map pages, built with Folium, working on an intranet with no internet at all.

Every script, stylesheet, font and icon comes from `web/vendor` (see `web/vendor/README.md`),
served by the service under /static; `use_local_assets()` replaces Folium's CDN links with those.
The pages carry no data. The boundaries, door plates, incidents and saved hotspot layers are
vector tiles (/tiles/..., geo_service/tiles.py), declared here as folium's VectorGridProtobuf
layers (Leaflet.VectorGrid) and handed to `web/js/geomap.js`, which styles them (GeoMap.tileStyles)
and loads the rest from the API, with the session cookie of the login page; on the dispatch page
`web/js/console.js` adds the dispatch console (queue, incident panel, live updates from
/api/v1/events).
"""

from __future__ import annotations

import html
import json

from geo_service import roles, security, tiles
from geo_service.config import Settings

VENDOR = "/static/vendor"
CENTER = (22.715, 112.81)  # the middle of Heshan
PAGES = {
    "overview": "鹤山市网格治理地图 · Map",
    "dispatch": "调度台 · Dispatch",
    "hotspots": "热点分析 · Hotspots",
    "dashboard": "考核 · Scoreboard",
}
# Where each page lives (the dashboard is not a map page: geo_service/dashboard.py).
PAGE_PATHS = {"overview": "/map", "dispatch": "/map/dispatch", "hotspots": "/map/hotspots", "dashboard": "/dashboard"}
# The phone's top bar shows one of these in place of the links.
SHORT_TITLES = {"overview": "网格地图 Map", "dispatch": "调度台 Dispatch", "hotspots": "热点 Hotspots",
                "dashboard": "考核 Scoreboard"}
# On a phone the side panel is a sheet that this button opens.
PANEL_TOGGLES = {"dispatch": "事件队列 Queue", "hotspots": "分析面板 Analysis"}
# Who may open each page; the API behind them applies its own roles as well.
PAGE_ROLES = {"overview": roles.EVERYONE, "dispatch": roles.REPORTERS, "hotspots": roles.ANALYSTS,
              "dashboard": roles.SCOREBOARD}
CREATORS = roles.STAFF  # roles that may report incidents from the map
# The layers drawn from vector tiles, bottom to top: tile layer -> its name in the layer control
# (which geomap.js keeps), and whether its features answer the mouse (the others let a click
# through to the map: "who owns this point").
TILE_LAYERS = {"grids": ("grids 网格", True), "compounds": ("compounds 小区", False),
               "communities": ("communities 村(社区)", False), "towns": ("towns 镇街", False),
               "door_plates": ("door plates 粤居码", True), "incidents": ("incidents 事件", True)}


def use_local_assets() -> None:
    """Point Folium's Map and the plugins used at the vendored copies (idempotent)."""
    import folium
    import folium.plugins

    folium.Map.default_js = [
        ("leaflet", f"{VENDOR}/leaflet-1.9.3/leaflet.js"),
        ("jquery", f"{VENDOR}/jquery-3.7.1/jquery.min.js"),
        ("bootstrap", f"{VENDOR}/bootstrap-5.2.2/bootstrap.bundle.min.js"),
        ("awesome_markers", f"{VENDOR}/leaflet.awesome-markers-2.0.5/leaflet.awesome-markers.js"),
    ]
    folium.Map.default_css = [
        ("leaflet_css", f"{VENDOR}/leaflet-1.9.3/leaflet.css"),
        ("bootstrap_css", f"{VENDOR}/bootstrap-5.2.2/bootstrap.min.css"),
        ("glyphicons_css", f"{VENDOR}/bootstrap-3.4.1/css/bootstrap-glyphicons.css"),
        ("awesome_markers_font_css", f"{VENDOR}/fontawesome-free-6.2.0/css/all.min.css"),
        ("awesome_markers_css", f"{VENDOR}/leaflet.awesome-markers-2.0.5/leaflet.awesome-markers.css"),
        ("awesome_rotate_css", f"{VENDOR}/leaflet.awesome-markers-2.0.5/leaflet.awesome.rotate.min.css"),
    ]
    folium.plugins.HeatMap.default_js = [("leaflet-heat.js", f"{VENDOR}/leaflet-heat/leaflet_heat.min.js")]
    folium.plugins.VectorGridProtobuf.default_js = [
        ("vectorGrid", f"{VENDOR}/leaflet.vectorgrid-1.3.0/Leaflet.VectorGrid.bundled.min.js")]


def render(page: str, identity, settings: Settings, csrf_field: str = "geo_csrf", *, csrf_token: str = "",
           nonce: str | None = None) -> str:
    """The HTML of one map page for this caller.

    `csrf_token` goes into the sign-out form; with `nonce` every <script> carries it, which the
    Content-Security-Policy requires of the page's inline scripts (security.SecurityHeaders).
    """
    # Imported here, not with the module: an API process that serves no page never loads Folium.
    import folium
    import folium.plugins
    from branca.element import Element

    use_local_assets()
    # Folium's template brings the phone's viewport (`width=device-width, initial-scale=1.0,
    # maximum-scale=1.0, user-scalable=no`): a pinch zooms the map, not the page; geomap.css lays
    # the page out for that width (tests/test_phone.py).
    # maxZoom on the map itself: without a raster tile layer Leaflet has none, and a grid layer (the
    # vector tiles) would then ask for tiles of every zoom.
    m = folium.Map(location=CENTER, zoom_start=11, tiles=None, max_zoom=18, min_zoom=8,
                   control_scale=True, prefer_canvas=True, maxZoom=18, minZoom=8)
    if settings.tile_url:
        folium.TileLayer(tiles=settings.tile_url, attr=settings.tile_attribution or "basemap", name="底图 basemap",
                         max_zoom=18, overlay=False, control=True).add_to(m)
    # The plugins' scripts come with (empty) instances; geomap.js fills its own layers.
    folium.plugins.HeatMap([[CENTER[0], CENTER[1], 0]], control=False, show=False).add_to(m)
    vector_tiles = vector_tile_layers(page)
    for layer in vector_tiles.values():
        layer.add_to(m)
    root = m.get_root()
    root.header.add_child(Element(f"<title>{html.escape(PAGES[page])}</title>"))
    root.header.add_child(Element('<link rel="icon" href="/favicon.ico">'))
    root.header.add_child(folium.JavascriptLink("/static/js/geomap.js"))
    stylesheets = ["/static/css/geomap.css"]
    if page == "dispatch":
        root.header.add_child(folium.JavascriptLink("/static/js/console.js"))
        stylesheets.append("/static/css/console.css")
    config = {
        "page": page,
        "user": identity.name,
        "role": identity.role,
        "towns": sorted(identity.towns) if identity.towns is not None else None,
        "canCreate": identity.role in CREATORS,
        "csrfCookie": csrf_field,
        "pages": page_links(identity),
    }
    if page == "dispatch":
        config["actions"] = lifecycle_actions()
    root.html.add_child(Element(_chrome(page, config, csrf_token)))
    # Folium's script defines the map further down the same <script>: start once it has run.
    layers = "{" + ", ".join(f"{json.dumps(name)}: {layer.get_name()}" for name, layer in vector_tiles.items()) + "}"
    root.script.add_child(Element(
        f"document.addEventListener('DOMContentLoaded', function () {{ GeoMap.init({m.get_name()}, "
        f"{json.dumps(config, ensure_ascii=False)}, {layers}); }});"))
    # Our stylesheets last in <head>, after the ones Folium adds while rendering (Leaflet, Bootstrap):
    # where a rule of ours and one of theirs are equally specific (the popup's close button, the
    # layer list on a phone), ours wins.
    rendered = root.render().replace("</head>", "".join(
        f'<link rel="stylesheet" href="{href}"/>\n' for href in stylesheets) + "</head>", 1)
    return security.add_nonce(rendered, nonce) if nonce else rendered


def vector_tile_layers(page: str) -> dict:
    """The page's VectorGrid layers (folium's VectorGridProtobuf), by tile layer name, not yet shown:
    geomap.js shows them. Each asks for its tiles from its layer's minimum zoom on (below, the tile
    would be empty) and sends the session cookie; styles and feature ids are geomap.js's. The
    hotspots page also has the saved hotspot layers, one at a time (geomap.js sets `run`)."""
    import folium.plugins
    from folium.utilities import JsCode

    def declared(url: str, name: str, layer: tiles.Layer, interactive: bool, order: int):
        options = {"minZoom": layer.minzoom, "maxZoom": 18, "interactive": interactive, "zIndex": order,
                   # Points may be drawn across their tile's edge (geomap.css); outlines are cut at it.
                   "className": f"geo-tiles geo-tiles-{layer.kind}s", "fetchOptions": {"credentials": "same-origin"},
                   "vectorTileLayerStyles": JsCode("GeoMap.tileStyles"), "getFeatureId": JsCode("GeoMap.featureId")}
        if layer.point_zoom:
            options["pointZoom"] = layer.point_zoom
        return folium.plugins.VectorGridProtobuf(url, name, options, overlay=True, control=False, show=False)

    layers = {name: declared(f"/tiles/{name}/{{z}}/{{x}}/{{y}}.pbf", title, tiles.LAYERS[name], interactive, order)
              for order, (name, (title, interactive)) in enumerate(TILE_LAYERS.items(), start=1)}
    if page == "hotspots":
        layers["hotspots"] = declared("/tiles/hotspots-{run}/{z}/{x}/{y}.pbf", "saved hot spots 已保存热点",
                                      tiles.HOTSPOTS, True, 0)
    return layers


def lifecycle_actions() -> list[dict]:
    """The lifecycle table (lifecycle.TRANSITIONS) for the console, which offers the actions whose
    sources hold the incident's status and whose roles hold the caller's: a new action appears
    there without a change to the page (with a note field unless console.js knows its fields)."""
    from geo_service import lifecycle

    return [{"action": t.action, "sources": list(t.sources), "target": t.target, "roles": list(t.roles),
             "needs_note": t.needs_note, "summary": t.summary} for t in lifecycle.TRANSITIONS.values()]


def _chrome(page: str, config: dict, csrf_token: str = "") -> str:
    """The page furniture around the map: a top bar with the pages and the user, and a side panel.

    On a phone (geomap.css, below 700 px) the bar keeps one line: the menu button, this page's
    short title and Sign out; the page links and the user fold into the menu (geomap.js opens it),
    and the side panel becomes a sheet behind the button at the bottom.
    """
    links = "".join(
        f'<a href="{PAGE_PATHS[name]}"'
        + (' class="active" aria-current="page">' if name == page else ' class="">')
        + f"{html.escape(title)}</a>" for name, title in config["pages"].items())
    toggle = (f'<button type="button" id="geo-panel-toggle" aria-expanded="false" aria-controls="geo-panel">'
              f'{html.escape(PANEL_TOGGLES[page])}<span class="geo-count"></span></button>'
              if page in PANEL_TOGGLES else "")
    return (f'<div id="geo-topbar"><button type="button" id="geo-menu-button" aria-expanded="false" '
            f'aria-controls="geo-nav" aria-label="菜单 Menu" title="菜单 Menu"><span aria-hidden="true">☰</span>'
            f'</button><span class="brand">鹤山网格治理</span>'
            f'<span class="geo-title">{html.escape(SHORT_TITLES[page])}</span>'
            f'<nav id="geo-nav" aria-label="页面 Pages">{links}'
            f'<span class="user">{html.escape(config["user"])} · {html.escape(config["role"])}</span></nav>'
            # A plain form post (works without scripts): the CSRF token rides in a field.
            f'<form method="post" action="/logout"><input type="hidden" name="csrf" '
            f'value="{html.escape(csrf_token, quote=True)}"><button type="submit">退出 Sign out</button></form></div>'
            f'<div id="geo-panel" class="geo-panel-{page}"></div>{toggle}')


def page_links(identity) -> dict[str, str]:
    """The pages this caller may open, name -> title, for the top bar."""
    return {name: title for name, title in PAGES.items() if identity.role in PAGE_ROLES[name]}


def topbar(page: str, identity, csrf_token: str = "") -> str:
    """The top bar of the map pages, for a page that is not a Folium map (the dashboard)."""
    return _chrome(page, {"user": identity.name, "role": identity.role, "pages": page_links(identity)}, csrf_token)


def forbidden_page(page: str, identity) -> str:
    allowed = ", ".join(PAGE_ROLES[page])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>403</title>"
            f"<link rel='icon' href='/favicon.ico'></head><body style='font-family:sans-serif;margin:3em'>"
            f"<h1>403</h1><p>Role {html.escape(identity.role)!s} may not open this page; allowed: "
            f"{html.escape(allowed)}.</p><p><a href='/map'>Back to the map</a></p></body></html>")
