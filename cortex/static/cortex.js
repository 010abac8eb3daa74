/*! Cortex browser tracking snippet: trackEvent(name, properties) for the generic
 * interactions API (POST /api/v1/interactions/batch).
 *
 *   <script src="https://events.example.com/sdk/cortex.js" data-api-key="KEY" async></script>
 *   <script>
 *     window.cortexQueue = window.cortexQueue || [];
 *     function trackEvent(name, properties) { cortexQueue.push([name, properties]); }
 *     trackEvent("page_view", {path: location.pathname});
 *   </script>
 *
 * or, once loaded, cortex.init({apiKey: "KEY", endpoint: "https://events.example.com"})
 * and cortex.trackEvent(name, properties).
 *
 * - Events are batched: sent when `batchSize` are waiting or `flushInterval` ms after the
 *   first, as one POST with the key in the X-API-Key header.
 * - When the page is hidden or left, whatever waits is handed to navigator.sendBeacon.
 *   A beacon's fate is unknown, so its events stay in localStorage until a later page of
 *   the site sends them again (Cortex answers "duplicate" for the ones that arrived).
 * - Waiting events are kept in localStorage, so a reload or a closed tab loses nothing.
 * - 429, 503, other 5xx and network errors are retried with exponential backoff (and
 *   Retry-After when the server sends one); every event has an event_id (a UUIDv7), so a
 *   retry is never stored twice.  413 splits the batch in halves; 400, and 413 for a
 *   single event, drop it (sending it again cannot help); 401 stops sending (the key is
 *   wrong).
 * - An anonymous id, kept in localStorage, is every event's user_id until identify().
 */
