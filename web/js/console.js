/* The dispatch console (调度台) of /map/dispatch, started by GeoMap.init (geomap.js) through
 * GeoConsole.start(ctx), where ctx carries the map, the page config and geomap's helpers.
 *
 * - The queue: the incidents of the filters, overdue ones on top, then soonest deadline first,
 *   each with its time left, counted down here every second: an incident turns overdue on
 *   screen as the clock passes, without a server event. A listbox: ArrowUp/ArrowDown/Home/End
 *   move, Enter or Space opens.
 * - The incident panel: details, the actions the caller may take now, the grid's workers and
 *   the police–grid pair with tel: links, the departments called in (吹哨) with their deadlines,
 *   the nearest stations, the timeline. Esc closes an open action form, then the panel. Every
 *   action sends the version the panel shows; a 409 says who changed it when, with Reload.
 * - Live: /api/v1/events (Server-Sent Events, same origin, with the session cookie) updates the
 *   queue, the open panel and the map's markers without a reload.
 *
 * The actions are the lifecycle table the page carries (config.actions, from
 * geo_service/lifecycle.py TRANSITIONS via webmap.lifecycle_actions): a new action shows up by
 * itself, with a note field; FORMS below says which ones need more than that.
 */
var GeoConsole = (function () {
  "use strict";

  var TERMINAL = ["closed", "rejected"];  // as geo_service/changes.py TERMINAL: never overdue
  var TICK_MS = 1000;
  var RETRY_MS = 5000;  // a new stream after the server closed one (EventSource retries the rest itself)
  var QUEUE_LIMIT = 200;

  var ACTION_NAMES = {
    report: "上报", accept: "受理", start: "开始处置", resolve: "办结", verify: "核查", close: "结案",
    escalate: "升级", summon: "吹哨", acknowledge: "报到", "return": "退回", reopen: "重新打开",
    reject: "驳回", reassign: "改派", merge: "合并", overdue: "超时", report_back: "部门反馈",
    department_overdue: "部门超时"
  };
  var ACTION_EN = {
    accept: "Accept", start: "Start", resolve: "Resolve", verify: "Verify", close: "Close", escalate: "Escalate",
    summon: "Summon", acknowledge: "Acknowledge", "return": "Return", reopen: "Reopen", reject: "Reject",
    reassign: "Reassign", merge: "Merge", report_back: "Report back"
  };
  var STATUS_NAMES = {
    reported: "待分派", assigned: "已分派", accepted: "已受理", in_progress: "处置中", resolved: "已办结",
    verified: "已核查", closed: "已结案", escalated: "已升级", returned: "已退回", reopened: "重新打开",
    rejected: "已驳回"
  };
  var WORKER_ROLES = {
    grid_leader: "网格长 grid leader", full_time_worker: "专职 full-time", part_time_worker: "兼职 part-time",
    professional_worker: "专业 professional"
  };
  // What an action asks for beyond the version. Absent: nothing (one click), or a required note
  // when the lifecycle table says the action needs one.
  var FORMS = {
    resolve: [{ kind: "note", required: true, label: "办结说明 resolution note" }, { kind: "photos" }],
    escalate: [{ kind: "departments", required: false }, { kind: "due_hours" }, { kind: "note", required: false }],
    summon: [{ kind: "departments", required: true }, { kind: "due_hours" }],
    acknowledge: [{ kind: "department" }],
    report_back: [{ kind: "answering" }, { kind: "note", required: true, label: "部门反馈 the department's answer" }],
    reassign: [{ kind: "reassign" }],
    merge: [{ kind: "into" }, { kind: "note", required: false }]
  };

  var MAX_PHOTOS = 6;
  var ctx, cfg, api, esc, map;
  var queue = { items: {}, rows: {}, total: 0, seq: 0, refreshing: false, pending: {}, current: null };
  var panel = { el: null, id: null, incident: null, owners: null, nearby: null, form: null, busy: false,
                opener: null };
  var live = { source: null, lastId: null, opened: false, status: "connecting" };
  var owners = {};  // grid code -> promise of its owners

  // ------------------------------------------------------------------------- small helpers

  function $(selector, root) { return (root || document).querySelector(selector); }

  function actionLabel(action) {
    return (ACTION_NAMES[action] ? ACTION_NAMES[action] + " " : "") + (ACTION_EN[action] || action);
  }

  function statusLabel(status) {
    return (STATUS_NAMES[status] ? STATUS_NAMES[status] + " " : "") + status;
  }

  function statusBadge(status) {
    return "<span class='geo-status' style='background:" + (ctx.statusColours[status] || "#555") + "'>" +
      esc(statusLabel(status)) + "</span>";
  }

  function categoryName(code) {
    var found = ctx.categories.filter(function (c) { return c.code === code; })[0];
    return found ? found.name : code;
  }

  function span(seconds) {
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600), m = Math.floor(seconds % 3600 / 60);
    if (d > 0) return d + " d " + h + " h";
    if (h > 0) return h + " h " + m + " min";
    if (m > 0) return m + " min";
    return Math.floor(seconds) + " s";
  }

  function overdueNow(i, now) {
    if (TERMINAL.indexOf(i.status) >= 0) return false;
    if (i.deadline_at && (now || Date.now()) >= Date.parse(i.deadline_at)) return true;
    return !!i.overdue;  // the server's word (its clock may be ahead of this one)
  }

  // "剩 1 h 23 min" before the deadline, "超时 12 min" after it.
  function timeLeft(deadline, now, done) {
    if (!deadline || done) return { text: done ? "" : "无期限 no deadline", overdue: false };
    var ms = Date.parse(deadline) - (now || Date.now());
    if (ms > 0) return { text: "剩 " + span(ms / 1000), title: span(ms / 1000) + " left", overdue: false };
    return { text: "超时 " + span(-ms / 1000), title: "overdue by " + span(-ms / 1000), overdue: true };
  }

  function tel(phone, name) {
    if (!phone) return "";
    if (phone.indexOf("*") >= 0) return esc(phone);  // masked: nothing to call
    var number = phone.replace(/[^0-9+]/g, "");
    return "<a href='tel:" + esc(number) + "' aria-label='拨打 Call " + esc(name) + " " + esc(phone) + "'>" +
      esc(phone) + "</a>";
  }

  function distance(metres) {
    return metres >= 1000 ? (metres / 1000).toFixed(1) + " km" : Math.round(metres) + " m";
  }

  function errorText(error) {
    if (error && error.body && Array.isArray(error.body.detail)) {
      return error.body.detail.map(function (d) { return d.msg || String(d); }).join("; ");
    }
    if (error && error.status) return error.message;
    return "网络错误 network error: " + (error && error.message || error);
  }

  // ------------------------------------------------------------------------- the queue

  function filters() {
    return {
      status: $("#geo-filter-status").value, category: $("#geo-filter-category").value,
      town: $("#geo-filter-town").value
    };
  }

  // Whether an incident (or an event of the stream, which has the same fields) belongs in the
  // queue of the current filters: the API's filters, judged here.
  function matches(i) {
    var f = filters();
    if (f.category && i.category !== f.category) return false;
    if (f.town && i.town_code !== f.town) return false;
    if (f.status === "open") return TERMINAL.indexOf(i.status) < 0;
    if (f.status === "overdue") return overdueNow(i);
    return i.status === f.status;
  }

  function queuePanel() {
    var p = document.getElementById("geo-panel");
    var statuses = Object.keys(ctx.statusColours).map(function (s) {
      return "<option value='" + esc(s) + "'>" + esc(statusLabel(s)) + "</option>";
    }).join("");
    p.innerHTML = "<h3 id='geo-queue-title'>事件队列 incident queue</h3><div class='geo-filters'>" +
      "<select id='geo-filter-status' aria-label='状态 status'><option value='open'>未办结 open</option>" +
      "<option value='overdue'>逾期 overdue</option>" + statuses + "</select>" +
      "<select id='geo-filter-category' aria-label='类别 category'><option value=''>全部类别 all categories</option>" +
      ctx.categories.map(function (c) { return "<option value='" + esc(c.code) + "'>" + esc(c.name) + "</option>"; })
        .join("") + "</select>" +
      "<select id='geo-filter-town' aria-label='镇街 town'><option value=''>全部镇街 all towns</option></select></div>" +
      "<div class='geo-queue-head'><span id='geo-queue-count' class='meta'></span>" +
      "<span id='geo-live' class='geo-live' role='status'></span></div>" +
      "<p class='geo-keys meta'>↑↓ 选择 select · Enter 打开 open · Esc 关闭 close</p>" +
      "<ul id='geo-queue' role='listbox' aria-labelledby='geo-queue-title'></ul>";
    api("/api/v1/towns").then(function (list) {
      $("#geo-filter-town").insertAdjacentHTML("beforeend", list.map(function (t) {
        return "<option value='" + esc(t.code) + "'>" + esc(t.name) + "</option>";
      }).join(""));
    }).catch(ctx.report);
    ["#geo-filter-status", "#geo-filter-category", "#geo-filter-town"].forEach(function (id) {
      $(id).addEventListener("change", refreshQueue);
    });
    var list = $("#geo-queue");
    list.addEventListener("click", function (e) {
      var li = e.target.closest(".geo-queue-item");
      if (li) openIncident(Number(li.dataset.id), li);
    });
    list.addEventListener("keydown", onQueueKey);
    list.addEventListener("focusin", function (e) {
      var li = e.target.closest(".geo-queue-item");
      if (li) setCurrent(Number(li.dataset.id));
    });
    setLive(live.status);
  }

  function onQueueKey(e) {
    var li = e.target.closest(".geo-queue-item");
    if (!li) return;
    var target = null;
    if (e.key === "ArrowDown") target = li.nextElementSibling;
    else if (e.key === "ArrowUp") target = li.previousElementSibling;
    else if (e.key === "Home") target = li.parentNode.firstElementChild;
    else if (e.key === "End") target = li.parentNode.lastElementChild;
    else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openIncident(Number(li.dataset.id), li);
      return;
    } else return;
    e.preventDefault();
    if (target) target.focus();
  }

  function setCurrent(id) {
    queue.current = id;
    Object.keys(queue.rows).forEach(function (key) {
      queue.rows[key].tabIndex = Number(key) === id ? 0 : -1;
    });
  }

  function refreshQueue() {
    var f = filters();
    var params = ["sort=deadline_at", "limit=" + QUEUE_LIMIT];
    if (f.status === "open") params.push("open=true");
    else if (f.status === "overdue") params.push("overdue=true");
    else params.push("status=" + encodeURIComponent(f.status));
    if (f.category) params.push("category=" + encodeURIComponent(f.category));
    if (f.town) params.push("town=" + encodeURIComponent(f.town));
    var seq = ++queue.seq;
    queue.refreshing = true;
    queue.pending = {};
    return api("/api/v1/incidents?" + params.join("&")).then(function (page) {
      if (seq !== queue.seq) return;  // the filters changed meanwhile
      queue.refreshing = false;
      queue.items = {};
      page.items.forEach(function (i) { queue.items[i.id] = i; });
      queue.total = page.total;
      renderQueue();
      // Changes streamed in while the page was on its way may be newer than what it holds.
      Object.keys(queue.pending).forEach(function (id) { refetch(Number(id)); });
      queue.pending = {};
    }).catch(function (error) {
      if (seq === queue.seq) queue.refreshing = false;
      ctx.report(error);
    });
  }

  function compare(a, b, now) {
    var oa = overdueNow(a, now), ob = overdueNow(b, now);
    if (oa !== ob) return oa ? -1 : 1;
    var da = a.deadline_at ? Date.parse(a.deadline_at) : Infinity;
    var db = b.deadline_at ? Date.parse(b.deadline_at) : Infinity;
    if (da !== db) return da < db ? -1 : 1;
    return a.id - b.id;
  }

  function fillRow(li, i, now) {
    var left = timeLeft(i.deadline_at, now, TERMINAL.indexOf(i.status) >= 0);
    var overdue = overdueNow(i, now);
    li.classList.toggle("overdue", overdue);
    li.setAttribute("aria-selected", String(panel.id === i.id));
    var key = [i.version, i.status, i.description, i.grid_code, overdue].join("|");
    if (li._key !== key) {
      li._key = key;
      li.innerHTML = "<div class='geo-q-line'><b>#" + i.id + "</b> " + esc(categoryName(i.category)) + " " +
        statusBadge(i.status) + "<span class='geo-left'></span></div>" +
        "<div class='geo-q-desc'>" + esc(i.description) + "</div>" +
        "<div class='meta'>" + esc(i.grid ? i.grid.name : i.grid_code || "") +
        (i.deadline_at ? " · 期限 " + esc(ctx.localTime(i.deadline_at)) : "") + "</div>";
      li._left = null;
    }
    if (li._left !== left.text) {
      li._left = left.text;
      var cell = li.querySelector(".geo-left");
      cell.textContent = left.text;
      cell.title = left.title || "";
    }
  }

  function renderQueue() {
    var list = $("#geo-queue");
    if (!list) return;
    var now = Date.now();
    var focused = document.activeElement;
    var focusedId = focused && list.contains(focused) && focused.dataset && focused.dataset.id ?
      Number(focused.dataset.id) : null;
    var sorted = Object.keys(queue.items).map(function (id) { return queue.items[id]; })
      .sort(function (a, b) { return compare(a, b, now); });
    var keep = {};
    sorted.forEach(function (i, index) {
      var li = queue.rows[i.id];
      if (!li) {
        li = document.createElement("li");
        li.className = "geo-queue-item";
        li.setAttribute("role", "option");
        li.id = "geo-q-" + i.id;
        li.dataset.id = i.id;
        li.tabIndex = -1;
        queue.rows[i.id] = li;
      }
      keep[i.id] = true;
      fillRow(li, i, now);
      if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
    });
    var removedIndex = null;
    Object.keys(queue.rows).forEach(function (id) {
      if (keep[id]) return;
      var li = queue.rows[id];
      if (Number(id) === focusedId) removedIndex = Array.prototype.indexOf.call(list.children, li);
      li.remove();
      delete queue.rows[id];
    });
    if (!queue.rows[queue.current]) queue.current = sorted.length ? sorted[0].id : null;
    setCurrent(queue.current);
    // Moving or removing the focused row takes the focus away: give it back (or to its neighbour).
    if (focusedId !== null && document.activeElement !== queue.rows[focusedId]) {
      var back = queue.rows[focusedId] || list.children[Math.min(removedIndex || 0, list.children.length - 1)];
      if (back) back.focus();
    }
    var shown = sorted.length;
    $("#geo-queue-count").textContent = queue.total > shown ? shown + " / " + queue.total + " 件 incidents"
      : shown + " 件 incidents";
    // On a phone the queue is a sheet behind a button (geomap.js): the button says how many wait.
    var count = $("#geo-panel-toggle .geo-count");
    if (count) count.textContent = " · " + (queue.total > shown ? queue.total : shown);
  }

  function upsert(i) {
    var known = queue.items[i.id];
    if (known && known.version > i.version) return;
    if (!known) queue.total += 1;
    queue.items[i.id] = i;
    renderQueue();
  }

  function drop(id) {
    if (!queue.items[id]) return;
    delete queue.items[id];
    queue.total = Math.max(0, queue.total - 1);
    renderQueue();
  }

  // The incident as it is now, into the queue or out of it.
  function refetch(id) {
    return api("/api/v1/incidents/" + id).then(function (i) {
      place(i);
      return i;
    }).catch(function (error) {
      if (error.status === 404) drop(id);  // out of sight now (e.g. reassigned out of the caller's towns)
      else ctx.report(error);
    });
  }

  function place(i) {
    if (matches(i)) upsert(i);
    else drop(i.id);
  }

  function tick() {
    var now = Date.now(), resort = false;
    Object.keys(queue.rows).forEach(function (id) {
      var li = queue.rows[id], i = queue.items[id];
      if (!i) return;
      if (li.classList.contains("overdue") !== overdueNow(i, now)) resort = true;
      fillRow(li, i, now);
    });
    if (resort) renderQueue();
    if (panel.incident) renderClock(now);
  }

  // ------------------------------------------------------------------------- live updates

  function setLive(status, detail) {
    live.status = status;
    ctx.state.liveStatus = status;
    var el = $("#geo-live");
    if (!el) return;
    el.className = "geo-live geo-live-" + status;
    el.textContent = { on: "● 实时 live", connecting: "○ 连接中 connecting…",
                       off: "× 实时更新已断开 live updates off" }[status] + (detail ? ": " + detail : "");
  }

  function connect() {
    if (!window.EventSource) { setLive("off", "EventSource unsupported"); return; }
    // A stream the server ended is not resumed by the browser: say where to resume ourselves.
    var source = new EventSource("/api/v1/events" + (live.lastId ? "?after=" + encodeURIComponent(live.lastId) : ""));
    live.source = source;
    ["incident.created", "incident.updated", "incident.overdue", "message"].forEach(function (name) {
      source.addEventListener(name, onEvent);
    });
    source.addEventListener("open", function () {
      setLive("on");
      if (live.opened) refreshQueue();  // back after a break: catch up whatever happened meanwhile
      live.opened = true;
    });
    source.addEventListener("error", function (e) {
      if (e.data) {  // the server's `event: error`: the credentials stopped working
        source.close();
        var detail = e.data;
        try { detail = JSON.parse(e.data).detail || detail; } catch (ignored) { /* plain text */ }
        setLive("off", detail);
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        setLive("off");
        setTimeout(function () { if (live.source === source) connect(); }, RETRY_MS);
      } else {
        setLive("connecting");
      }
    });
  }

  function onEvent(e) {
    var data;
    try { data = JSON.parse(e.data); } catch (ignored) { return; }
    if (e.lastEventId) live.lastId = e.lastEventId;
    if (!data || data.id == null) return;
    apply(data, e.type);
  }

  // One change from the stream: the marker, the queue row, the open panel.
  function apply(data) {
    ctx.upsertMarker(data);
    if (queue.refreshing) queue.pending[data.id] = true;
    var known = queue.items[data.id];
    if (!matches(data)) {
      drop(data.id);
    } else if (known) {
      if (data.version >= known.version) {
        var newer = data.version > known.version;
        var merged = Object.assign({}, known);
        ["status", "version", "deadline_at", "overdue", "category", "town_code", "community_code", "grid_code"]
          .forEach(function (k) { if (data[k] !== undefined) merged[k] = data[k]; });
        queue.items[data.id] = merged;
        renderQueue();
        if (newer) refetch(data.id);  // the rest of the row (grid, assignee) as it now is
      }
    } else {
      refetch(data.id);
    }
    changedUnderPanel(data);
  }

  function changedUnderPanel(data) {
    var i = panel.incident;
    if (!i || i.id !== data.id) return;
    if (data.version <= i.version) {
      if (data.overdue && !i.overdue) { i.overdue = true; renderClock(Date.now()); }
      return;
    }
    if (panel.form || panel.busy) {
      // Not under the user's hands: say so, and let them reload when they are ready.
      showStale(data.by, data.at);
      return;
    }
    reload().then(function () {
      notice("已由 " + (data.by || "—") + " 于 " + ctx.localTime(data.at) + " 更新 · updated by " + (data.by || "someone") +
             " at " + ctx.localTime(data.at));
    });
  }

  // ------------------------------------------------------------------------- the incident panel

  function buildPanel() {
    var el = document.createElement("div");
    el.id = "geo-detail";
    el.className = "geo-console-panel";
    el.setAttribute("role", "dialog");
    el.setAttribute("aria-labelledby", "geo-detail-title");
    el.hidden = true;
    el.innerHTML = "<div class='geo-detail-head'><h3 id='geo-detail-title' tabindex='-1'></h3>" +
      "<button type='button' class='geo-close' aria-label='关闭 Close (Esc)' title='关闭 Close (Esc)'>×</button></div>" +
      "<div class='geo-detail-summary'></div>" +
      "<div class='geo-detail-alert' role='alert'></div>" +
      "<div class='geo-detail-notice' role='status'></div>" +
      "<section class='geo-detail-actions' aria-labelledby='geo-actions-title'><h4 id='geo-actions-title'>处置 Actions</h4>" +
      "<div class='geo-action-buttons'></div><form class='geo-action-form' id='geo-action-form' hidden></form></section>" +
      "<section class='geo-detail-info'><h4>详情 Details</h4><dl class='geo-facts'></dl></section>" +
      "<section class='geo-detail-people'><h4>网格员与民警 Grid workers and police</h4><div></div></section>" +
      "<section class='geo-detail-departments'><h4>吹哨部门 Departments summoned</h4><div></div></section>" +
      "<section class='geo-detail-stations'><h4>附近站点 Nearby stations</h4><div></div></section>" +
      "<section class='geo-detail-photos' hidden><h4>照片 Photos</h4><div class='geo-photos'></div></section>" +
      "<section class='geo-detail-timeline'><h4>时间线 Timeline</h4><ol class='geo-timeline'></ol></section>";
    document.body.appendChild(el);
    panel.el = el;
    $(".geo-close", el).addEventListener("click", closePanel);
    $(".geo-action-buttons", el).addEventListener("click", function (e) {
      var button = e.target.closest("button[data-action]");
      if (button) onAction(button.dataset.action, button);
    });
    $(".geo-action-form", el).addEventListener("submit", onSubmit);
    el.addEventListener("click", function (e) {
      if (e.target.closest(".geo-reload")) reloadFromButton();
      if (e.target.closest(".geo-cancel")) closeForm(true);
      var other = e.target.closest(".geo-open-incident");
      if (other) openIncident(Number(other.dataset.id), queue.rows[panel.id] || panel.opener);
    });
    document.addEventListener("keydown", onEscape);
  }

  function onEscape(e) {
    if (e.key !== "Escape" || panel.el.hidden) return;
    var active = document.activeElement;
    var inPanel = panel.el.contains(active);
    if (!inPanel && active !== document.body && !$("#geo-queue").contains(active)) return;
    e.preventDefault();
    if (panel.form && inPanel) closeForm(true);
    else closePanel();
  }

  function openIncident(id, opener) {
    panel.id = id;
    panel.incident = null;
    panel.owners = panel.nearby = null;
    panel.form = null;
    panel.busy = false;
    panel.opener = opener || document.activeElement;
    panel.el.hidden = false;
    mapBeside(true);
    $("#geo-detail-title").textContent = "事件 #" + id;
    [".geo-detail-summary", ".geo-detail-alert", ".geo-detail-notice", ".geo-action-buttons", ".geo-facts",
     ".geo-detail-people div", ".geo-detail-departments div", ".geo-detail-stations div", ".geo-timeline"]
      .forEach(function (s) { $(s, panel.el).innerHTML = ""; });
    $(".geo-detail-summary", panel.el).textContent = "加载中 loading…";
    closeForm(false);
    renderQueue();  // aria-selected
    return load(id).then(function (i) {
      if (!i) return;
      $("#geo-detail-title").focus();
      if (i.lat != null) map.setView([i.lat, i.lon], Math.max(map.getZoom(), 16), { animate: false });
    });
  }

  // The map makes room for the panel (console.css), so that its controls stay in sight.
  function mapBeside(open) {
    if (document.body.classList.contains("geo-detail-open") === open) return;
    document.body.classList.toggle("geo-detail-open", open);
    map.invalidateSize({ pan: false });
  }

  function load(id) {
    return api("/api/v1/incidents/" + id).then(function (i) {
      if (panel.id !== id) return null;
      setIncident(i);
      return i;
    }).catch(function (error) {
      if (panel.id === id) {
        $(".geo-detail-summary", panel.el).textContent = "";
        alertText(errorText(error));
      }
      return null;
    });
  }

  function reload() {
    return panel.id == null ? Promise.resolve(null) : load(panel.id);
  }

  function reloadFromButton() {
    closeForm(false);
    alertText("");
    reload().then(function (i) {
      if (!i) return;
      notice("已重新加载 reloaded: " + statusLabel(i.status) + " · v" + i.version);
      $("#geo-detail-title").focus();
    });
  }

  // The panel shows `i`; the queue row and the marker follow it.
  function setIncident(i) {
    var gridBefore = panel.incident && panel.incident.grid_code;
    panel.incident = i;
    place(i);
    ctx.upsertMarker(i);
    render();
    if (!panel.owners || gridBefore !== i.grid_code) loadPeople(i);
    if (!panel.nearby) loadNearby(i);
  }

  function loadPeople(i) {
    var code = i.grid_code || (i.grid && i.grid.code);
    var box = $(".geo-detail-people div", panel.el);
    if (!code) { box.textContent = "—"; return; }
    if (!owners[code]) {
      owners[code] = api("/api/v1/grids/" + encodeURIComponent(code) + "/owners");
      owners[code].catch(function () { delete owners[code]; });
    }
    owners[code].then(function (o) {
      if (!panel.incident || panel.incident.id !== i.id) return;
      panel.owners = o;
      renderPeople();
      if (panel.form === "reassign") fillWorkers($("select[name=assignee]", panel.el), o, true);
    }).catch(function (error) { box.textContent = errorText(error); });
  }

  function loadNearby(i) {
    if (i.lat == null) return;
    api("/api/v1/lookup?lon=" + i.lon + "&lat=" + i.lat + "&stations=3").then(function (a) {
      if (!panel.incident || panel.incident.id !== i.id) return;
      panel.nearby = a;
      renderStations();
    }).catch(function (error) { $(".geo-detail-stations div", panel.el).textContent = errorText(error); });
  }

  function closePanel() {
    var id = panel.id;
    panel.el.hidden = true;
    mapBeside(false);
    panel.id = null;
    panel.incident = null;
    panel.form = null;
    renderQueue();
    var back = queue.rows[id] || (panel.opener && document.contains(panel.opener) ? panel.opener : null) ||
      $("#geo-queue .geo-queue-item");
    if (back) back.focus();
  }

  function render() {
    var i = panel.incident;
    $("#geo-detail-title").textContent = "事件 #" + i.id + " · " + categoryName(i.category);
    renderClock(Date.now());
    renderActions();
    var facts = [
      ["描述 description", esc(i.description)],
      ["上报 reported", esc(ctx.localTime(i.reported_at)) + " · " + esc(i.reporter_kind) +
        (i.door_plate_code ? " · 粤居码 " + esc(i.door_plate_code) : "")],
      ["网格 grid", esc(i.grid ? i.grid.code + " " + i.grid.name : i.grid_code || "—")],
      ["负责人 assignee", esc(i.assignee ? i.assignee.name || i.assignee.code : "—") +
        (i.assignment_rule ? " <span class='meta'>(" + esc(i.assignment_rule) + ")</span>" : "")],
      ["期限 deadline", esc(ctx.localTime(i.deadline_at) || "—")],
      ["版本 version", String(i.version)]
    ];
    if (i.duplicate_of) {
      facts.push(["合并到 merged into", "<button type='button' class='geo-open-incident' data-id='" +
        esc(i.duplicate_of) + "' aria-label='打开 Open #" + esc(i.duplicate_of) + "'>#" + esc(i.duplicate_of) + "</button>"]);
    }
    $(".geo-facts", panel.el).innerHTML = facts.map(function (f) {
      return "<dt>" + f[0] + "</dt><dd>" + f[1] + "</dd>";
    }).join("");
    renderDepartments();
    renderPhotos();
    $(".geo-timeline", panel.el).innerHTML = (i.timeline || []).map(function (e) {
      return "<li><time>" + esc(ctx.localTime(e.at)) + "</time> <b>" + esc(ACTION_NAMES[e.action] || "") + "</b> " +
        esc(e.action) + " → " + esc(e.to_status) + (e.actor_name ? " · " + esc(e.actor_name) : "") +
        (e.note ? "<div class='geo-note'>" + esc(e.note) + "</div>" : "") +
        (e.detail && e.detail.summary ? "<div class='geo-note'>" + esc(e.detail.summary) + "</div>" : "") + "</li>";
    }).join("");
    if (panel.owners) renderPeople();
  }

  function renderPhotos() {
    var photos = panel.incident.attachments || [];
    var section = $(".geo-detail-photos", panel.el);
    section.hidden = !photos.length;
    $(".geo-photos", section).innerHTML = photos.map(function (a) {
      var what = (a.purpose === "evidence" ? "处置证据 evidence" : "上报 report") + " · " + esc(a.added_by_name) +
        " · " + esc(ctx.localTime(a.added_at));
      return "<a class='geo-photo' href='" + esc(a.url) + "' target='_blank' rel='noopener' title='" + what + "'>" +
        "<img src='" + esc(a.thumb_url) + "' alt='照片 photo #" + esc(a.id) + " (" + what + ")' loading='lazy'>" +
        "<span>" + (a.purpose === "evidence" ? "证据 evidence" : "上报 report") + "</span></a>";
    }).join("");
  }

  function renderClock(now) {
    var i = panel.incident;
    var done = TERMINAL.indexOf(i.status) >= 0;
    var left = timeLeft(i.deadline_at, now, done);
    var overdue = overdueNow(i, now);
    var box = $(".geo-detail-summary", panel.el);
    var html = statusBadge(i.status) + (left.text ? " <span class='geo-left" + (overdue ? " overdue" : "") + "'" +
      (left.title ? " title='" + esc(left.title) + "'" : "") + ">" + esc(left.text) + "</span>" : "") +
      (overdue ? " <b class='geo-overdue'>逾期 overdue</b>" : "");
    if (box._html !== html) { box._html = html; box.innerHTML = html; }
    panel.el.classList.toggle("overdue", overdue);
    $(".geo-detail-departments", panel.el).querySelectorAll("[data-due]").forEach(function (cell) {
      var t = timeLeft(cell.dataset.due, now, false);
      cell.textContent = t.text;
      cell.classList.toggle("overdue", t.overdue);
    });
  }

  function allowedActions(i) {
    return (cfg.actions || []).filter(function (a) {
      if (a.sources.indexOf(i.status) < 0 || a.roles.indexOf(cfg.role) < 0) return false;
      if (a.action === "acknowledge") return waitingDepartments(i).length > 0;
      return true;
    });
  }

  function waitingDepartments(i) {
    return (i.departments || []).filter(function (d) { return !d.acknowledged_at; });
  }

  // Reported in, not yet reported back: who may answer now.
  function answeringDepartments(i) {
    return (i.departments || []).filter(function (d) { return d.acknowledged_at && !d.reported_back_at; });
  }

  function departmentOptions(list) {
    return list.map(function (d) {
      return "<option value='" + esc(d.department) + "'>" + esc(d.name ? d.name + " " + d.department : d.department) +
        "</option>";
    }).join("");
  }

  function renderActions() {
    var box = $(".geo-action-buttons", panel.el);
    var focusedAction = box.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    var actions = allowedActions(panel.incident);
    box.innerHTML = actions.length ? actions.map(function (a) {
      var hasForm = formOf(a).length > 0;
      return "<button type='button' data-action='" + esc(a.action) + "' title='" + esc(a.summary) + "'" +
        (hasForm ? " aria-controls='geo-action-form' aria-expanded='" + String(panel.form === a.action) + "'" : "") +
        ">" + esc(actionLabel(a.action)) + (hasForm ? "…" : "") + "</button>";
    }).join("") : "<span class='meta'>无可用操作 no action available</span>";
    if (focusedAction) {
      var again = $("button[data-action='" + focusedAction + "']", box);
      if (again) again.focus();
    }
  }

  function formOf(a) {
    if (FORMS[a.action]) return FORMS[a.action];
    return a.needs_note ? [{ kind: "note", required: true }] : [];
  }

  function renderPeople() {
    var o = panel.owners, i = panel.incident;
    var box = $(".geo-detail-people div", panel.el);
    if (o.people_hidden) { box.textContent = "不在您的镇街 outside your towns"; return; }
    var assignee = i.assignee_worker_id;
    var workers = o.grid_workers.map(function (w) {
      return "<li class='geo-worker'>" + esc(w.name) + (w.id === assignee ? " <b>(负责 assignee)</b>" : "") +
        " · <span class='meta'>" + esc(w.roles.map(function (r) { return WORKER_ROLES[r] || r; }).join("、")) +
        "</span> " + tel(w.phone, w.name) + "</li>";
    }).join("");
    var police = o.police.map(function (p) {
      return "<li class='geo-police'>" + (p.kind === "auxiliary" ? "辅警 " : "民警 ") + esc(p.name) +
        " · <span class='meta'>" + esc(p.unit) + "</span> " + tel(p.phone, p.name) + "</li>";
    }).join("");
    box.innerHTML = "<div class='meta'>网格 grid " + esc(o.grid.code) + " " + esc(o.grid.name) + "</div>" +
      "<ul class='geo-people'>" + (workers || "<li>无网格员 no grid worker</li>") + "</ul>" +
      "<div class='meta'>警格联动 police–grid pair</div><ul class='geo-people'>" +
      (police || "<li>无 none</li>") + "</ul>";
  }

  function renderDepartments() {
    var i = panel.incident;
    var box = $(".geo-detail-departments div", panel.el);
    var list = i.departments || [];
    if (!list.length) { box.innerHTML = "<span class='meta'>无 none</span>"; return; }
    box.innerHTML = "<table class='geo-departments'><thead><tr><th scope='col'>部门 department</th>" +
      "<th scope='col'>报到期限 due</th><th scope='col'>报到 acknowledged</th><th scope='col'>反馈 answer</th>" +
      "</tr></thead><tbody>" +
      list.map(function (d) {
        return "<tr data-department='" + esc(d.department) + "'><th scope='row'>" +
          esc(d.name ? d.name + " " + d.department : d.department) + "</th><td>" +
          esc(ctx.localTime(d.due_at) || "—") + (d.due_at && !d.acknowledged_at ? "<br><span class='geo-left' data-due='" +
          esc(d.due_at) + "'></span>" : "") + (d.overdue_noticed_at ? "<br><span class='geo-late'>已超时升级 late, escalated</span>" : "") +
          "</td><td>" +
          (d.acknowledged_at ? esc(ctx.localTime(d.acknowledged_at)) + (d.acknowledged_by ? " · " + esc(d.acknowledged_by) : "")
            : "<span class='meta'>待报到 waiting</span>") + "</td><td>" +
          (d.reported_back_at ? esc(d.answer) + "<br><span class='meta'>" + esc(ctx.localTime(d.reported_back_at)) +
            (d.reported_back_by ? " · " + esc(d.reported_back_by) : "") + "</span>" : "—") + "</td></tr>";
      }).join("") + "</tbody></table>";
    renderClock(Date.now());
  }

  function renderStations() {
    var a = panel.nearby;
    var box = $(".geo-detail-stations div", panel.el);
    var items = [];
    if (a.governance_center) {
      items.push("<li>" + esc(a.governance_center.name) + " · 综治中心 governance centre · " +
        distance(a.governance_center.distance_m) + "</li>");
    }
    a.nearest_stations.forEach(function (s) {
      items.push("<li>" + esc(s.name) + " · " + esc(s.kind) + " · " + distance(s.distance_m) + "</li>");
    });
    box.innerHTML = items.length ? "<ul class='geo-stations'>" + items.join("") + "</ul>" : "<span class='meta'>无 none</span>";
  }

  // ------------------------------------------------------------------------- actions

  function alertText(text, withReload) {
    var box = $(".geo-detail-alert", panel.el);
    box.innerHTML = text ? "<p>" + esc(text) + "</p>" + (withReload ?
      "<button type='button' class='geo-reload'>重新加载 Reload</button>" : "") : "";
    box.classList.toggle("active", !!text);
  }

  function notice(text) {
    $(".geo-detail-notice", panel.el).textContent = text || "";
  }

  function showStale(by, at) {
    var who = by || "someone", when = at ? ctx.localTime(at) : "?";
    alertText("已被 " + who + " 于 " + when + " 修改，请重新加载 · changed by " + who + " at " + when + ", reload", true);
  }

  function onAction(action, button) {
    if (panel.busy || !panel.incident) return;
    var rule = (cfg.actions || []).filter(function (a) { return a.action === action; })[0];
    if (!rule) return;
    if (formOf(rule).length) {
      if (panel.form === action) closeForm(true);
      else openForm(rule, button);
    } else {
      send(action, {});
    }
  }

  function openForm(rule, button) {
    var form = $(".geo-action-form", panel.el);
    panel.form = rule.action;
    form.dataset.action = rule.action;
    form.innerHTML = "<fieldset><legend>" + esc(actionLabel(rule.action)) + "</legend>" +
      formOf(rule).map(function (field) { return fieldHtml(field, rule); }).join("") +
      "<div class='geo-form-buttons'><button type='submit'>提交 Submit</button> " +
      "<button type='button' class='geo-cancel'>取消 Cancel</button></div></fieldset>";
    form.hidden = false;
    $(".geo-action-buttons", panel.el).querySelectorAll("button[aria-controls]").forEach(function (b) {
      b.setAttribute("aria-expanded", String(b.dataset.action === rule.action));
    });
    if (rule.action === "reassign") wireReassign(form);
    alertText("");
    var first = form.querySelector("input:not([type=hidden]):not([disabled]), select, textarea");
    if (first) first.focus();
    else if (button) button.focus();
  }

  function closeForm(refocus) {
    var action = panel.form;
    var form = $(".geo-action-form", panel.el);
    panel.form = null;
    form.hidden = true;
    form.innerHTML = "";
    $(".geo-action-buttons", panel.el).querySelectorAll("button[aria-controls]").forEach(function (b) {
      b.setAttribute("aria-expanded", "false");
    });
    if (refocus && action) {
      var button = $(".geo-action-buttons button[data-action='" + action + "']", panel.el);
      if (button) button.focus();
    }
  }

  function fieldHtml(field, rule) {
    var id = "geo-f-" + rule.action + "-" + field.kind;
    if (field.kind === "photos") {
      return "<label for='" + id + "'>证据照片 evidence photos (≤ " + MAX_PHOTOS + ")</label>" +
        "<input type='file' id='" + id + "' name='photos' accept='image/jpeg,image/png,image/webp' multiple>";
    }
    if (field.kind === "note") {
      var label = field.label || (field.required ? "理由 reason" : "备注 note");
      return "<label for='" + id + "'>" + esc(label) + (field.required ? " *" : "") + "</label>" +
        "<textarea id='" + id + "' name='note' rows='2' maxlength='2000'" + (field.required ? " required" : "") +
        "></textarea>";
    }
    if (field.kind === "departments") {
      return "<label for='" + id + "'>部门 departments" + (field.required ? " *" : "") + "</label>" +
        "<input id='" + id + "' name='departments' autocomplete='off' placeholder='城管、住建 (、或逗号分隔 comma-separated)'" +
        (field.required ? " required" : "") + ">";
    }
    if (field.kind === "due_hours") {
      return "<label for='" + id + "'>报到时限(小时) report in within (hours)</label>" +
        "<input id='" + id + "' name='due_hours' type='number' min='1' max='720' value='24' required>";
    }
    if (field.kind === "department") {
      return "<label for='" + id + "'>报到部门 department reporting in</label><select id='" + id +
        "' name='department' required>" + departmentOptions(waitingDepartments(panel.incident)) + "</select>";
    }
    if (field.kind === "answering") {
      return "<label for='" + id + "'>反馈部门 department reporting back</label><select id='" + id +
        "' name='department' required>" + departmentOptions(answeringDepartments(panel.incident)) + "</select>";
    }
    if (field.kind === "into") {
      return "<label for='" + id + "'>合并到事件 merge into incident # *</label>" +
        "<input id='" + id + "' name='into' type='number' min='1' required>";
    }
    if (field.kind === "reassign") {
      return "<div class='geo-choice'><input type='radio' id='geo-ra-worker' name='mode' value='worker' checked>" +
        "<label for='geo-ra-worker'>本网格网格员 a worker of this grid</label></div>" +
        "<label for='geo-ra-assignee'>网格员 grid worker</label>" +
        "<select id='geo-ra-assignee' name='assignee' required></select>" +
        "<div class='geo-choice'><input type='radio' id='geo-ra-grid' name='mode' value='grid'>" +
        "<label for='geo-ra-grid'>其他网格 another grid</label></div>" +
        "<label for='geo-ra-code'>网格编码 grid code *</label>" +
        "<input id='geo-ra-code' name='grid' list='geo-grid-codes' autocomplete='off' pattern='[0-9]{6,20}' disabled required>" +
        "<datalist id='geo-grid-codes'>" + gridOptions() + "</datalist>" +
        "<label for='geo-ra-other'>该网格网格员 worker there</label>" +
        "<select id='geo-ra-other' name='other_assignee' disabled><option value=''>按规则 by the rules</option></select>" +
        "<label for='geo-ra-note'>理由 reason</label>" +
        "<textarea id='geo-ra-note' name='note' rows='2' maxlength='2000'></textarea>";
    }
    return "";
  }

  function gridOptions() {
    var layer = ctx.state.layers["grids 网格"], options = [];
    if (layer) {
      layer.eachLayer(function (l) {
        var p = l.feature && l.feature.properties;
        if (p && p.code !== panel.incident.grid_code) {
          options.push("<option value='" + esc(p.code) + "'>" + esc(p.name) + "</option>");
        }
      });
    }
    return options.join("");
  }

  function fillWorkers(select, o, ofThisGrid) {
    if (!select) return;
    var current = panel.incident.assignee_worker_id;
    var head = ofThisGrid ? "" : "<option value=''>按规则 by the rules</option>";
    select.innerHTML = head + (o.people_hidden ? [] : o.grid_workers).map(function (w) {
      return "<option value='" + w.id + "'" + (ofThisGrid && w.id === current ? " disabled" : "") + ">" +
        esc(w.name) + " · " + esc(w.roles.map(function (r) { return WORKER_ROLES[r] || r; }).join("、")) +
        (w.id === current ? " (现负责 current)" : "") + "</option>";
    }).join("");
    if (ofThisGrid) {
      var firstFree = select.querySelector("option:not([disabled])");
      if (firstFree) select.value = firstFree.value;
    }
  }

  // Reassign: to a worker of this grid, or to another grid (and maybe one of its workers) with
  // a reason, which is then required.
  function wireReassign(form) {
    var assignee = $("select[name=assignee]", form), grid = $("input[name=grid]", form);
    var other = $("select[name=other_assignee]", form), note = $("textarea[name=note]", form);
    if (panel.owners) fillWorkers(assignee, panel.owners, true);
    form.querySelectorAll("input[name=mode]").forEach(function (radio) {
      radio.addEventListener("change", function () {
        var toGrid = $("input[name=mode]:checked", form).value === "grid";
        assignee.disabled = toGrid;
        grid.disabled = other.disabled = !toGrid;
        note.required = toGrid;
        $("label[for=geo-ra-note]", form).textContent = toGrid ? "理由 reason *" : "理由 reason";
      });
    });
    grid.addEventListener("change", function () {
      var code = grid.value.trim();
      if (!/^[0-9]{6,20}$/.test(code)) return;
      api("/api/v1/grids/" + encodeURIComponent(code) + "/owners").then(function (o) {
        if (grid.value.trim() === code) fillWorkers(other, o, false);
      }).catch(function (error) { grid.setCustomValidity(""); notice(errorText(error)); });
    });
  }

  function onSubmit(e) {
    e.preventDefault();
    var form = e.target, action = form.dataset.action;
    var data = new FormData(form), body = {};
    var note = (data.get("note") || "").trim();
    if (note) body.note = note;
    if (data.has("departments")) {
      var departments = String(data.get("departments")).split(/[,，、;；\s]+/).filter(Boolean);
      if (departments.length) body.departments = departments;
    }
    if (data.get("due_hours")) body.due_hours = Number(data.get("due_hours"));
    if (data.get("department")) body.department = data.get("department");
    if (data.get("into")) body.into = Number(data.get("into"));
    if (action === "reassign") {
      if (data.get("mode") === "grid") {
        body.grid = String(data.get("grid")).trim();
        if (data.get("other_assignee")) body.assignee = Number(data.get("other_assignee"));
      } else {
        body.assignee = Number(data.get("assignee"));
      }
    }
    var photos = data.getAll("photos").filter(function (f) { return f && f.size; });
    if (!photos.length) return send(action, body);
    if (photos.length > MAX_PHOTOS) return alertText("最多 at most " + MAX_PHOTOS + " photos");
    // Evidence first: a refused photo leaves the incident as it was, and adding one changes no version.
    var upload = new FormData();
    photos.forEach(function (f) { upload.append("photos", f, f.name); });
    upload.append("purpose", "evidence");
    notice("上传照片 uploading photos…");
    return api("/api/v1/incidents/" + panel.incident.id + "/attachments", { form: upload }).then(function (updated) {
      panel.incident.attachments = updated.attachments;
      renderPhotos();
      return send(action, body);
    }).catch(function (error) { notice(""); alertText(errorText(error)); });
  }

  function send(action, body) {
    var i = panel.incident;
    body.action = action;
    body.version = i.version;  // the version on screen: a stale one is refused with 409
    panel.busy = true;
    panel.el.setAttribute("aria-busy", "true");
    alertText("");
    notice("提交中 sending…");
    return api("/api/v1/incidents/" + i.id + "/transitions", { body: body }).then(function (updated) {
      panel.busy = false;
      panel.el.removeAttribute("aria-busy");
      if (panel.id !== updated.id) return;
      closeForm(false);
      setIncident(updated);
      notice("✓ " + actionLabel(action) + " → " + statusLabel(updated.status) + " · v" + updated.version);
      var next = $(".geo-action-buttons button", panel.el);
      (next || $("#geo-detail-title"))
        .focus();
    }).catch(function (error) {
      panel.busy = false;
      panel.el.removeAttribute("aria-busy");
      notice("");
      if (error.status === 409) {
        var b = error.body || {};
        var shown;
        if (b.changed_by || b.changed_at) {
          showStale(b.changed_by, b.changed_at);
          shown = Promise.resolve();
        } else if (b.status && b.status !== i.status) {
          // Refused for its status, which is not the one on screen: someone moved it. Name who and when.
          shown = api("/api/v1/incidents/" + i.id).then(function (fresh) {
            var last = (fresh.timeline || [])[(fresh.timeline || []).length - 1] || {};
            showStale(last.actor_name, last.at);
          }).catch(function () { alertText(errorText(error), true); });
        } else {
          alertText(errorText(error), true);
          shown = Promise.resolve();
        }
        shown.then(function () {
          var reloadButton = $(".geo-reload", panel.el);
          if (reloadButton) reloadButton.focus();
        });
      } else {
        alertText(errorText(error));
      }
    });
  }

  // ------------------------------------------------------------------------- start

  function start(context) {
    ctx = context;
    cfg = ctx.config;
    api = ctx.api;
    esc = ctx.esc;
    map = ctx.map;
    queuePanel();
    buildPanel();
    ctx.state.refreshQueue = refreshQueue;
    ctx.state.openIncident = openIncident;
    ctx.state.onIncident = function (i) { place(i); };  // reported from the map
    connect();  // before the first page: what changes meanwhile is caught up (queue.pending)
    setInterval(tick, TICK_MS);
    return refreshQueue();
  }

  return { start: start, timeLeft: timeLeft };
})();
