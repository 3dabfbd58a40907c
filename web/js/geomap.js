/* geo_service map pages. Every layer is loaded from the service (same origin, session cookie):
 * boundaries, door plates, incidents and saved hotspot layers as vector tiles, the rest from the
 * API; nothing here reaches beyond the service. Folium builds the map and declares the tile
 * layers; GeoMap.init(map, config, tiles) styles and adds the layers, controls and panels.
 * window.geoState exposes the layers to tests (geoState.tileFeatures(name): a tile layer's
 * features around the view; geoState.tileLayers: the VectorGrid layers). */
var GeoMap = (function () {
  "use strict";

  var STATUS_COLOURS = {
    reported: "#757575", assigned: "#1e88e5", accepted: "#3949ab", in_progress: "#8e24aa",
    resolved: "#43a047", verified: "#2e7d32", closed: "#90a4ae", escalated: "#e53935",
    returned: "#fb8c00", reopened: "#f4511e", rejected: "#bdbdbd"
  };
  var STATIONS = {
    governance_center: ["landmark", "darkblue", "综治中心 governance centre"],
    dispute_resolution: ["scale-balanced", "green", "解纷站点 dispute resolution"],
    foreign_legal_service: ["globe", "purple", "涉外法律服务 foreign-related legal service"],
    labour_dispute_platform: ["briefcase", "orange", "劳动争议平台 labour disputes"],
    police_station: ["shield-halved", "blue", "派出所 police station"],
    public_service: ["heart", "cadetblue", "公共服务 public service"]
  };
  // A phone, as geomap.css's breakpoint: the layer list starts folded there, the search spans the map.
  var PHONE = window.matchMedia("(max-width: 700px)");
  var NO_HOVER = window.matchMedia("(hover: none)");
  var map, cfg, categories = [], control;
  var state = { layers: {}, ready: false, errors: [] };

  function esc(value) {
    return String(value == null ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function cookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }

  function api(path, options) {
    options = options || {};
    var init = { credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (options.body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.headers["X-CSRF-Token"] = cookie(cfg.csrfCookie);
      init.body = JSON.stringify(options.body);
    } else if (options.form !== undefined) {  // multipart (photos): the browser sets the boundary
      init.method = "POST";
      init.headers["X-CSRF-Token"] = cookie(cfg.csrfCookie);
      init.body = options.form;
    }
    return fetch(path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (!response.ok) {
          var error = new Error(body.detail || ("HTTP " + response.status));
          error.status = response.status;
          error.body = body;
          throw error;
        }
        return body;
      });
    });
  }

  function localTime(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleString("zh-CN", { timeZone: "Asia/Shanghai", hour12: false });
  }

  // ----------------------------------------------------------------- vector tiles

  // The boundaries, door plates, incidents and saved hotspot layers come as vector tiles
  // (GET /tiles/{layer}/{z}/{x}/{y}.pbf, geo_service/tiles.py), drawn by Leaflet.VectorGrid.
  // webmap.py declares the VectorGrid layers through folium; their styles and feature ids are
  // these (by the layer's name inside the tiles), which its options name.
  var HIDDEN = { stroke: false, fill: false };  // a tile feature drawn by a live marker instead
  var tileStyles = {
    counties: { color: "#0d2137", weight: 4, fill: false },
    towns: { color: "#1f3b5c", weight: 3, fill: false },
    communities: { color: "#4f6f96", weight: 1.5, dashArray: "5 4", fill: false },
    grids: { color: "#7f9cc0", weight: 1, fill: true, fillColor: "#cfe0f5", fillOpacity: 0.12 },
    compounds: { color: "#b26a00", weight: 1, fill: true, fillColor: "#ffcc80", fillOpacity: 0.45 },
    stations: { radius: 5, color: "#fff", weight: 1, fill: true, fillColor: "#1f3b5c", fillOpacity: 1 },
    door_plates: function (p) {
      return { radius: 6, color: "#fff", weight: 1.5, fill: true, fillOpacity: 1,
               fillColor: p.is_rental ? "#00897b" : "#7cb342" };
    },
    incidents: function (p) {
      if (p.count != null) {  // a cluster (below z14): its size tells how many
        return { radius: Math.min(5 + 5 * Math.log(p.count) / Math.LN10, 18), color: "#fff", weight: 1.5,
                 fill: true, fillColor: "#c0392b", fillOpacity: 0.6 };
      }
      return { radius: 6, color: "#fff", weight: 1.5, fill: true, fillOpacity: 1,
               fillColor: STATUS_COLOURS[p.status] || "#555" };
    },
    hotspots: function (p) {
      var colour = p.lisa_cluster != null ? CLUSTER_COLOURS[p.lisa_cluster] : BIN_COLOURS[String(p.gi_bin)];
      return { color: "#666", weight: 0.6, fill: true, fillColor: colour || "#ccc", fillOpacity: 0.75 };
    }
  };

  // A feature's id across tiles: incidents by id, areas and plates by code; a cluster by its place,
  // unique in its tile (clusters never straddle tiles).
  function featureId(f) {
    var p = f.properties;
    if (p.id != null) return p.id;
    if (p.code != null) return p.code;
    var at = f.geometry[0][0] || f.geometry[0];
    return "cell " + at.x + "," + at.y;
  }

  var tileLayers = {};  // the layer control's name -> its VectorGrid

  // The features of the tiles a layer holds now (around the view), each once. VectorGrid keeps
  // them per tile (`_vectorTiles`, `_features`: it has no public accessor).
  function tileFeatures(name) {
    var layer = tileLayers[name], seen = {}, found = [];
    if (!layer || !layer._vectorTiles) return found;
    Object.keys(layer._vectorTiles).forEach(function (key) {
      var features = layer._vectorTiles[key]._features || {};
      Object.keys(features).forEach(function (id) {
        if (seen[id]) return;
        seen[id] = true;
        found.push(features[id].feature.properties);
      });
    });
    return found;
  }

  // VectorGrid 1.3.0 predates Leaflet 1.8: Leaflet asks an event's target that has getLatLng (its
  // point symbolizer is a CircleMarker) for its place, which VectorGrid never sets. Give each point
  // of this layer its place from its tile and position in it.
  function placePoints(layer) {
    var create = layer._createLayer;
    layer._createLayer = function (feat) {
      var symbol = create.apply(this, arguments);
      if (feat.type === 1) {
        symbol.getLatLng = function () {
          var renderer = this._renderer, coords = renderer.getCoord();
          return renderer._map.unproject(coords.scaleBy(renderer._size).add(this._point), coords.z);
        };
      }
      return symbol;
    };
  }

  function tileLayer(name, vectorGrid) {
    tileLayers[name] = vectorGrid;
    state.layers[name] = vectorGrid;
    if (vectorGrid.options.interactive) placePoints(vectorGrid);
    return vectorGrid;
  }

  // A promise of a tile layer's first tiles (at once when it has none to load in this view).
  function settled(layer) {
    return new Promise(function (resolve) {
      // A layer outside its zooms makes no tiles, so it never fires "load": it has nothing to wait for.
      var zoom = map.getZoom(), options = layer.options || {};
      var outside = (options.minZoom != null && zoom < options.minZoom) ||
        (options.maxZoom != null && zoom > options.maxZoom);
      if (!map.hasLayer(layer) || !layer.isLoading() || outside) { resolve(); return; }
      var timer = setTimeout(function () { report(new Error("tiles of a layer did not load")); resolve(); }, 20000);
      layer.once("load", function () { clearTimeout(timer); resolve(); });
    });
  }

  // ----------------------------------------------------------------- area layers

  // A tooltip that follows the mouse over a tile layer's features (not on a phone: a tap would leave
  // it standing beside the popup of the same tap, which says all of it and more). `content(p)` is
  // its text; `shown(p, tooltip)` runs as it opens (to fetch more: tooltip.feature is still p?).
  function hoverTooltip(layer, content, shown) {
    if (NO_HOVER.matches) return;
    var tooltip = L.tooltip({ direction: "top", offset: [0, -8] });
    layer.on("mouseover", function (e) {
      tooltip.feature = e.layer.properties;
      tooltip.setLatLng(e.latlng).setContent(content(tooltip.feature));
      map.openTooltip(tooltip);
      if (shown) shown(tooltip.feature, tooltip);
    });
    layer.on("mousemove", function (e) { tooltip.setLatLng(e.latlng); });
    layer.on("mouseout", function () {
      tooltip.feature = null;
      map.closeTooltip(tooltip);
    });
  }

  // A grid's code and name, then its people (fetched once per grid).
  function gridTooltips(layer) {
    var owners = {};
    function content(p) { return "<b>" + esc(p.code) + "</b><br>" + esc(p.name) + (owners[p.code] || ""); }
    hoverTooltip(layer, content, function (p, tooltip) {
      if (owners[p.code] !== undefined) return;
      owners[p.code] = "";
      api("/api/v1/grids/" + encodeURIComponent(p.code) + "/owners").then(function (o) {
        var workers = o.grid_workers.filter(function (w) {
          return w.roles.indexOf("grid_leader") >= 0 || w.roles.indexOf("full_time_worker") >= 0;
        }).map(function (w) { return esc(w.name); }).join("、");
        var police = o.police.map(function (x) { return esc(x.name); }).join("、");
        var deputies = (o.npc_deputies || []).map(function (d) { return esc(d.name); }).join("、");
        var adviser = o.legal_adviser ? esc(o.legal_adviser.name) : "";
        owners[p.code] = "<br>网格员 grid workers: " + (workers || "—") + "<br>民警 police: " + (police || "—") +
          "<br>人大代表 deputies: " + (deputies || "—") + "<br>法律顾问 legal adviser: " + (adviser || "—");
        if (tooltip.feature === p) tooltip.setContent(content(p));
      }).catch(function () { delete owners[p.code]; });
    });
  }

  // The towns' layer answers getBounds() (fitCounty, tests) with the bounds of its TileJSON: the
  // caller's towns.
  function loadAreas(tiles) {
    var towns = tileLayer("towns 镇街", tiles.towns);
    tileLayer("communities 村(社区)", tiles.communities);
    // console.js lists the grids in view for a reassignment (`eachLayer`, as a GeoJSON layer has).
    var grids = tileLayer("grids 网格", tiles.grids);
    grids.eachLayer = function (fn) {
      tileFeatures("grids 网格").forEach(function (p) { fn({ feature: { properties: p } }); });
    };
    gridTooltips(grids);
    tileLayer("compounds 小区", tiles.compounds);
    return api("/tiles/towns.json").then(function (tilejson) {
      var b = tilejson.bounds;
      towns.getBounds = function () { return L.latLngBounds([[b[1], b[0]], [b[3], b[2]]]); };
    });
  }

  // What the last redrawing changed: the previous boundary generation against the current one
  // (GET /api/v1/generations/{a}/diff/{b}?format=geojson); empty while there is one generation.
  var CHANGE_STYLES = {
    added: { color: "#1a9850", fillColor: "#66bd63" },
    removed: { color: "#d73027", fillColor: "#f46d43" },
    reshaped: { color: "#e08214", fillColor: "#fdb863" },
    changed: { color: "#4575b4", fillColor: "#91bfdb" }
  };
  var CHANGE_NAMES = { added: "新增 added", removed: "撤销 removed", reshaped: "调整 reshaped",
                       changed: "更名等 changed" };

  function changePopup(p) {
    var moved = p.change === "changed" ? esc(p.fields.join(", ")) :
      Math.round(p.moved_m2).toLocaleString("zh-CN") + " m²";
    return "<b>" + esc(p.code) + "</b> " + esc(p.name) + "<br>" + esc(p.layer) + " · " +
      esc(CHANGE_NAMES[p.change] || p.change) + "<br>面积变化 moved: " + moved +
      (p.from_codes.length ? "<br>来自 from: " + esc(p.from_codes.join(", ")) : "") +
      (p.to_codes.length ? "<br>划入 to: " + esc(p.to_codes.join(", ")) : "");
  }

  function loadBoundaryChanges() {
    var layer = L.geoJSON(null, {
      style: function (f) {
        var s = CHANGE_STYLES[f.properties.change] || CHANGE_STYLES.changed;
        return { color: s.color, weight: 2, fillColor: s.fillColor, fillOpacity: 0.55 };
      },
      onEachFeature: function (f, l) { l.bindPopup(changePopup(f.properties)); }
    });
    state.layers["boundary changes 边界变化"] = layer;
    return api("/api/v1/generations").then(function (list) {
      if (list.length < 2) return layer;
      var from = list[list.length - 2].id, to = list[list.length - 1].id;
      state.boundaryChanges = { from: from, to: to };
      return api("/api/v1/generations/" + from + "/diff/" + to + "?format=geojson").then(function (data) {
        layer.addData(data);
        return layer;
      });
    });
  }

  // ----------------------------------------------------------------- point layers

  function loadStations() {
    var layer = L.featureGroup();
    state.layers["stations 站点"] = layer;
    return api("/api/v1/stations").then(function (data) {
      data.features.forEach(function (f) {
        var style = STATIONS[f.properties.kind] || ["info", "gray", f.properties.kind];
        var icon = L.AwesomeMarkers.icon({ icon: style[0], prefix: "fa", markerColor: style[1] });
        L.marker([f.geometry.coordinates[1], f.geometry.coordinates[0]], { icon: icon, title: f.properties.name })
          .bindPopup("<b>" + esc(f.properties.name) + "</b><br>" + esc(style[2]) + "<br>" + esc(f.properties.address))
          .addTo(layer);
      });
    });
  }

  function doorPlatePopup(p) {
    return "<b>粤居码 " + esc(p.code) + "</b><br>" + esc(p.address) +
      "<br>出租屋 rental: " + (p.is_rental ? "是 yes" : "否 no") +
      (p.resident_count != null ? "<br>登记人数 residents: " + p.resident_count : "");
  }

  // Door plates from their tiles' minimum zoom; the hint says so, or how many the tiles around the
  // view hold. In a group, so that the layer list offers them at every zoom (Leaflet greys out a
  // layer below its minZoom, as it does the compounds').
  function loadDoorPlates(tiles) {
    var plates = tiles.door_plates, zoom = plates.options.minZoom, layer = L.layerGroup([plates]);
    tileLayers["door plates 粤居码"] = plates;
    placePoints(plates);
    state.layers["door plates 粤居码"] = layer;
    plates.on("click", function (e) {
      L.DomEvent.stopPropagation(e);  // the plate's popup, not also the map's "who owns this point"
      L.popup().setLatLng(e.latlng).setContent(doorPlatePopup(e.layer.properties)).openOn(map);
    });
    var hint = L.control({ position: "bottomleft" });
    hint.onAdd = function () {
      var div = L.DomUtil.create("div", "geo-hint");
      div.id = "geo-door-plate-hint";
      return div;
    };
    hint.addTo(map);
    function refresh() {
      var hintDiv = document.getElementById("geo-door-plate-hint");
      if (!map.hasLayer(layer)) { hintDiv.textContent = ""; return; }
      if (map.getZoom() < zoom) {
        hintDiv.textContent = "放大到 " + zoom + " 级显示粤居码门牌 (zoom in to see door plates)";
        return;
      }
      if (plates.isLoading()) return;  // counted once its tiles are in
      hintDiv.textContent = tileFeatures("door plates 粤居码").length + " 个门牌 door plates";
    }
    map.on("zoomend overlayadd overlayremove", refresh);
    plates.on("load", refresh);
    state.refreshDoorPlates = refresh;
    refresh();
    return Promise.resolve();
  }

  function incidentIcon(status) {
    return L.divIcon({ className: "", iconSize: [14, 14],
      html: '<div class="geo-dot" style="background:' + (STATUS_COLOURS[status] || "#555") + '"></div>' });
  }

  // Incidents from their tiles: clustered counts (a click zooms in) below z14, then points whose
  // click opens the incident. Incidents changed while the page is open (the live stream, a report
  // from the map) get a marker of their own above the tiles (state.incidentMarkers), which follows
  // their status; their tile feature is hidden. The heat layer loads its points when first shown.
  function loadIncidents(tiles) {
    var points = tiles.incidents, live = L.featureGroup();
    tileLayers["incidents 事件"] = points;
    placePoints(points);
    state.layers["incidents 事件"] = L.layerGroup([points, live]);
    state.liveIncidents = live;
    points.on("click", function (e) {
      var p = e.layer.properties;
      L.DomEvent.stopPropagation(e);  // the incident's popup, not also the map's "who owns this point"
      if (p.count != null) {
        map.setView(e.latlng, Math.min(map.getZoom() + 2, points.options.pointZoom || 14));
        return;
      }
      L.popup().setLatLng(e.latlng).setContent(incidentPopup([p.id])).openOn(map);
    });
    var heat = L.heatLayer([], { radius: 16, blur: 18, maxZoom: 15 }), heatLoaded = false;
    heat.on("add", function () {
      if (heatLoaded) return;
      heatLoaded = true;
      api("/api/v1/incident-points").then(function (list) {
        heat.setLatLngs(list.map(function (p) { return [p[2], p[1], 0.6]; }));
      }).catch(function (error) { heatLoaded = false; report(error); });
    });
    state.layers["incident heat 热力"] = heat;
    state.incidentMarkers = {};
    return Promise.resolve();
  }

  function incidentMarker(id, lon, lat, status) {
    var marker = L.marker([lat, lon], { icon: incidentIcon(status), title: "#" + id, status: status })
      .bindPopup(function () { return incidentPopup([id]); });
    state.incidentMarkers[id] = marker;
    return marker;
  }

  // An incident created or changed (the live stream, a report from the map): its marker follows
  // its status, or appears (and its tile feature steps aside). `i` has id, lon, lat and status.
  function upsertIncidentMarker(i) {
    var marker = state.incidentMarkers && state.incidentMarkers[i.id];
    if (!marker) {
      if (!state.incidentMarkers || i.lon == null || i.lat == null) return;
      state.liveIncidents.addLayer(incidentMarker(i.id, i.lon, i.lat, i.status));
      tileLayers["incidents 事件"].setFeatureStyle(i.id, HIDDEN);
    } else if (marker.options.status !== i.status) {
      marker.options.status = i.status;
      marker.setIcon(incidentIcon(i.status));
    }
  }

  function incidentPopup(p) {
    var div = document.createElement("div");
    div.className = "geo-popup";
    div.textContent = "…";
    api("/api/v1/incidents/" + p[0]).then(function (i) {
      div.innerHTML = incidentHtml(i);
      if (state.openIncident) {  // the dispatch console: act on it there
        var button = document.createElement("button");
        button.type = "button";
        button.className = "geo-open-console";
        button.textContent = "在调度台打开 Open in console";
        button.addEventListener("click", function () { map.closePopup(); state.openIncident(i.id); });
        div.appendChild(button);
      }
    }).catch(function (e) {
      div.textContent = e.message;
    });
    return div;
  }

  function incidentHtml(i) {
    var timeline = (i.timeline || []).map(function (e) {
      return "<li>" + esc(localTime(e.at)) + " " + esc(e.action) + " → " + esc(e.to_status) +
        (e.actor_name ? " (" + esc(e.actor_name) + ")" : "") + (e.note ? ": " + esc(e.note) : "") + "</li>";
    }).join("");
    return "<b>#" + i.id + " " + esc(i.category) + "</b> <span class='geo-status' style='background:" +
      (STATUS_COLOURS[i.status] || "#555") + "'>" + esc(i.status) + "</span>" + (i.overdue ? " <b style='color:#c62828'>逾期 overdue</b>" : "") +
      "<br>" + esc(i.description) + "<br>网格 grid: " + esc(i.grid ? i.grid.code + " " + i.grid.name : "—") +
      "<br>负责 assignee: " + esc(i.assignee ? (i.assignee.name || i.assignee.code) : "—") +
      "<br>民警 police: " + esc((i.police || []).map(function (x) { return x.name || x.code; }).join("、") || "—") +
      "<br>期限 deadline: " + esc(localTime(i.deadline_at) || "—") +
      "<ol class='geo-timeline'>" + timeline + "</ol>";
  }

  // ----------------------------------------------------------------- click: who owns this point

  var TEAM_ROLES = { judge: "法官 judge", mediator: "解纷员 mediator", judge_assistant: "法官助理 judge's assistant",
                     clerk: "书记 clerk" };

  // One person of the rest of the cast: the name, what they are, the phone when the answer has it.
  function castHtml(name, what, phone) {
    return esc(name) + (what ? " (" + esc(what) + ")" : "") + (phone ? ", " + esc(phone) : "");
  }

  function lookupHtml(a) {
    var workers = a.grid_workers.map(function (w) {
      return esc(w.name) + " (" + esc(w.roles.join(", ")) + (w.phone ? ", " + esc(w.phone) : "") + ")";
    }).join("<br>");
    var police = a.police.map(function (p) {
      return esc(p.name) + " · " + esc(p.unit) + (p.phone ? ", " + esc(p.phone) : "");
    }).join("<br>");
    var deputies = (a.npc_deputies || []).map(function (d) {
      return castHtml(d.name, d.level === "county" ? "市人大 county" : "镇人大 town", d.phone);
    }).join("<br>");
    var adviser = a.legal_adviser ? castHtml(a.legal_adviser.name, a.legal_adviser.law_firm, a.legal_adviser.phone) : "";
    var leaders = (a.building_leaders || []).map(function (b) {
      return castHtml(b.name, b.building || "全小区 whole compound", b.phone);
    }).join("<br>");
    var team = (a.mediators || []).map(function (m) {
      return castHtml(m.name, TEAM_ROLES[m.role] || m.role, m.phone);
    }).join("<br>");
    function shown(html) { return a.people_hidden ? "(outside your towns)" : html || "—"; }
    var station = a.nearest_stations[0];
    return "<table>" +
      "<tr><th>镇街 town</th><td>" + esc(a.town.name) + " " + esc(a.town.code) + "</td></tr>" +
      "<tr><th>村(社区)</th><td>" + esc(a.community.name) + " " + esc(a.community.code) + "</td></tr>" +
      "<tr><th>网格 grid</th><td class='geo-grid-code'>" + esc(a.grid.code) + " " + esc(a.grid.name) +
      (a.on_boundary ? " <i>(on a shared boundary)</i>" : "") + "</td></tr>" +
      "<tr><th>小区 compound</th><td>" + esc(a.compound ? a.compound.name : "—") + "</td></tr>" +
      "<tr><th>网格员 workers</th><td>" + (a.people_hidden ? "(outside your towns)" : workers || "—") + "</td></tr>" +
      "<tr><th>民警 police</th><td class='geo-police'>" + (a.people_hidden ? "(outside your towns)" : police || "—") + "</td></tr>" +
      (a.compound ? "<tr><th>楼长 building leaders</th><td class='geo-leaders'>" + shown(leaders) + "</td></tr>" : "") +
      "<tr><th>人大代表 deputies</th><td class='geo-deputies'>" + shown(deputies) + "</td></tr>" +
      "<tr><th>法律顾问 legal adviser</th><td class='geo-adviser'>" + shown(adviser) + "</td></tr>" +
      "<tr><th>综治中心</th><td>" + (a.governance_center ? esc(a.governance_center.name) + " · " +
        Math.round(a.governance_center.distance_m) + " m" : "—") + "</td></tr>" +
      "<tr><th>解纷站点</th><td>" + (station ? esc(station.name) + " · " + Math.round(station.distance_m) + " m" : "—") +
      "</td></tr>" +
      (station ? "<tr><th>解纷团队 team</th><td class='geo-team'>" + shown(team) + "</td></tr>" : "") +
      "</table>";
  }

  function createForm(latlng) {
    var options = categories.map(function (c) {
      return "<option value='" + esc(c.code) + "'>" + esc(c.name) + " " + esc(c.code) + "</option>";
    }).join("");
    return "<form class='geo-create'><b>上报事件 Report an incident here</b>" +
      "<select name='category'>" + options + "</select>" +
      "<select name='reporter_kind'><option value='hotline'>hotline</option><option value='resident'>resident</option>" +
      "<option value='rider'>rider</option><option value='grid_worker'>grid_worker</option><option value='police'>police</option></select>" +
      "<textarea name='description' rows='2' placeholder='描述 description' required></textarea>" +
      "<button type='submit'>上报 Report</button> <span class='geo-create-result'></span></form>";
  }

  function onMapClick(e) {
    var popup = L.popup(popupOptions(380)).setLatLng(e.latlng).setContent("查询中 looking up…").openOn(map);
    api("/api/v1/lookup?lon=" + e.latlng.lng.toFixed(7) + "&lat=" + e.latlng.lat.toFixed(7)).then(function (a) {
      var html = "<div class='geo-popup'>" + lookupHtml(a) + (cfg.canCreate ? createForm(e.latlng) : "") + "</div>";
      popup.setContent(html);
      var form = popup.getElement() && popup.getElement().querySelector("form.geo-create");
      if (form) {
        form.addEventListener("submit", function (event) {
          event.preventDefault();
          var data = new FormData(form);
          api("/api/v1/incidents", { body: {
            category: data.get("category"), reporter_kind: data.get("reporter_kind"),
            description: data.get("description"), lon: e.latlng.lng, lat: e.latlng.lat
          } }).then(function (incident) {
            form.querySelector(".geo-create-result").textContent = "#" + incident.id + " " + incident.status;
            upsertIncidentMarker(incident);
            if (state.onIncident) state.onIncident(incident);
          }).catch(function (error) { form.querySelector(".geo-create-result").textContent = error.message; });
        });
      }
    }).catch(function (error) {
      var nearest = error.body && error.body.nearest_grid;
      popup.setContent(esc(error.message) + (nearest ? "<br>最近网格 nearest grid: " + esc(nearest.code) + " " +
        esc(nearest.name) + " · " + Math.round(nearest.distance_m) + " m" : ""));
    });
  }

  // ----------------------------------------------------------------- controls

  function addSearch() {
    var search = L.control({ position: "topleft" });
    search.onAdd = function () {
      var div = L.DomUtil.create("div", "geo-search");
      // A form: Enter, and a phone keyboard's search key, submit it; the button is there for touch.
      div.innerHTML = "<form class='geo-search-form' role='search'>" +
        "<input type='search' id='geo-search-input' enterkeyhint='search' aria-label='搜索 Search' " +
        "placeholder='网格编码 / 社区名 / 粤居码 search'>" +
        "<button type='submit' class='geo-search-go' aria-label='搜索 Search' title='搜索 Search'>" +
        "<i class='fa fa-magnifying-glass' aria-hidden='true'></i></button></form>" +
        "<ul id='geo-search-results'></ul>";
      L.DomEvent.disableClickPropagation(div);
      L.DomEvent.disableScrollPropagation(div);
      var form = div.querySelector("form"), input = div.querySelector("input"), list = div.querySelector("ul");
      function choose(result) {
        goTo(result);
        if (PHONE.matches) {  // out of the way: the keyboard and the list would hide the place found
          input.blur();
          list.innerHTML = "";
        }
      }
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        if (!input.value.trim()) { list.innerHTML = ""; return; }
        api("/api/v1/search?q=" + encodeURIComponent(input.value)).then(function (results) {
          list.innerHTML = results.length ? "" : "<li>无结果 nothing found</li>";
          results.forEach(function (r) {
            var li = document.createElement("li");
            li.textContent = r.kind + " · " + r.code + " " + (r.name !== r.code ? r.name : "") + (r.address ? " " + r.address : "");
            li.addEventListener("click", function () { choose(r); });
            list.appendChild(li);
          });
          if (results.length === 1) choose(results[0]);
        }).catch(function (error) { list.innerHTML = "<li>" + esc(error.message) + "</li>"; });
      });
      input.addEventListener("search", function () { if (!input.value) list.innerHTML = ""; });  // cleared
      return div;
    };
    search.addTo(map);
  }

  function goTo(result) {
    var b = result.bbox;
    if (result.kind === "door_plate") {
      map.setView([b[1], b[0]], 17);
      L.popup().setLatLng([b[1], b[0]]).setContent("<b>粤居码 " + esc(result.code) + "</b><br>" + esc(result.address))
        .openOn(map);
    } else {
      map.fitBounds([[b[1], b[0]], [b[3], b[2]]]);
    }
  }

  // The legend is folded behind its button on every screen: open, it would cover part of the
  // county on a desktop beside the dispatch queue and half of the map on a phone.
  function addLegend() {
    var legend = L.control({ position: "bottomright" });
    legend.onAdd = function () {
      var box = L.DomUtil.create("div", "geo-legend-control");
      var div = L.DomUtil.create("div", "geo-legend", box);
      div.id = "geo-legend";
      div.hidden = true;
      var html = "<b>事件状态 incident status</b><br>";
      Object.keys(STATUS_COLOURS).forEach(function (s) {
        html += "<i style='background:" + STATUS_COLOURS[s] + ";border-radius:50%'></i>" + s + "<br>";
      });
      html += "<b>站点 stations</b><br>";
      Object.keys(STATIONS).forEach(function (k) {
        html += "<i class='fa fa-" + STATIONS[k][0] + "' style='color:" + STATIONS[k][1] + "'></i>" + esc(STATIONS[k][2]) + "<br>";
      });
      html += "<b>边界 boundaries</b><br><i style='border-top:3px solid #1f3b5c'></i>镇街 town<br>" +
        "<i style='border-top:2px dashed #4f6f96'></i>村(社区) community<br>" +
        "<i style='background:#cfe0f5;border:1px solid #7f9cc0'></i>网格 grid<br>" +
        "<i style='background:#ffcc80;border:1px solid #b26a00'></i>小区 compound";
      div.innerHTML = html;
      var button = L.DomUtil.create("button", "geo-legend-toggle", box);
      button.type = "button";
      button.id = "geo-legend-toggle";
      button.setAttribute("aria-controls", "geo-legend");
      button.setAttribute("aria-expanded", "false");
      button.textContent = "图例 Legend";
      button.addEventListener("click", function () {
        div.hidden = !div.hidden;
        button.setAttribute("aria-expanded", String(!div.hidden));
      });
      L.DomEvent.disableClickPropagation(box);
      L.DomEvent.disableScrollPropagation(box);
      return box;
    };
    legend.addTo(map);
  }

  // The layer list: open beside a desktop map, folded behind Leaflet's button on a phone (with a
  // close button of its own: a tap on the map would also ask what is there). Rebuilt when the
  // screen crosses the breakpoint (a tablet turned), since Leaflet fixes `collapsed` at creation.
  function addLayerControl() {
    var folded = PHONE.matches;
    if (control) control.remove();
    control = L.control.layers(null, state.layers, { collapsed: folded, position: "topright" }).addTo(map);
    state.control = control;
    if (folded) {
      var close = document.createElement("button");
      close.type = "button";
      close.className = "geo-layers-close";
      close.textContent = "收起 Close";
      close.addEventListener("click", function (e) {
        L.DomEvent.stop(e);
        control.collapse();
      });
      control.getContainer().querySelector(".leaflet-control-layers-list").appendChild(close);
    }
  }

  // Popups within the map: Leaflet adds about 60 px of margins and close button around the
  // content; on a phone a tall one scrolls inside instead of running off the screen.
  function popupOptions(width) {
    var size = map.getSize();
    var options = { maxWidth: Math.max(200, Math.min(width, size.x - 90)), autoPanPadding: L.point(10, 10) };
    if (PHONE.matches) {  // between the search bar across the top and the legend button at the bottom
      options.autoPanPaddingTopLeft = L.point(10, 70);
      options.autoPanPaddingBottomRight = L.point(10, 76);
      options.maxHeight = Math.max(160, size.y - 200);
    }
    return options;
  }

  // ----------------------------------------------------------------- phone furniture

  function wireTopbar() {
    var bar = document.getElementById("geo-topbar"), button = document.getElementById("geo-menu-button");
    if (!bar || !button) return;
    function setOpen(open) {
      bar.classList.toggle("geo-menu-open", open);
      button.setAttribute("aria-expanded", String(open));
    }
    button.addEventListener("click", function () { setOpen(!bar.classList.contains("geo-menu-open")); });
    document.addEventListener("click", function (e) {
      if (!bar.contains(e.target)) setOpen(false);
    });
    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && bar.classList.contains("geo-menu-open")) {
        setOpen(false);
        button.focus();
      }
    });
  }

  // The side panel (the dispatch queue, the hotspot filters) is a sheet on a phone, opened by the
  // button at the bottom of the screen; on a desktop the button is hidden and the panel always there.
  function wirePanelToggle() {
    var button = document.getElementById("geo-panel-toggle");
    if (!button) return;
    button.addEventListener("click", function () {
      var open = !document.body.classList.contains("geo-panel-open");
      document.body.classList.toggle("geo-panel-open", open);
      button.setAttribute("aria-expanded", String(open));
    });
  }

  // The whole county in the first view: on a phone that takes a lower (fractional) zoom than the
  // page's; where it already fits, as on a desktop, the view stays as it is.
  function fitCounty() {
    var bounds = state.layers["towns 镇街"].getBounds();
    if (!bounds.isValid() || map.getBounds().contains(bounds)) return;
    var snap = map.options.zoomSnap;
    map.options.zoomSnap = 0.25;
    map.fitBounds(bounds, { animate: false, padding: [8, 8] });
    map.options.zoomSnap = snap;
  }

  function report(error) {
    state.errors.push(String(error && error.message || error));
    if (window.console) console.warn("geomap:", error);
  }

  // ----------------------------------------------------------------- dispatch page

  // The console lives in console.js (loaded on this page only): the queue, the incident panel
  // and the live stream. It gets the map's helpers rather than reaching into this module.
  function dispatchPanel() {
    if (!window.GeoConsole) throw new Error("console.js is not loaded");
    return window.GeoConsole.start({
      map: map, config: cfg, state: state, categories: categories, api: api, esc: esc, localTime: localTime,
      statusColours: STATUS_COLOURS, upsertMarker: upsertIncidentMarker, report: report
    });
  }

  // ----------------------------------------------------------------- hotspots page

  // The usual diverging colours of Gi* hot spot maps, cold 99 % to hot 99 %.
  var BIN_COLOURS = { "-3": "#4575b5", "-2": "#849eba", "-1": "#c0ccbe", "0": "#ffffbf",
                      "1": "#fab984", "2": "#ed7551", "3": "#d62f27" };
  var BIN_NAMES = { "3": "热点 hot 99 %", "2": "热点 hot 95 %", "1": "热点 hot 90 %", "0": "不显著 not significant",
                    "-1": "冷点 cold 90 %", "-2": "冷点 cold 95 %", "-3": "冷点 cold 99 %" };
  // LISA cluster maps as GeoDa draws them: clusters red and blue, outliers in their pale shades.
  var CLUSTER_COLOURS = { HH: "#d7191c", HL: "#fdae61", LH: "#abd9e9", LL: "#2c7bb6", ns: "#d9d9d9" };
  var CLUSTER_NAMES = { HH: "高-高 high-high (聚类 cluster)", HL: "高-低 high-low (异常 outlier)",
                        LH: "低-高 low-high (异常 outlier)", LL: "低-低 low-low (聚类 cluster)",
                        ns: "不显著 not significant" };
  // What each method's features are coloured by: its legend's keys in order, colours and names.
  var CLASSES = {
    gistar: { keys: ["3", "2", "1", "0", "-1", "-2", "-3"], colours: BIN_COLOURS, names: BIN_NAMES,
              of: function (p) { return String(p.gi_bin); },
              figures: function (p) { return "z " + p.gi_z.toFixed(2) + " · p " + p.gi_p.toPrecision(2); } },
    lisa: { keys: ["HH", "HL", "LH", "LL", "ns"], colours: CLUSTER_COLOURS, names: CLUSTER_NAMES,
            of: function (p) { return p.lisa_cluster; },
            figures: function (p) {
              return "I " + p.lisa_i.toFixed(3) + " · z " + p.lisa_z.toFixed(2) + " · p " + p.lisa_p.toPrecision(2);
            } }
  };
  var FORMATS = ["geojson", "gpkg", "shp", "kml", "csv", "parquet", "fgb"];

  function hotspotsPanel() {
    var panel = document.getElementById("geo-panel");
    panel.innerHTML = "<h3>热点分析 hotspots</h3><div class='geo-filters'>" +
      "<label>方法 method <select id='geo-hot-method'><option value='gistar'>Gi* 热点 hot spots</option>" +
      "<option value='lisa'>LISA 聚类 clusters</option></select></label>" +
      "<label>单元 unit <select id='geo-hot-unit'><option value='grid'>网格 grid</option>" +
      "<option value='community'>村(社区) community</option><option value='town'>镇街 town</option>" +
      "<option value='hex'>六边形 1 km hexagons</option></select></label>" +
      "<label>从 from <input type='date' id='geo-hot-from'></label><label>到 to <input type='date' id='geo-hot-to'></label>" +
      "<select id='geo-hot-category'><option value=''>全部类别 all categories</option>" +
      categories.map(function (c) { return "<option value='" + esc(c.code) + "'>" + esc(c.name) + "</option>"; }).join("") +
      "</select><label><input type='checkbox' id='geo-hot-fdr'> FDR 校正 correction</label></div>" +
      "<div id='geo-hot-summary' class='meta'></div><div id='geo-hot-legend'></div>" +
      "<h3>下载 download</h3><div id='geo-hot-downloads'></div>" +
      "<h3>已保存 saved layers</h3><select id='geo-hot-saved' aria-label='已保存的热点图层 saved layer'></select>" +
      "<div id='geo-hot-saved-summary' class='meta'></div>";
    var layer = L.geoJSON(null, { style: { weight: 0.6, color: "#666", fillOpacity: 0.75 } });
    var density = L.layerGroup();
    state.layers["hot spots 热点"] = layer;
    state.layers["density 核密度"] = density;
    layer.addTo(map);
    control.addOverlay(layer, "hot spots 热点");
    control.addOverlay(density, "density 核密度");
    function value(id) { return document.getElementById(id).value; }
    function filters() {  // the incidents counted, shared with the density surface
      var params = [];
      if (value("geo-hot-from")) params.push("from=" + value("geo-hot-from") + "T00:00:00%2B08:00");
      if (value("geo-hot-to")) params.push("to=" + value("geo-hot-to") + "T00:00:00%2B08:00");
      if (value("geo-hot-category")) params.push("category=" + value("geo-hot-category"));
      return params;
    }
    function query() {
      var params = ["unit=" + value("geo-hot-unit")];
      if (value("geo-hot-unit") === "hex") params.push("size_m=1000");
      if (value("geo-hot-method") === "lisa") params.push("method=lisa");
      if (document.getElementById("geo-hot-fdr").checked) params.push("fdr=true");
      return params.concat(filters()).join("&");
    }
    function densityUrl(format) {
      return "/api/v1/hotspots/density?" + filters().concat(["format=" + format]).join("&");
    }
    function draw(data) {
      var m = data.metadata, classes = CLASSES[m.method], tally = {};
      layer.clearLayers();
      layer.addData(data);
      layer.eachLayer(function (l) {
        var p = l.feature.properties, key = classes.of(p);
        tally[key] = (tally[key] || 0) + 1;
        l.setStyle({ fillColor: classes.colours[key] });
        l.bindTooltip(esc(p.code) + " " + esc(p.name) + "<br>" + p.count + " 件 · " + classes.figures(p) + "<br>" +
          esc(classes.names[key]));
      });
      document.getElementById("geo-hot-summary").textContent = m.units + " 单元 units · " + m.incidents +
        " 件 incidents · " + m.weights +
        (m.method === "lisa" ? " · " + m.permutations + " 次置换 permutations · α " + m.alpha : "") +
        (m.fdr ? " · FDR" : "");
      document.getElementById("geo-hot-legend").innerHTML = classes.keys.map(function (k) {
        return "<div><i class='geo-swatch' style='background:" + classes.colours[k] + "'></i>" +
          esc(classes.names[k]) + " (" + (tally[k] || 0) + ")</div>";
      }).join("");
    }
    var asked = 0;  // answers arriving after a newer question are dropped
    function refresh() {
      var q = query(), question = ++asked;
      document.getElementById("geo-hot-downloads").innerHTML = FORMATS.map(function (f) {
        return "<a class='geo-download' href='/api/v1/hotspots?" + q + "&format=" + f + "' download>" + f + "</a>";
      }).join(" · ") + " · <a class='geo-download' href='" + densityUrl("tiff") + "' download>density GeoTIFF</a>";
      var hot = api("/api/v1/hotspots?" + q).then(function (data) { if (question === asked) draw(data); });
      var surface = fetch(densityUrl("png"), { credentials: "same-origin" }).then(function (response) {
        if (!response.ok) throw new Error("density: HTTP " + response.status);
        var b = response.headers.get("X-Bounds").split(",").map(Number);
        return response.blob().then(function (blob) {
          if (question !== asked) return;
          density.clearLayers();
          density.addLayer(L.imageOverlay(URL.createObjectURL(blob), [[b[1], b[0]], [b[3], b[2]]], { opacity: 0.8 }));
        });
      });
      return Promise.all([hot, surface]).catch(report);
    }
    ["geo-hot-method", "geo-hot-unit", "geo-hot-from", "geo-hot-to", "geo-hot-category", "geo-hot-fdr"].forEach(function (id) {
      document.getElementById(id).addEventListener("change", refresh);
    });
    return Promise.all([refresh(), savedLayers()]);
  }

  // The saved hotspot layers the caller may see, one at a time from their tiles
  // (/tiles/hotspots-{id}/...: the layer's `run` option fills the URL).
  function savedLayers() {
    var layer = tileLayers["saved hot spots 已保存热点"], select = document.getElementById("geo-hot-saved");
    if (!layer) return Promise.resolve();
    return api("/api/v1/hotspots/saved").then(function (list) {
      select.innerHTML = list.length ? list.map(function (r) {
        return "<option value='" + r.id + "'>#" + r.id + " " + esc(r.name) + " · " + esc(r.params.unit) + " · " +
          esc(r.params.method || "gistar") + "</option>";
      }).join("") : "<option value=''>无 none</option>";
      select.disabled = !list.length;
      if (!list.length) return;
      function show() {
        var run = list.filter(function (r) { return String(r.id) === select.value; })[0];
        document.getElementById("geo-hot-saved-summary").textContent = run.computed_by + " · " +
          localTime(run.computed_at) + (run.towns ? " · " + run.towns.join(", ") : "");
        layer.options.run = run.id;
        if (map.hasLayer(layer)) layer.redraw();
        else layer.addTo(map);
      }
      layer.options.run = list[0].id;
      select.addEventListener("change", show);
      hoverTooltip(layer, function (p) {
        var classes = CLASSES[p.lisa_cluster != null ? "lisa" : "gistar"];
        return esc(p.code) + " " + esc(p.name) + "<br>" + p.count + " 件 · " + classes.figures(p) + "<br>" +
          esc(classes.names[classes.of(p)]);
      });
      state.layers["saved hot spots 已保存热点"] = layer;
      control.addOverlay(layer, "saved hot spots 已保存热点");
    });
  }

  // ----------------------------------------------------------------- start

  // `tiles`: the VectorGrid layers webmap.py declared, by their layer's name (geo_service/tiles.py).
  function init(leafletMap, config, tiles) {
    map = leafletMap;
    cfg = config;
    window.geoState = state;
    state.map = map;
    document.body.classList.add("geo-page-" + cfg.page);
    map.invalidateSize();
    wireTopbar();
    wirePanelToggle();
    L.Popup.mergeOptions(popupOptions(300));  // every other popup
    var categoriesLoaded = api("/api/v1/incident-categories").then(function (list) { categories = list; });
    if (tiles.hotspots) tileLayers["saved hot spots 已保存热点"] = tiles.hotspots;  // listed once there are some
    var loads = [loadAreas(tiles), loadStations(), loadIncidents(tiles), loadBoundaryChanges(), categoriesLoaded];
    Promise.all(loads).then(function () {
      var shown = cfg.page === "hotspots" ? ["towns 镇街"] :
        ["towns 镇街", "communities 村(社区)", "grids 网格", "compounds 小区", "stations 站点", "incidents 事件"];
      shown.forEach(function (name) { state.layers[name].addTo(map); });
      fitCounty();
      return loadDoorPlates(tiles);
    }).then(function () {
      addLayerControl();
      if (PHONE.addEventListener) PHONE.addEventListener("change", addLayerControl);
      else PHONE.addListener(addLayerControl);  // Safari before 14
      addLegend();
      addSearch();
      map.on("click", onMapClick);
      if (cfg.page === "dispatch") return dispatchPanel();
      if (cfg.page === "hotspots") return hotspotsPanel();
    }).then(function () {
      return Promise.all(Object.keys(tileLayers).map(function (name) { return settled(tileLayers[name]); }));
    }).then(function () {
      state.ready = true;
      document.body.dataset.ready = "true";
    }).catch(function (error) {
      report(error);
      document.body.dataset.ready = "error";
    });
  }

  state.tileFeatures = tileFeatures;
  state.tileLayers = tileLayers;  // the VectorGrid layers (door plates and incidents sit in groups in `layers`)
  return { init: init, tileStyles: tileStyles, featureId: featureId };
})();
