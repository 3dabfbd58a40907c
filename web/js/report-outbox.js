/* The reports of /report not yet sent, kept in IndexedDB (photos as Blobs) until the service
 * answers 200 or 201. Every report carries its own external_id, made when it is saved: the
 * service records a report once per external_id (a second send answers 200 with the same
 * incident), so a report sent twice (the page and the service worker at once, or a send whose
 * answer was lost) is still one incident. Shared by the page (web/js/report.js) and its service
 * worker (web/report-sw.js, where the site's policy lets it load this file). */
var ReportOutbox = (function (global) {
  "use strict";

  var DB_NAME = "geo-report", DB_VERSION = 1, OUTBOX = "outbox", META = "meta";
  var LOCK = "geo-report-outbox";
  var BACKOFF_S = [5, 15, 30, 60, 120, 300];  // after the 1st, 2nd, ... failed attempt; then every 5 min
  var dbPromise = null;

  function openDb() {
    if (!dbPromise) {
      dbPromise = new Promise(function (resolve, reject) {
        var request = global.indexedDB.open(DB_NAME, DB_VERSION);
        request.onupgradeneeded = function () {
          var db = request.result;
          if (!db.objectStoreNames.contains(OUTBOX)) db.createObjectStore(OUTBOX, { keyPath: "external_id" });
          if (!db.objectStoreNames.contains(META)) db.createObjectStore(META, { keyPath: "key" });
        };
        request.onsuccess = function () { resolve(request.result); };
        request.onerror = function () { dbPromise = null; reject(request.error); };
      });
    }
    return dbPromise;
  }

  // One request in one transaction; resolves with its result once the transaction is committed.
  function run(store, mode, action) {
    return openDb().then(function (db) {
      return new Promise(function (resolve, reject) {
        var tx = db.transaction(store, mode), result;
        var request = action(tx.objectStore(store));
        request.onsuccess = function () { result = request.result; };
        tx.oncomplete = function () { resolve(result); };
        tx.onerror = tx.onabort = function () { reject(tx.error); };
      });
    });
  }

  function all() {
    return run(OUTBOX, "readonly", function (s) { return s.getAll(); }).then(function (records) {
      return records.sort(function (a, b) { return a.created_at < b.created_at ? -1 : 1; });
    });
  }
  function get(id) { return run(OUTBOX, "readonly", function (s) { return s.get(id); }); }
  function put(record) { return run(OUTBOX, "readwrite", function (s) { return s.put(record); }); }
  function remove(id) { return run(OUTBOX, "readwrite", function (s) { return s.delete(id); }); }
  function getMeta(key) {
    return run(META, "readonly", function (s) { return s.get(key); }).then(function (row) {
      return row ? row.value : undefined;
    });
  }
  function setMeta(key, value) { return run(META, "readwrite", function (s) { return s.put({ key: key, value: value }); }); }

  // "phone-" and a random UUID (crypto.randomUUID needs HTTPS; getRandomValues does not).
  function newId() {
    var crypto = global.crypto;
    if (crypto.randomUUID) return "phone-" + crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return "phone-" + hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" +
      hex.slice(16, 20) + "-" + hex.slice(20);
  }

  // JSON without photos; with photos the same fields as a multipart form plus the files.
  function request(record, csrf) {
    var fields = Object.assign({}, record.fields, { external_id: record.external_id });
    var init = { method: "POST", credentials: "same-origin",
                 headers: { "Accept": "application/json", "X-CSRF-Token": csrf || "" } };
    if (!record.photos || record.photos.length === 0) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(fields);
    } else {
      var form = new FormData();
      Object.keys(fields).forEach(function (name) {
        var value = fields[name];
        if (value !== null && value !== undefined && value !== "") form.append(name, String(value));
      });
      record.photos.forEach(function (photo) { form.append("photos", photo.blob, photo.name); });
      init.body = form;
    }
    return init;
  }

  /* Send one report. Resolves (never rejects) with {outcome, ...}:
   * sent (200 or 201: recorded, now or before), retry (no network, 408, 425, 429, 5xx),
   * signin (401, or a refused CSRF token: the account must sign in again), failed (any other
   * refusal: 404 outside the county, 422, 413 ...; sending it again would not help). */
  function send(record, csrf) {
    return global.fetch("/api/v1/incidents", request(record, csrf)).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        var status = response.status, detail = answer.detail || ("HTTP " + status);
        if (response.ok) return { outcome: "sent", incident: answer, status: status };
        if (status === 401 || (status === 403 && /csrf/i.test(detail))) {
          return { outcome: "signin", error: detail, status: status };
        }
        if (status === 408 || status === 425 || status === 429 || status >= 500) {
          return { outcome: "retry", error: detail, status: status };
        }
        return { outcome: "failed", error: detail, status: status };
      });
    }, function (error) {
      return { outcome: "retry", error: "网络 network: " + error.message, status: 0, offline: true };
    });
  }

  function settle(record, result, summary) {
    if (result.outcome === "sent") {
      summary.sent.push({ record: record, incident: result.incident, status: result.status });
      return remove(record.external_id);
    }
    record.attempts = (record.attempts || 0) + 1;
    record.error = result.error;
    record.last_attempt_at = new Date().toISOString();
    if (result.outcome === "failed") {
      record.state = "failed";
      summary.failed.push(record);
    } else {
      var wait = BACKOFF_S[Math.min(record.attempts, BACKOFF_S.length) - 1];
      record.next_at = Date.now() + wait * 1000;
      summary.waiting.push(record);
      if (result.outcome === "signin") summary.signin = true;
      if (result.offline) summary.offline = true;
    }
    return put(record);
  }

  /* Send what waits, oldest first, one at a time. options: csrf (the token to send), user (only
   * this account's reports are sent: a report is never sent under another account's session),
   * force (ignore the back-off: the network just came back), onChange(record, result).
   * Holds a Web Lock where there is one, so the page and the service worker never send at once;
   * each report is read again before it is sent, so one sent meanwhile is not sent again. */
  function flush(options) {
    options = options || {};
    var summary = { sent: [], waiting: [], failed: [], signin: false, offline: false };
    function attempt() {
      return all().then(function (records) {
        return records.reduce(function (chain, queued) {
          return chain.then(function () {
            if (queued.state === "failed") { summary.failed.push(queued); return null; }
            var blocked = summary.signin || summary.offline || (options.user && queued.user !== options.user) ||
              (!options.force && queued.next_at && queued.next_at > Date.now());
            if (blocked) { summary.waiting.push(queued); return null; }
            return get(queued.external_id).then(function (record) {
              if (!record || record.state === "failed") return null;
              return send(record, options.csrf).then(function (result) {
                return settle(record, result, summary).then(function () {
                  if (options.onChange) options.onChange(record, result);
                });
              });
            });
          });
        }, Promise.resolve()).then(function () { return summary; });
      });
    }
    var locks = global.navigator && global.navigator.locks;
    return locks && locks.request ? locks.request(LOCK, attempt) : attempt();
  }

  function nextAttemptAt(records, user) {
    var due = records.filter(function (r) { return r.state !== "failed" && (!user || r.user === user); })
      .map(function (r) { return r.next_at || 0; });
    return due.length ? Math.min.apply(null, due) : null;
  }

  return { all: all, get: get, put: put, remove: remove, getMeta: getMeta, setMeta: setMeta, newId: newId,
           send: send, flush: flush, nextAttemptAt: nextAttemptAt };
})(self);