(function (window) {
  "use strict";
  var document = window.document;
  var VERSION = "1";
  var MAX_STORED = 1000;          // events kept while the server cannot be reached
  var BEACON_MAX_BYTES = 60000;   // browsers cap a beacon at 64 KiB

  var settings = {
    apiKey: null,
    endpoint: null,
    businessId: null,
    source: null,
    batchSize: 20,
    flushInterval: 2000,
    retryInitial: 1000,
    retryMax: 60000,
    storageKey: "cortex"
  };
  var queue = [];          // events waiting, oldest first
  var sending = false;     // a fetch is on its way
  var timer = null;
  var retryDelay = 0;
  var stopped = false;
  var beaconed = {};       // event_id -> true: already in a beacon from this page
  var batchLimit = Infinity; // lowered when the server answered 413 to a batch
  var anonymousId = null;
  var userId = null;
  var started = false;
  var stats = {sent: 0, failed: 0, retried: 0, beacons: 0};

  // storage -------------------------------------------------------------------------
  function storageGet(name) {
    try { return window.localStorage.getItem(settings.storageKey + "." + name); } catch (e) { return null; }
  }
  function storageSet(name, value) {
    try { window.localStorage.setItem(settings.storageKey + "." + name, value); } catch (e) { /* full, or off */ }
  }
  function saveQueue() { storageSet("queue", JSON.stringify(queue.slice(-MAX_STORED))); }
  function loadQueue() {
    try { var saved = JSON.parse(storageGet("queue") || "[]"); return Array.isArray(saved) ? saved : []; }
    catch (e) { return []; }
  }

  // ids -----------------------------------------------------------------------------
  function randomHex(bytes) {
    var data = new Uint8Array(bytes);
    (window.crypto || window.msCrypto).getRandomValues(data);
    var out = "";
    for (var i = 0; i < data.length; i++) out += (data[i] + 256).toString(16).slice(1);
    return out;
  }
  /** A UUIDv7: 48 bits of Unix milliseconds, version 7, then random bits. */
  function uuid7() {
    var time = Date.now().toString(16);
    while (time.length < 12) time = "0" + time;
    var rand = randomHex(10);
    var variant = (8 + (parseInt(rand.charAt(3), 16) & 3)).toString(16);
    return time.slice(0, 8) + "-" + time.slice(8, 12) + "-7" + rand.slice(0, 3) + "-" +
      variant + rand.slice(4, 7) + "-" + rand.slice(7, 19);
  }
  function getAnonymousId() {
    if (!anonymousId) {
      anonymousId = storageGet("anonymous_id");
      if (!anonymousId) {
        anonymousId = "anon-" + uuid7();
        storageSet("anonymous_id", anonymousId);
      }
    }
    return anonymousId;
  }

  // event shape ---------------------------------------------------------------------
  function deviceInfo() {
    var ua = window.navigator.userAgent || "";
    var browser = /Edg\//.test(ua) ? "Edge" : /OPR\//.test(ua) ? "Opera" : /Firefox\//.test(ua) ? "Firefox" :
      /Chrom(e|ium)\//.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : "other";
    var os = /Windows/.test(ua) ? "Windows" : /Android/.test(ua) ? "Android" : /iPhone|iPad|iPod/.test(ua) ? "iOS" :
      /Mac OS X/.test(ua) ? "macOS" : /CrOS/.test(ua) ? "ChromeOS" : /Linux/.test(ua) ? "Linux" : "other";
    var info = {browser: browser, os: os, language: window.navigator.language || ""};
    if (window.screen) info.screen = window.screen.width + "x" + window.screen.height;
    return info;
  }
  function source() {
    if (settings.source) return settings.source;
    var match = /[?&]utm_source=([^&#]*)/.exec(window.location.search);
    if (match) return decodeURIComponent(match[1].replace(/\+/g, " ")).slice(0, 256);
    return document.referrer ? document.referrer.slice(0, 256) : undefined;
  }
  function makeEvent(name, properties) {
    var event = {
      event_type: String(name),
      timestamp: new Date().toISOString(),
      event_id: uuid7(),
      user_id: userId || getAnonymousId(),
      event_properties: properties && typeof properties === "object" ? properties : {},
      device_info: deviceInfo()
    };
    var src = source();
    if (src) event.source = src;
    if (settings.businessId) event.business_id = settings.businessId;
    return event;
  }

  // sending -------------------------------------------------------------------------
  function byteLength(text) { return new Blob([text]).size; }
  function batchUrl(withKey) {
    var url = settings.endpoint.replace(/\/+$/, "") + "/api/v1/interactions/batch?current_time=" +
      encodeURIComponent(new Date().toISOString());
    return withKey ? url + "&api_key=" + encodeURIComponent(settings.apiKey) : url;
  }
  function schedule(delay) {
    if (timer || stopped) return;
    timer = window.setTimeout(function () { timer = null; flush(); }, delay);
  }
  function retryAfter(response) {
    var header = response && response.headers.get("Retry-After");
    var seconds = header ? parseInt(header, 10) : NaN;
    return isNaN(seconds) ? 0 : seconds * 1000;
  }
  function backoff(response) {
    stats.retried++;
    retryDelay = retryDelay ? Math.min(retryDelay * 2, settings.retryMax) : settings.retryInitial;
    var delay = Math.max(retryDelay, Math.min(retryAfter(response), settings.retryMax));
    schedule(delay / 2 + Math.random() * delay / 2);  // jitter: many tabs must not retry in step
  }
  /** Forget the events of `batch` (by event_id: the queue may have changed meanwhile). */
  function forget(batch) {
    var ids = {};
    for (var i = 0; i < batch.length; i++) ids[batch[i].event_id] = true;
    queue = queue.filter(function (event) { return !ids[event.event_id]; });
    saveQueue();
  }

  /** Send the oldest waiting events now (at most batchSize). */
  function flush() {
    if (timer) { window.clearTimeout(timer); timer = null; }
    if (stopped || sending || !queue.length || !settings.apiKey) return;
    var batch = queue.slice(0, Math.min(settings.batchSize, batchLimit));
    var body = JSON.stringify(batch);
    sending = true;
    window.fetch(batchUrl(false), {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-API-Key": settings.apiKey},
      body: body,
      // keepalive lets a batch finish when the page goes away, but browsers refuse it
      // for bodies over 64 KiB
      keepalive: byteLength(body) < BEACON_MAX_BYTES,
      credentials: "omit"
    }).then(function (response) {
      sending = false;
      if (response.status === 413 && batch.length > 1) {
        // too large for the server: send halves (a single event too large is dropped below)
        batchLimit = Math.max(1, Math.floor(batch.length / 2));
        schedule(0);
      } else if (response.status === 200 || response.status === 400 || response.status === 413) {
        if (response.status === 200) stats.sent += batch.length; else stats.failed += batch.length;
        retryDelay = 0;
        forget(batch);
        if (queue.length) schedule(queue.length >= settings.batchSize ? 0 : settings.flushInterval);
      } else if (response.status === 401) {
        stopped = true;
        if (window.console) window.console.error("cortex: the API key was refused; not sending events");
      } else {
        backoff(response);
      }
    }, function () {
      sending = false;
      backoff(null);
    });
  }

  /** Hand every waiting event to sendBeacon (the page is being hidden or left).
   *
   * A beacon's fate is never known, so the events stay in localStorage: the next page of
   * the site sends them again, and Cortex answers "duplicate" for those the beacon
   * delivered (their event_id).  Nothing is lost when the beacon fails, nothing is
   * stored twice when it does not. */
  function beacon() {
    if (stopped || !settings.apiKey || !window.navigator.sendBeacon) return;
    var waiting = queue.filter(function (event) { return !beaconed[event.event_id]; });
    var start = 0;
    while (start < waiting.length) {
      var chunk = [];
      var size = 2;
      for (var i = start; i < waiting.length; i++) {
        var piece = byteLength(JSON.stringify(waiting[i])) + 1;
        if (chunk.length && (size + piece > BEACON_MAX_BYTES || chunk.length >= 500)) break;
        chunk.push(waiting[i]);
        size += piece;
      }
      // text/plain keeps the beacon a simple CORS request; Cortex reads JSON whatever the type
      var blob = new Blob([JSON.stringify(chunk)], {type: "text/plain"});
      if (!window.navigator.sendBeacon(batchUrl(true), blob)) break;
      stats.beacons++;
      for (var j = 0; j < chunk.length; j++) beaconed[chunk[j].event_id] = true;
      start += chunk.length;
    }
    saveQueue();
  }

  // public API ----------------------------------------------------------------------
  function trackEvent(name, properties) {
    if (!name) return null;
    var event = makeEvent(name, properties);
    queue.push(event);
    if (queue.length > MAX_STORED) queue.splice(0, queue.length - MAX_STORED);
    saveQueue();
    if (!sending && queue.length >= settings.batchSize && !retryDelay) flush();
    else schedule(settings.flushInterval);
    return event.event_id;
  }

  function init(options) {
    for (var name in options) {
      if (Object.prototype.hasOwnProperty.call(options, name) && options[name] != null) settings[name] = options[name];
    }
    settings.batchSize = Math.max(1, Math.min(500, Number(settings.batchSize) || 20));
    settings.flushInterval = Number(settings.flushInterval) || 0;
    if (!started) {
      started = true;
      queue = loadQueue().concat(queue);
      document.addEventListener("visibilitychange", function () {
        if (document.visibilityState === "hidden") beacon();
      });
      window.addEventListener("pagehide", beacon);
    }
    if (queue.length) schedule(0);
  }

  function identify(id) { userId = id ? String(id) : null; }

  // configuration from the script tag: data-api-key, data-endpoint (default: where the
  // script came from), data-business-id, data-batch-size, data-flush-interval
  var script = document.currentScript;
  var api = {
    version: VERSION,
    init: init,
    trackEvent: trackEvent,
    identify: identify,
    flush: flush,
    anonymousId: getAnonymousId,
    pending: function () { return queue.length; },
    stats: function () { return {sent: stats.sent, failed: stats.failed, retried: stats.retried, beacons: stats.beacons}; }
  };
  window.cortex = api;
  if (script && script.getAttribute("data-api-key")) {
    var data = script.dataset;
    init({
      apiKey: data.apiKey,
      endpoint: data.endpoint || script.src.replace(/\/sdk\/cortex\.js.*$/, ""),
      businessId: data.businessId,
      batchSize: data.batchSize,
      flushInterval: data.flushInterval
    });
  }
  // calls made before the snippet loaded: window.cortexQueue = [[name, properties], ...]
  var early = window.cortexQueue;
  window.cortexQueue = {push: function (call) { trackEvent(call[0], call[1]); }};
  if (typeof window.trackEvent !== "function") window.trackEvent = trackEvent;
  if (early && early.length) for (var j = 0; j < early.length; j++) trackEvent(early[j][0], early[j][1]);
})(window);
