/* The service worker of /report (scope /report; served at /report-sw.js, since a worker's scope
 * may not lie above its own directory). It lets the page open with no network once visited:
 *
 * - The page: from the network (navigation preload, so this worker needs no fetch of its own),
 *   kept in SHELL_CACHE each time it comes back whole; with no network, no answer within
 *   NETWORK_WAIT_MS or a 5xx, the kept copy. Its HTML is the same for any ?plate= (the script
 *   reads the plate), so one copy serves every door plate.
 * - Its scripts, styles and icon: the page puts them into ASSET_CACHE on every visit. A page that
 *   came from the network loads them from the network (so a new version is used at once); a page
 *   served from the kept copy gets them from the cache.
 * - Unsent reports wait in IndexedDB (web/js/report-outbox.js). A Background Sync ("sync" event)
 *   asks an open /report page to send them, or sends them itself where the site's policy lets
 *   this worker load the outbox and reach the network.
 */
"use strict";

var SHELL = "/report";
var SHELL_CACHE = "geo-report-shell";    // as in web/js/report.js
var ASSET_CACHE = "geo-report-assets";   // as in web/js/report.js
var SYNC_TAG = "geo-report-outbox";      // as in web/js/report.js
var NETWORK_WAIT_MS = 8000;
var OFFLINE_CLIENT_MS = 30000;

try {
  importScripts("/static/js/report-outbox.js");
} catch (error) {
  // The site's Content-Security-Policy may forbid this worker scripts and the network: then
  // open pages send the reports (see "sync" below).
}

// Pages (client ids) served from the kept copy, whose assets come from the cache; with their time.
var offlineClients = new Map();

self.addEventListener("install", function () {
  self.skipWaiting();
});

self.addEventListener("activate", function (event) {
  event.waitUntil(Promise.all([
    self.registration.navigationPreload ? self.registration.navigationPreload.enable() : null,
    self.clients.claim()
  ]));
});

function isShell(response) {
  return response && response.status === 200 && response.type === "basic" && !response.redirected &&
    response.headers.get("X-Geo-Page") === "report";
}

function keptShell() {
  return caches.open(SHELL_CACHE).then(function (cache) { return cache.match(SHELL); });
}

function keep(response) {
  return caches.open(SHELL_CACHE).then(function (cache) { return cache.put(SHELL, response); });
}

function withTimeout(promise, ms) {
  return new Promise(function (resolve, reject) {
    var timer = setTimeout(function () { reject(new Error("no answer within " + ms + " ms")); }, ms);
    promise.then(function (value) { clearTimeout(timer); resolve(value); },
                 function (error) { clearTimeout(timer); reject(error); });
  });
}

function servePage(event) {
  var network = Promise.resolve(event.preloadResponse).then(function (preloaded) {
    return preloaded || fetch(event.request);
  });
  // However it ends, a whole page that arrives is kept (also one that came after the timeout).
  event.waitUntil(network.then(function (response) {
    return isShell(response) ? keep(response.clone()) : null;
  }).catch(function () { return null; }));
  function fromCache(fallback) {
    return keptShell().then(function (kept) {
      if (!kept) return fallback || Response.error();
      var id = event.resultingClientId || "";
      offlineClients.set(id, Date.now());
      return kept;
    });
  }
  return withTimeout(network, NETWORK_WAIT_MS).then(function (response) {
    return response.status >= 500 ? fromCache(response) : response;
  }, function () { return fromCache(null); });
}

// Whether a request comes from a page served from the kept copy. Browsers without
// resultingClientId record "" : then any page's requests in the next OFFLINE_CLIENT_MS count.
function fromOfflinePage(event) {
  var now = Date.now();
  offlineClients.forEach(function (at, id) {
    if (now - at > (id === "" ? OFFLINE_CLIENT_MS : 3600 * 1000)) offlineClients.delete(id);
  });
  return offlineClients.has(event.clientId) || offlineClients.has("");
}

self.addEventListener("fetch", function (event) {
  var request = event.request;
  if (request.method !== "GET") return;
  var url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate") {
    if (url.pathname === SHELL) event.respondWith(servePage(event));
    return;
  }
  if ((url.pathname.indexOf("/static/") === 0 || url.pathname === "/favicon.ico") && fromOfflinePage(event)) {
    event.respondWith(caches.open(ASSET_CACHE).then(function (cache) {
      return cache.match(request, { ignoreSearch: true });
    }).then(function (hit) { return hit || Response.error(); }));
  }
});

self.addEventListener("sync", function (event) {
  if (event.tag !== SYNC_TAG) return;
  event.waitUntil(self.clients.matchAll({ type: "window" }).then(function (clients) {
    var pages = clients.filter(function (client) { return new URL(client.url).pathname === SHELL; });
    if (pages.length) {
      pages.forEach(function (client) { client.postMessage({ type: "flush" }); });
      return null;
    }
    if (typeof ReportOutbox === "undefined") return null;
    // No page open: send with the account and CSRF token the page last saw. Reports still
    // waiting afterwards make the sync fail, so that the browser tries again later.
    return ReportOutbox.getMeta("session").then(function (session) {
      if (!session) return null;
      return ReportOutbox.flush({ csrf: session.csrf, user: session.user, force: true }).then(function (summary) {
        if (summary.waiting.length && !summary.signin) throw new Error(summary.waiting.length + " reports still waiting");
        return null;
      });
    });
  }));
});
