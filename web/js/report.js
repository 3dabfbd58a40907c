/* /report: an incident report from a phone (geo_service/reportpage.py renders the page).
 *
 * The place is the phone's GPS fix, or a 粤居码 door plate (?plate=, as the plate's QR code
 * opens it, or typed), shown on a small map whose marker can be dragged or moved with a tap.
 * A report is first saved in the outbox (IndexedDB, web/js/report-outbox.js) with a new
 * external_id, then sent; with no network it waits there and is sent when the network comes
 * back (the "online" event, the next visit, a retry timer, or a Background Sync through the
 * service worker). "My reports" lists what waits on this phone and what the service has.
 * Everything comes from this site; window.reportState is for the tests. */
(function () {
  "use strict";

  var cfg = window.reportConfig;
  var Outbox = window.ReportOutbox;
  var SHELL_CACHE = "geo-report-shell", ASSET_CACHE = "geo-report-assets";  // as in web/report-sw.js
  var SYNC_TAG = "geo-report-outbox";                                       // as in web/report-sw.js
  var KEEP_AS_IS_BYTES = 2.5 * 1024 * 1024;  // smaller JPEG/PNG/WebP photos are sent unchanged
  var MAX_SIDE = 2048;                       // larger ones are scaled down to this and sent as JPEG
  var PHOTO_TYPES = ["image/jpeg", "image/png", "image/webp"];
  var STATUS_NAMES = {
    reported: "待分派", assigned: "已分派", accepted: "已受理", in_progress: "处置中", resolved: "已办结",
    verified: "已核查", closed: "已结案", escalated: "已升级", returned: "已退回", reopened: "重新打开",
    rejected: "已驳回"
  };
  var KIND_NAMES = { grid_worker: "网格员 grid worker", rider: "骑手 rider", resident: "居民 resident",
                     police: "民警 police", hotline: "热线 hotline" };

  var state = window.reportState = {
    ready: false, place: null, plate: null, photos: [], me: null, mine: null, outbox: [], errors: [],
    lastResult: null, offline: "preparing"
  };
  var map, marker, accuracyCircle, gridOutline, gridCode = null, watchId = null, lookupTimer = null;
  var lookupSeq = 0, preparing = 0, flushing = null, retryTimer = null;

  function $(id) { return document.getElementById(id); }

  function esc(value) {
    return String(value == null ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function cookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }

  function api(path) {
    return fetch(path, { credentials: "same-origin", headers: { "Accept": "application/json" } }).then(function (response) {
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

  function online() { return navigator.onLine !== false; }

  function localTime(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleString("zh-CN", { timeZone: "Asia/Shanghai", hour12: false, month: "2-digit",
                                                   day: "2-digit", hour: "2-digit", minute: "2-digit" });
  }

  function categoryName(code) {
    for (var i = 0; i < cfg.categories.length; i++) {
      if (cfg.categories[i].code === code) return cfg.categories[i].name;
    }
    return code;
  }

  function setStatus(text, kind) {
    var line = $("rp-status");
    line.className = kind || "";
    line.innerHTML = text;
  }

  // ------------------------------------------------------------------ the form's fixed parts

  function fillChoices() {
    $("rp-category").innerHTML = "<option value=''>— 选择类别 choose —</option>" + cfg.categories.map(function (c) {
      return "<option value='" + esc(c.code) + "'>" + esc(c.name) + " " + esc(c.name_en || "") + "</option>";
    }).join("");
    if (!cfg.reporterKind) {  // an account of no person (dispatcher, admin): says who reported
      $("rp-kind").innerHTML = ["hotline", "resident", "grid_worker", "rider", "police"].map(function (k) {
        return "<option value='" + k + "'>" + esc(KIND_NAMES[k] || k) + "</option>";
      }).join("");
      $("rp-kind-row").hidden = false;
    }
    var signOut = document.querySelector("#rp-top input[name=csrf]");
    if (signOut) signOut.value = cookie(cfg.csrfCookie);  // a kept copy of the page may carry an old one
  }

  // ------------------------------------------------------------------ the place

  function setupMap() {
    map = L.map("rp-map", { center: cfg.center, zoom: 11, minZoom: 8, maxZoom: 19,
                            attributionControl: !!cfg.tileUrl });
    if (cfg.tileUrl) {
      L.tileLayer(cfg.tileUrl, { maxZoom: 19, attribution: esc(cfg.tileAttribution || "") }).addTo(map);
    }
    marker = L.marker(cfg.center, {
      draggable: true, autoPan: true, title: "拖动调整位置 drag to adjust",
      icon: L.divIcon({ className: "rp-pin", html: "<span></span>", iconSize: [28, 28], iconAnchor: [14, 34] })
    });
    marker.on("dragend", function () {
      var p = marker.getLatLng();
      setPlace(p.lng, p.lat, "moved");
    });
    map.on("click", function (e) { setPlace(e.latlng.lng, e.latlng.lat, "moved"); });
    state.map = map;
    state.marker = marker;
  }

  function setPlace(lon, lat, source, accuracy) {
    var first = !state.place || state.place.lon == null;
    state.place = { lon: lon, lat: lat, source: source, accuracy: accuracy || null };
    if (source === "moved" || source === "plate") stopGps();
    marker.setLatLng([lat, lon]);
    if (!map.hasLayer(marker)) marker.addTo(map);
    if (accuracyCircle) { map.removeLayer(accuracyCircle); accuracyCircle = null; }
    if (source === "gps" && accuracy) {
      accuracyCircle = L.circle([lat, lon], { radius: accuracy, weight: 1, color: "#1e88e5", fillOpacity: 0.1,
                                              interactive: false }).addTo(map);
    }
    if (first || source === "plate") map.setView([lat, lon], 17, { animate: false });
    $("rp-back-to-plate").hidden = !(state.plate && state.plate.lon != null && source !== "plate");
    describePlace();
    scheduleLookup();
  }

  function describePlace(areas) {
    var p = state.place, parts = [];
    if (!p) { $("rp-place").textContent = "未定位 no place yet"; return; }
    if (p.source === "plate") parts.push("门牌位置 at the door plate");
    else if (p.source === "gps") parts.push("GPS" + (p.accuracy ? " ±" + Math.round(p.accuracy) + " m" : ""));
    else if (p.source === "moved") {
      parts.push(state.plate ? "已移动：按标记位置上报，不按门牌 moved: the marker's point is reported, not the plate"
                             : "标记位置 the marker's point");
    }
    if (areas) parts.push(areas);
    $("rp-place").innerHTML = parts.join(" · ");
  }

  function scheduleLookup() {
    clearTimeout(lookupTimer);
    lookupTimer = setTimeout(lookup, 300);
  }

  // Which town, community and grid the point falls in (the grid's outline drawn for orientation).
  function lookup() {
    var p = state.place;
    if (!p || p.lon == null) return;
    var seq = ++lookupSeq;
    if (!online()) { p.outside = false; describePlace("离线：发送后分派 offline: assigned when sent"); return; }
    api("/api/v1/lookup?stations=0&lon=" + p.lon.toFixed(7) + "&lat=" + p.lat.toFixed(7)).then(function (answer) {
      if (seq !== lookupSeq) return;
      p.outside = false;
      describePlace(esc(answer.town.name) + " › " + esc(answer.community.name) + " › <b class='rp-grid'>" +
                    esc(answer.grid.name) + "</b> <small>" + esc(answer.grid.code) + "</small>");
      drawGrid(answer.grid.code);
      updateSubmit();
    }, function (error) {
      if (seq !== lookupSeq) return;
      if (error.status === 404 && error.body && "nearest_grid" in error.body) {
        p.outside = true;
        var near = error.body.nearest_grid;
        describePlace("<span class='rp-bad'>✗ 不在服务范围 outside the county" +
                      (near ? "（最近网格 nearest grid " + esc(near.name) + ", " + Math.round(near.distance_m) + " m）" : "") +
                      "</span>");
      } else {
        p.outside = false;
        describePlace("网格待定 grid unknown: " + esc(error.message));
      }
      updateSubmit();
    });
  }

  function drawGrid(code) {
    if (code === gridCode) return;
    gridCode = code;
    api("/api/v1/grids/" + encodeURIComponent(code)).then(function (feature) {
      if (gridCode !== code) return;
      if (gridOutline) map.removeLayer(gridOutline);
      gridOutline = L.geoJSON(feature, { interactive: false,
                                         style: { color: "#1f5fa8", weight: 2, fill: false, dashArray: "4 4" } }).addTo(map);
    }).catch(function () { /* only an aid */ });
  }

  function startGps() {
    if (!navigator.geolocation) {
      $("rp-place").textContent = "此浏览器无法定位（需 HTTPS）：请输入门牌或点地图 no GPS here (needs HTTPS): " +
        "enter a door plate or tap the map";
      return;
    }
    stopGps();
    $("rp-place").textContent = "正在定位… locating…";
    watchId = navigator.geolocation.watchPosition(function (position) {
      if (watchId === null) return;
      setPlace(position.coords.longitude, position.coords.latitude, "gps", position.coords.accuracy);
    }, function (error) {
      if (state.place && state.place.source !== "gps") return;
      $("rp-place").textContent = "无法定位 no GPS fix (" + error.message + ")：请输入门牌或点地图 enter a door " +
        "plate or tap the map";
    }, { enableHighAccuracy: true, maximumAge: 10000, timeout: 30000 });
  }

  function stopGps() {
    if (watchId !== null && navigator.geolocation) navigator.geolocation.clearWatch(watchId);
    watchId = null;
  }

  // A door plate: the code, or any form the door-plate lookup accepts (a scanned URL).
  function usePlate(raw) {
    raw = (raw || "").trim();
    if (!raw) return;
    stopGps();
    state.plate = { code: raw, lon: null, lat: null, address: null };
    state.place = { source: "plate", lon: null, lat: null };
    $("rp-plate").hidden = false;
    $("rp-plate-code").textContent = raw;
    $("rp-plate-address").textContent = "查询中… looking up…";
    updateSubmit();
    if (!online()) { plateOffline(raw); return; }
    api("/api/v1/door-plates/" + encodeURIComponent(raw) + "?stations=0").then(function (answer) {
      var d = answer.door_plate, o = answer.ownership;
      state.plate = { code: d.code, lon: d.lon, lat: d.lat, address: d.address };
      $("rp-plate-code").textContent = d.code;
      $("rp-plate-address").textContent = [d.address, d.building && d.building + "栋", d.unit && d.unit + "单元",
                                           d.room && d.room + "室"].filter(Boolean).join(" ");
      setPlace(d.lon, d.lat, "plate");
      lookupSeq++;  // the plate's answer already says where it is
      clearTimeout(lookupTimer);
      describePlace(esc(o.town.name) + " › " + esc(o.community.name) + " › <b class='rp-grid'>" + esc(o.grid.name) +
                    "</b> <small>" + esc(o.grid.code) + "</small>");
      drawGrid(o.grid.code);
      updateSubmit();
    }, function (error) {
      if (!error.status) { plateOffline(raw); return; }
      state.plate = null;
      state.place = null;
      $("rp-plate-address").innerHTML = "<span class='rp-bad'>✗ " + esc(error.message) + "</span>";
      $("rp-place").textContent = "请改用 GPS 或其他门牌 use GPS or another plate";
      updateSubmit();
    });
  }

  function plateOffline(raw) {
    $("rp-plate-address").textContent = "离线：发送时按门牌定位 offline: the plate is placed when the report is sent";
    $("rp-place").textContent = "门牌 door plate " + raw;
    updateSubmit();
  }

  function setupPlace() {
    $("rp-gps").addEventListener("click", function () {
      state.place = null;
      startGps();
    });
    $("rp-back-to-plate").addEventListener("click", function () {
      if (state.plate && state.plate.lon != null) setPlace(state.plate.lon, state.plate.lat, "plate");
    });
    $("rp-plate-go").addEventListener("click", function () {
      var raw = $("rp-plate-input").value;
      if (!raw.trim()) return;
      history.replaceState(null, "", cfg.scope + "?plate=" + encodeURIComponent(raw.trim()));
      $("rp-plate-entry").open = false;
      usePlate(raw);
    });
    var plate = new URLSearchParams(location.search).get("plate");
    if (plate) usePlate(plate);
    else startGps();
  }

  // ------------------------------------------------------------------ photos

  function photoCount() {
    $("rp-photo-count").textContent = state.photos.length + " / " + cfg.maxPhotos;
    var full = state.photos.length >= cfg.maxPhotos;
    $("rp-camera").disabled = $("rp-photos").disabled = full;
    document.getElementById("rp-photo-buttons").classList.toggle("rp-full", full);
  }

  function shrink(file) {
    return createImageBitmap(file, { imageOrientation: "from-image" }).then(function (bitmap) {
      var scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
      var canvas = document.createElement("canvas");
      canvas.width = Math.round(bitmap.width * scale);
      canvas.height = Math.round(bitmap.height * scale);
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      if (bitmap.close) bitmap.close();
      return new Promise(function (resolve, reject) {
        canvas.toBlob(function (blob) { blob ? resolve(blob) : reject(new Error("encoding failed")); }, "image/jpeg", 0.85);
      });
    }).then(function (blob) {
      return { name: (file.name || "photo").replace(/\.[^.]*$/, "") + ".jpg", type: "image/jpeg", blob: blob };
    });
  }

  // A photo as it will be sent: unchanged when small and of an accepted type, otherwise scaled
  // down to MAX_SIDE and re-encoded as JPEG (which also drops its metadata).
  function prepare(file) {
    if (PHOTO_TYPES.indexOf(file.type) >= 0 && file.size <= KEEP_AS_IS_BYTES) {
      return Promise.resolve({ name: file.name || "photo", type: file.type, blob: file });
    }
    return shrink(file).catch(function () {
      if (PHOTO_TYPES.indexOf(file.type) >= 0 && file.size <= cfg.maxPhotoBytes) {
        return { name: file.name || "photo", type: file.type, blob: file };
      }
      throw new Error("无法读取 cannot read " + file.name + " (" + (file.type || "unknown type") + ")");
    });
  }

  function addFiles(files) {
    var list = Array.prototype.slice.call(files);
    var room = cfg.maxPhotos - state.photos.length - preparing;
    if (list.length > room) {
      setStatus("最多 " + cfg.maxPhotos + " 张照片 at most " + cfg.maxPhotos + " photos: " +
                (list.length - Math.max(room, 0)) + " 张未加 not added", "rp-bad");
      list = list.slice(0, Math.max(room, 0));
    }
    list.forEach(function (file) {
      preparing += 1;
      updateSubmit();
      prepare(file).then(function (photo) {
        if (photo.blob.size > cfg.maxPhotoBytes) {
          throw new Error(file.name + " 超过 over " + (cfg.maxPhotoBytes >> 20) + " MB");
        }
        photo.url = URL.createObjectURL(photo.blob);
        state.photos.push(photo);
      }).catch(function (error) {
        setStatus("✗ " + esc(error.message), "rp-bad");
      }).then(function () {
        preparing -= 1;
        renderPreviews();
        updateSubmit();
      });
    });
  }

  function renderPreviews() {
    $("rp-previews").innerHTML = state.photos.map(function (photo, i) {
      return "<li><img src='" + esc(photo.url) + "' alt='照片 photo " + (i + 1) + "'>" +
        "<button type='button' class='rp-remove' data-index='" + i + "' aria-label='删除照片 remove photo " + (i + 1) +
        "'>×</button></li>";
    }).join("");
    photoCount();
  }

  function setupPhotos() {
    ["rp-camera", "rp-photos"].forEach(function (id) {
      $(id).addEventListener("change", function (e) {
        addFiles(e.target.files);
        e.target.value = "";
      });
    });
    $("rp-previews").addEventListener("click", function (e) {
      var button = e.target.closest(".rp-remove");
      if (!button) return;
      var removed = state.photos.splice(Number(button.dataset.index), 1)[0];
      if (removed) URL.revokeObjectURL(removed.url);
      renderPreviews();
    });
    photoCount();
  }

  // ------------------------------------------------------------------ sending

  function updateSubmit() {
    var p = state.place;
    var placed = !!(p && (p.lon != null || (p.source === "plate" && state.plate)));
    $("rp-submit").disabled = preparing > 0 || !placed || !!(p && p.outside);
  }

  function currentUser() { return state.me ? state.me.name : cfg.user; }

  function record() {
    var p = state.place, fields = {
      category: $("rp-category").value,
      description: $("rp-description").value.trim(),
      reporter_kind: cfg.reporterKind || $("rp-kind").value
    };
    var placeText;
    if (p.source === "plate") {
      fields.door_plate = state.plate.code;
      placeText = "门牌 " + state.plate.code + (state.plate.address ? " " + state.plate.address : "");
    } else {
      fields.lon = Number(p.lon.toFixed(7));
      fields.lat = Number(p.lat.toFixed(7));
      placeText = fields.lon.toFixed(5) + ", " + fields.lat.toFixed(5);
    }
    return {
      external_id: Outbox.newId(), created_at: new Date().toISOString(), user: currentUser(), state: "waiting",
      attempts: 0, fields: fields, place_text: placeText,
      photos: state.photos.map(function (photo) { return { name: photo.name, type: photo.type, blob: photo.blob }; })
    };
  }

  function clearForm() {
    $("rp-description").value = "";
    state.photos.forEach(function (photo) { URL.revokeObjectURL(photo.url); });
    state.photos = [];
    renderPreviews();
  }

  function submit(e) {
    e.preventDefault();
    var problems = [];
    if (!$("rp-category").value) problems.push("请选择类别 choose a category");
    if (!$("rp-description").value.trim()) problems.push("请填写描述 describe it");
    if ($("rp-submit").disabled) problems.push("请先定位 place it first");
    if (problems.length) { setStatus(problems.join("；"), "rp-bad"); return; }
    var report = record();
    $("rp-submit").disabled = true;
    state.lastResult = null;
    setStatus("保存中… saving…");
    Outbox.put(report).then(function () {
      clearForm();
      setStatus("已保存，发送中… saved, sending…");
      return flushNow(true);
    }).then(function (summary) {
      var sent = summary && summary.sent.filter(function (s) { return s.record.external_id === report.external_id; })[0];
      if (sent) {
        var i = sent.incident;
        state.lastResult = i;
        var photos = i.attachments && i.attachments.length ? " · 照片 " + i.attachments.length + " photos" : "";
        setStatus("✓ 已上报 reported <b>#" + esc(i.id) + "</b> → " + esc(i.grid ? i.grid.name : "") + " · " +
                  esc(statusLabel(i.status)) + photos, "rp-good");
        return;
      }
      return Outbox.get(report.external_id).then(function (left) {
        if (left && left.state === "failed") {
          setStatus("✗ 未能上报 not accepted: " + esc(left.error) + "（见下方 see below）", "rp-bad");
        } else if (summary && summary.signin) {
          setStatus("已保存在本机；请<a href='/login?next=" + esc(encodeURIComponent(location.pathname + location.search)) +
                    "'>重新登录 sign in again</a>后自动发送 saved on this phone; sent once you sign in", "rp-warn");
        } else {
          setStatus("已保存在本机，联网后自动发送 saved on this phone: sent when the network is back", "rp-warn");
          syncLater();
        }
      });
    }).catch(function (error) {
      state.errors.push(String(error));
      setStatus("✗ 无法保存 could not save: " + esc(error.message), "rp-bad");
    }).then(updateSubmit);
  }

  function statusLabel(status) { return (STATUS_NAMES[status] ? STATUS_NAMES[status] + " " : "") + status; }

  // Who is signed in (the outbox sends only that account's reports), kept for the service worker.
  function whoAmI() {
    return api("/api/v1/auth/me").then(function (me) {
      state.me = me;
      $("rp-net").hidden = true;
      return Outbox.setMeta("session", { user: me.name, csrf: cookie(cfg.csrfCookie) }).then(function () { return me; });
    });
  }

  function flushNow(force) {
    if (!online()) {
      return renderList().then(function () { return { sent: [], waiting: [], failed: [], offline: true }; });
    }
    if (flushing) return flushing.then(function () { return flushNow(force); });
    flushing = whoAmI().then(function (me) {
      return Outbox.flush({ csrf: cookie(cfg.csrfCookie), user: me.name, force: force });
    }, function (error) {
      if (error.status === 401) return { sent: [], waiting: [], failed: [], signin: true };
      return { sent: [], waiting: [], failed: [], offline: !error.status };
    }).then(function (summary) {
      flushing = null;
      if (summary.signin) signInNeeded();
      if (summary.sent.length) refreshMine();
      return renderList().then(function () { scheduleRetry(); return summary; });
    }, function (error) {
      flushing = null;
      state.errors.push(String(error));
      throw error;
    });
    return flushing;
  }

  function scheduleRetry() {
    clearTimeout(retryTimer);
    var due = Outbox.nextAttemptAt(state.outbox, currentUser());
    if (due === null) return;
    var wait = Math.min(Math.max(due - Date.now(), 5000), 300000);
    retryTimer = setTimeout(function () { flushNow(false); }, wait);
  }

  // Background Sync: the browser wakes the service worker when the network is back, even after
  // this page was closed (where it has Background Sync; elsewhere the next visit sends).
  function syncLater() {
    if (!("serviceWorker" in navigator) || !navigator.serviceWorker.controller) return;
    navigator.serviceWorker.ready.then(function (registration) {
      return registration.sync && registration.sync.register(SYNC_TAG);
    }).catch(function () { /* not offered: the page's own retries remain */ });
  }

  function signInNeeded() {
    $("rp-net").hidden = false;
    $("rp-net").innerHTML = "登录已过期 signed out: <a href='/login?next=" +
      esc(encodeURIComponent(location.pathname + location.search)) +
      "'>重新登录 sign in</a>，上报保留在本机 reports wait on this phone";
  }

  // ------------------------------------------------------------------ my reports

  // The service's list of the caller's reports; offline, the last one seen on this phone.
  function refreshMine() {
    var answer = online() ? api("/api/v1/incidents?mine=true&limit=50&sort=-reported_at")
                          : Promise.reject(new Error("offline"));
    return answer.then(function (page) {
      state.mine = { items: page.items, total: page.total, at: new Date().toISOString(), live: true };
      Outbox.setMeta("mine:" + currentUser(), state.mine).catch(function () { /* only a copy */ });
    }, function (error) {
      if (error.status === 401) signInNeeded();
      return Outbox.getMeta("mine:" + currentUser()).then(function (kept) {
        if (kept) { kept.live = false; state.mine = kept; }
      });
    }).then(renderList);
  }

  function renderList() {
    return Outbox.all().then(function (records) {
      state.outbox = records;
      var waiting = records.map(function (r) {
        var other = r.user !== currentUser() ? " · 账号 account " + esc(r.user) : "";
        var failed = r.state === "failed";
        return "<li class='rp-item " + (failed ? "rp-failed" : "rp-waiting") + "' data-external-id='" +
          esc(r.external_id) + "'>" +
          "<div><span class='rp-badge'>" + (failed ? "未能发送 not sent" : "待发送 waiting") + "</span> " +
          esc(categoryName(r.fields.category)) + " · " + esc(localTime(r.created_at)) + other + "</div>" +
          "<div class='rp-desc'>" + esc(r.fields.description) + "</div>" +
          "<div class='hint'>" + esc(r.place_text) + (r.photos.length ? " · 照片 " + r.photos.length + " photos" : "") +
          (r.error ? " · " + esc(r.error) : "") + "</div>" +
          (failed ? "<div class='rp-row'><button type='button' class='rp-retry'>重试 Retry</button>" +
                    "<button type='button' class='rp-discard'>删除 Discard</button></div>" : "") + "</li>";
      }).join("");
      var sent = (state.mine ? state.mine.items : []).map(function (i) {
        return "<li class='rp-item rp-sent' data-id='" + esc(i.id) + "' data-external-id='" +
          esc(i.external_id || "") + "'>" + "<div><b>#" + esc(i.id) + "</b> <span class='rp-badge rp-status-" +
          esc(i.status) + "'>" + esc(statusLabel(i.status)) +
          "</span> " + esc(categoryName(i.category)) + " · " + esc(localTime(i.reported_at)) + "</div>" +
          "<div class='rp-desc'>" + esc(i.description) + "</div>" +
          "<div class='hint'>网格 grid " + esc(i.grid_code || "—") + "</div></li>";
      }).join("");
      $("rp-list").innerHTML = waiting + sent || "<li class='hint'>还没有上报 nothing reported yet</li>";
      var note = [];
      if (records.length) note.push(records.length + " 条在本机等待 waiting on this phone");
      if (state.mine && !state.mine.live) note.push("离线：状态截至 offline: status as of " + localTime(state.mine.at));
      if (state.mine && state.mine.total > state.mine.items.length) {
        note.push("显示最近 " + state.mine.items.length + " / " + state.mine.total + " the latest shown");
      }
      $("rp-mine-note").textContent = note.join(" · ");
    });
  }

  function setupList() {
    $("rp-refresh").addEventListener("click", function () { flushNow(true).then(refreshMine); });
    $("rp-list").addEventListener("click", function (e) {
      var item = e.target.closest(".rp-item");
      if (!item) return;
      var id = item.dataset.externalId;
      if (e.target.closest(".rp-discard")) {
        Outbox.remove(id).then(renderList);
      } else if (e.target.closest(".rp-retry")) {
        Outbox.get(id).then(function (r) {
          if (!r) return null;
          r.state = "waiting";
          r.next_at = 0;
          r.user = currentUser();  // the account that asks to send it now
          return Outbox.put(r);
        }).then(function () { return flushNow(true); });
      }
    });
  }

  // ------------------------------------------------------------------ offline

  function showNetwork() {
    $("rp-net").hidden = online();
    if (!online()) {
      $("rp-net").textContent = "离线 Offline: 上报会保存在本机，联网后自动发送 reports wait on this phone";
    }
  }

  function isShell(response) {
    return response.ok && !response.redirected && response.headers.get("X-Geo-Page") === "report";
  }

  // Keep what the page needs in the caches the service worker serves offline, then register it.
  // Needs a secure context (HTTPS, or localhost): elsewhere the outbox works while the page is open.
  function prepareOffline() {
    if (!("serviceWorker" in navigator) || !window.caches) {
      state.offline = "unavailable";
      return Promise.resolve();
    }
    if (!online()) { state.offline = "offline"; return Promise.resolve(); }
    return caches.open(ASSET_CACHE).then(function (cache) {
      return Promise.all(cfg.assets.map(function (url) {
        return fetch(url, { cache: "no-cache", credentials: "same-origin" }).then(function (response) {
          if (!response.ok) throw new Error(url + ": HTTP " + response.status);
          return cache.put(url, response);
        });
      }));
    }).then(function () {
      if (navigator.serviceWorker.controller) return null;  // the worker keeps the page as it passes
      return fetch(cfg.scope, { cache: "no-store", credentials: "same-origin" }).then(function (response) {
        if (!isShell(response)) return null;
        return caches.open(SHELL_CACHE).then(function (c) { return c.put(cfg.scope, response); });
      });
    }).then(function () {
      return navigator.serviceWorker.register(cfg.serviceWorker, { scope: cfg.scope });
    }).then(function () {
      return navigator.serviceWorker.ready;
    }).then(function () {
      state.offline = "ready";
      document.body.dataset.offline = "ready";
    }).catch(function (error) {
      state.offline = "failed";
      state.errors.push("offline preparation: " + error);
    });
  }

  // ------------------------------------------------------------------ start

  function init() {
    fillChoices();
    setupMap();
    setupPlace();
    setupPhotos();
    setupList();
    $("rp-form").addEventListener("submit", submit);
    window.addEventListener("online", function () {
      showNetwork();
      lookup();
      flushNow(true).then(refreshMine);
    });
    window.addEventListener("offline", showNetwork);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible" && online() && state.outbox.length) flushNow(false);
    });
    if ("serviceWorker" in navigator) {
      navigator.serviceWorker.addEventListener("message", function (e) {
        if (e.data && e.data.type === "flush") flushNow(true);
      });
    }
    showNetwork();
    updateSubmit();
    var start = online() ? flushNow(true).then(refreshMine) : refreshMine();
    start.catch(function (error) { state.errors.push(String(error)); }).then(function () {
      state.ready = true;
      document.body.dataset.ready = "true";
      return prepareOffline();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
