/* The officials' dashboard (/dashboard, geo_service/dashboard.py). Every figure comes from
 * /api/v1/scoreboard (same origin, session cookie), every outline from the area API; the charts
 * are SVG drawn here. window.dashboardState exposes what tests look at. */
(function () {
  "use strict";

  var cfg = window.dashboardConfig;
  var SVG = "http://www.w3.org/2000/svg";
  var LEVELS = ["town", "community", "grid"];
  var LEVEL_NAMES = { town: "镇街 towns", community: "村(社区) communities", grid: "网格 grids" };
  // Five classes, worst to best (ColorBrewer RdYlGn); "more is neither" figures use a blue ramp.
  var GOOD_RAMP = ["#d7191c", "#fdae61", "#ffffbf", "#a6d96a", "#1a9641"];
  var PLAIN_RAMP = ["#eff3ff", "#bdd7e7", "#6baed6", "#3182bd", "#08519c"];
  var NO_DATA = "#d9d9d9";
  var state = {
    ready: false, errors: [], map: null, layer: null, level: "town", parent: null, crumbs: [],
    rows: {}, trend: [], worst: [], totals: null, figure: cfg.figures[0].name, requests: 0, shown: null
  };
  window.dashboardState = state;

  function $(id) { return document.getElementById(id); }

  function esc(value) {
    return String(value == null ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function api(path) {
    state.requests += 1;
    return fetch(path, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) throw new Error(body.detail || ("HTTP " + response.status + " " + path));
          return body;
        });
      });
  }

  function report(error) {
    state.errors.push(String(error && error.message || error));
    $("db-status").textContent = "⚠ " + (error && error.message || error);
  }

  // ----------------------------------------------------------------- the period

  function period() {
    return "from=" + encodeURIComponent($("db-from").value) + "&to=" + encodeURIComponent($("db-to").value);
  }

  function scoreboard(by) {
    return api("/api/v1/scoreboard?by=" + by + "&" + period());
  }

  function days() {
    return (Date.parse($("db-to").value) - Date.parse($("db-from").value)) / 86400000 + 1;
  }

  // ----------------------------------------------------------------- figures

  function value(row, name) {
    if (!row) return null;
    if (name === "backlog") {
      var b = row.backlog;
      return b.lt_1d + b.d1_3 + b.d3_7 + b.gt_7d;
    }
    return row[name];
  }

  function figure(name) {
    return cfg.figures.filter(function (f) { return f.name === name; })[0];
  }

  function show(v, format) {
    if (v == null) return "—";
    if (format === "percent") return (v * 100).toFixed(1) + " %";
    if (format === "hours") return v.toFixed(1) + " h";
    return String(Math.round(v * 10) / 10);  // counts; a legend's class bounds may fall between them
  }

  function totals(t) {
    var backlog = value(t, "backlog");
    var cards = [
      ["上报 reported", t.reported],
      ["办结 closed", t.closed],
      ["按期办结率 on-time rate", show(t.on_time_rate, "percent")],
      ["办理时长 hours (mean · p90)", show(t.mean_hours, "hours") + " · " + show(t.p90_hours, "hours")],
      ["积压 backlog", backlog + " (<1d " + t.backlog.lt_1d + " · 1–3d " + t.backlog.d1_3 + " · 3–7d " +
        t.backlog.d3_7 + " · >7d " + t.backlog.gt_7d + ")"],
      ["重办率 reopen rate", show(t.reopen_rate, "percent")],
      ["吹哨按时报到 whistles on time", t.whistles_on_time + " / " + t.whistles],
      ["骑手上报 riders: reported · accepted · closed", t.rider_reported + " · " + t.rider_accepted + " · " +
        t.rider_closed],
      ["巡查覆盖率 patrol coverage", show(t.patrol_coverage, "percent")]
    ];
    $("db-totals").innerHTML = cards.map(function (c) {
      return "<div class='db-card'><div class='db-card-label'>" + esc(c[0]) + "</div><div class='db-card-value'>" +
        esc(c[1]) + "</div></div>";
    }).join("");
  }

  // ----------------------------------------------------------------- the trend (SVG)

  function el(name, attributes, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach(function (k) { node.setAttribute(k, attributes[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function drawTrend(rows) {
    var box = $("db-trend-chart");
    box.innerHTML = "";
    // Drawn at the box's own width, so that the labels keep their size on a phone.
    var width = Math.max(300, Math.min(900, box.clientWidth || 560)), height = 220, left = 44, right = 12, top = 12,
      bottom = 44;
    var svg = el("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "class": "db-chart",
                          "aria-label": "按期办结率趋势 on-time rate by " + $("db-trend").value }, box);
    var plotW = width - left - right, plotH = height - top - bottom;
    var step = rows.length > 1 ? plotW / (rows.length - 1) : 0;
    function x(i) { return left + (rows.length > 1 ? i * step : plotW / 2); }
    function y(v) { return top + plotH * (1 - v); }
    [0, 0.25, 0.5, 0.75, 1].forEach(function (v) {
      el("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), "class": "db-gridline" }, svg);
      el("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", "class": "db-axis" }, svg).textContent =
        Math.round(v * 100) + "%";
    });
    var every = Math.max(1, Math.ceil(rows.length / 8));
    var path = "", pen = false;
    rows.forEach(function (row, i) {
      if (i % every === 0 || i === rows.length - 1) {
        var anchor = rows.length > 1 && i === rows.length - 1 ? "end" : "middle";  // the last stays inside
        el("text", { x: x(i), y: height - bottom + 16, "text-anchor": anchor, "class": "db-axis" }, svg)
          .textContent = row.name.length > 7 ? row.name.slice(5) : row.name;
      }
      if (row.on_time_rate == null) { pen = false; return; }
      path += (pen ? " L " : " M ") + x(i).toFixed(1) + " " + y(row.on_time_rate).toFixed(1);
      pen = true;
    });
    if (path) el("path", { d: path.trim(), "class": "db-line" }, svg);
    rows.forEach(function (row, i) {
      if (row.on_time_rate == null) return;
      var dot = el("circle", { cx: x(i), cy: y(row.on_time_rate), r: 4, "class": "db-dot",
                               "data-code": row.code }, svg);
      el("title", {}, dot).textContent = row.name + ": " + show(row.on_time_rate, "percent") + " (" +
        row.closed_on_time + " / " + row.closed + ")";
    });
    el("text", { x: left, y: height - 6, "class": "db-axis" }, svg).textContent =
      rows.some(function (r) { return r.on_time_rate != null; }) ? "按" + ($("db-trend").value === "week" ?
        "周 week (Monday)" : "月 month") + " · 上报时间 by report time" : "无办结 nothing closed in the period";
  }

  // ----------------------------------------------------------------- the worst grids

  function worstGrids(rows) {
    return rows.filter(function (r) { return r.closed >= cfg.minClosed && r.on_time_rate != null; })
      .sort(function (a, b) {
        return a.on_time_rate - b.on_time_rate || b.closed - a.closed || (a.code < b.code ? -1 : 1);
      }).slice(0, 10);
  }

  function drawWorst(rows) {
    state.worst = worstGrids(rows);
    $("db-worst-rule").textContent = "至少 " + cfg.minClosed + " 件办结 · grids with at least " + cfg.minClosed +
      " closed incidents in the period, lowest on-time rate first (" + state.worst.length + ")";
    $("db-worst").querySelector("tbody").innerHTML = state.worst.map(function (r, i) {
      return "<tr data-code='" + esc(r.code) + "'><td>" + (i + 1) + "</td><td>" + esc(r.name || "") + "<br><code>" +
        esc(r.code) + "</code></td><td>" + r.closed + "</td><td>" + r.closed_on_time + "</td><td>" +
        show(r.on_time_rate, "percent") + "</td></tr>";
    }).join("") || "<tr><td colspan='5'>—</td></tr>";
  }

  // ----------------------------------------------------------------- the choropleth

  function breaks(values) {
    var known = values.filter(function (v) { return v != null; });
    if (!known.length) return null;
    var low = Math.min.apply(null, known), high = Math.max.apply(null, known);
    var f = figure(state.figure);
    if (f.format === "percent") { low = Math.min(low, 0); high = Math.max(high, 1); }
    if (high === low) high = low + 1;
    return [1, 2, 3, 4].map(function (i) { return low + (high - low) * i / 5; }).concat([low, high]);
  }

  function colour(v, cuts) {
    if (v == null || !cuts) return NO_DATA;
    var f = figure(state.figure), k = 0;
    while (k < 4 && v >= cuts[k]) k += 1;
    if (f.better === null) return PLAIN_RAMP[k];
    return (f.better ? GOOD_RAMP : GOOD_RAMP.slice().reverse())[k];
  }

  function levelRows() {
    var rows = state.rows[state.level] || [];
    if (!state.parent) return rows;
    return rows.filter(function (r) { return r.code.indexOf(state.parent) === 0; });
  }

  function styleMap() {
    if (!state.layer) return;
    var byCode = {};
    levelRows().forEach(function (r) { byCode[r.code] = r; });
    var cuts = breaks(levelRows().map(function (r) { return value(r, state.figure); }));
    var f = figure(state.figure);
    state.layer.eachLayer(function (l) {
      var row = byCode[l.feature.properties.code], v = value(row, state.figure);
      l.setStyle({ fillColor: colour(v, cuts), fillOpacity: 0.75, color: "#555", weight: 1 });
      l.unbindTooltip();
      l.bindTooltip("<b>" + esc(l.feature.properties.name) + "</b> " + esc(l.feature.properties.code) + "<br>" +
        esc(f.label) + ": " + esc(show(v, f.format)) + (row ? "<br>上报 " + row.reported + " · 办结 " + row.closed +
        " · 积压 " + value(row, "backlog") : ""), { sticky: true });
    });
    var legend = "<b>" + esc(f.label) + "</b>";
    if (cuts) {
      var edges = [cuts[4]].concat(cuts.slice(0, 4)).concat([cuts[5]]);
      for (var k = 0; k < 5; k += 1) {
        legend += "<div><i style='background:" + colour((edges[k] + edges[k + 1]) / 2, cuts) + "'></i>" +
          esc(show(edges[k], f.format)) + " – " + esc(show(edges[k + 1], f.format)) + "</div>";
      }
    }
    legend += "<div><i style='background:" + NO_DATA + "'></i>无数据 no data</div>";
    $("db-legend").innerHTML = legend;
    drawRows();
  }

  function areasUrl() {
    if (state.level === "town") return "/api/v1/towns?geometry=true";
    if (state.level === "community") return "/api/v1/communities?geometry=true&town=" + state.parent;
    return "/api/v1/grids?geometry=true&community=" + state.parent;
  }

  function drill(level, parent, crumbs) {
    state.level = level;
    state.parent = parent;
    state.crumbs = crumbs;
    state.shown = null;
    drawCrumbs();
    return api(areasUrl()).then(function (collection) {
      var shown = {};
      levelRows().forEach(function (r) { shown[r.code] = true; });
      // Only the areas the caller has figures for (a caller limited to towns: theirs).
      collection.features = collection.features.filter(function (f) { return shown[f.properties.code]; });
      if (state.layer) state.map.removeLayer(state.layer);
      state.layer = L.geoJSON(collection, {
        onEachFeature: function (feature, layer) {
          layer.on("click", function () { openArea(feature.properties); });
        }
      }).addTo(state.map);
      styleMap();
      if (state.layer.getLayers().length) {
        state.map.fitBounds(state.layer.getBounds(), { padding: [8, 8], animate: false });
      }
      state.shown = level + ":" + (parent || "");  // what the map now shows (tests wait for it)
    });
  }

  function openArea(area) {
    var next = LEVELS[LEVELS.indexOf(state.level) + 1];
    if (!next) return;
    drill(next, area.code, state.crumbs.concat([{ level: next, parent: area.code, name: area.name }])).catch(report);
  }

  function drawCrumbs() {
    var all = [{ level: "town", parent: null, name: "全市 County" }].concat(state.crumbs);
    $("db-crumbs").innerHTML = all.map(function (c, i) {
      return i === all.length - 1 ? "<span aria-current='true'>" + esc(c.name) + " · " + esc(LEVEL_NAMES[c.level]) +
        "</span>" : "<a href='#' data-i='" + i + "'>" + esc(c.name) + "</a> › ";
    }).join("");
    Array.prototype.forEach.call($("db-crumbs").querySelectorAll("a"), function (a) {
      a.addEventListener("click", function (e) {
        e.preventDefault();
        var i = Number(a.getAttribute("data-i"));
        drill(all[i].level, all[i].parent, state.crumbs.slice(0, i)).catch(report);
      });
    });
  }

  function drawRows() {
    var f = figure(state.figure);
    var rows = levelRows().slice().sort(function (a, b) {
      var va = value(a, state.figure), vb = value(b, state.figure);
      if (va == null) return 1;
      if (vb == null) return -1;
      return f.better ? va - vb : vb - va;
    });
    $("db-rows").innerHTML = "<table class='db-table'><thead><tr><th>" + esc(LEVEL_NAMES[state.level]) +
      "</th><th>上报</th><th>办结</th><th>按期</th><th>按期办结率</th><th>积压</th><th>p90 h</th><th>覆盖率</th></tr>" +
      "</thead><tbody>" + rows.map(function (r) {
        return "<tr data-code='" + esc(r.code) + "'><td>" + esc(r.name || r.code) + "</td><td>" + r.reported +
          "</td><td>" + r.closed + "</td><td>" + r.closed_on_time + "</td><td>" + show(r.on_time_rate, "percent") +
          "</td><td>" + value(r, "backlog") + "</td><td>" + show(r.p90_hours, "hours") + "</td><td>" +
          show(r.patrol_coverage, "percent") + "</td></tr>";
      }).join("") + "</tbody></table>";
  }

  // ----------------------------------------------------------------- loading

  function downloads() {
    var q = period();
    $("db-downloads").innerHTML = "<a class='db-download' href='/api/v1/scoreboard.xlsx?" + q +
      "' download>Excel</a> · " + LEVELS.map(function (by) {
        return "<a class='db-download' href='/api/v1/scoreboard.csv?by=" + by + "&" + q + "' download>CSV " + by +
          "</a>";
      }).join(" · ");
  }

  function load() {
    $("db-status").textContent = "…";
    downloads();
    var trend = $("db-trend").value;
    var loads = LEVELS.map(function (by) {
      return scoreboard(by).then(function (answer) {
        state.rows[by] = answer.rows;
        if (by === "town") { state.totals = answer.total; totals(answer.total); }
      });
    });
    loads.push(scoreboard(trend).then(function (answer) { state.trend = answer.rows; drawTrend(answer.rows); }));
    return Promise.all(loads).then(function () {
      drawWorst(state.rows.grid);
      var last = state.crumbs[state.crumbs.length - 1];
      $("db-status").textContent = "";
      return drill(last ? last.level : "town", last ? last.parent : null, state.crumbs);
    });
  }

  function wireTopbar() {
    var bar = $("geo-topbar"), button = $("geo-menu-button");
    if (!bar || !button) return;
    function setOpen(open_) {
      bar.classList.toggle("geo-menu-open", open_);
      button.setAttribute("aria-expanded", String(open_));
    }
    button.addEventListener("click", function () { setOpen(!bar.classList.contains("geo-menu-open")); });
    document.addEventListener("click", function (e) { if (!bar.contains(e.target)) setOpen(false); });
  }

  function init() {
    wireTopbar();
    $("db-from").value = cfg.from;
    $("db-to").value = cfg.to;
    $("db-trend").value = days() > 120 ? "month" : "week";
    $("db-figure").innerHTML = cfg.figures.map(function (f) {
      return "<option value='" + esc(f.name) + "'>" + esc(f.label) + "</option>";
    }).join("");
    state.map = L.map("db-map", { zoomSnap: 0.25, maxZoom: 18, minZoom: 7 }).setView(cfg.center, 10);
    if (cfg.tileUrl) L.tileLayer(cfg.tileUrl, { attribution: cfg.tileAttribution || "basemap", maxZoom: 18 })
      .addTo(state.map);
    $("db-figure").addEventListener("change", function () { state.figure = this.value; styleMap(); });
    $("db-trend").addEventListener("change", function () {
      scoreboard(this.value).then(function (answer) { state.trend = answer.rows; drawTrend(answer.rows); })
        .catch(report);
    });
    $("db-controls").addEventListener("submit", function (e) {
      e.preventDefault();
      document.body.dataset.ready = "";
      load().then(function () { document.body.dataset.ready = "true"; }).catch(function (error) {
        report(error);
        document.body.dataset.ready = "error";
      });
    });
    load().then(function () {
      state.ready = true;
      document.body.dataset.ready = "true";
    }).catch(function (error) {
      report(error);
      document.body.dataset.ready = "error";
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
