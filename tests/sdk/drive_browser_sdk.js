#!/usr/bin/env node
// Drives the real, unmodified Data Cortex browser SDK (npm `browser-data-cortex`)
// inside a jsdom page against a Cortex server, and prints a JSON summary.
//
// usage: node drive_browser_sdk.js <base_url> <org> <api_key>
//        [--page-url URL] [--timeout-ms N] [--offline-first]
//
// Default scenario: one page load on a new device; init() queues install and
// dau, then the driver adds one `event` (full taxonomy + float1..4) and one
// economy event (4.99 USD). --offline-first: that same page load happens while
// the network is down (a local socket that drops every connection), the tab is
// closed with the four events still queued in localStorage, and a second page
// load of the same origin (same localStorage) calls init() against base_url;
// the SDK then sends the persisted events with their original event_index and
// event_datetime and nothing new.
//
// The SDK ships as a raw ES module (`import _ from 'lodash'`, `export default`)
// that uses the page's globals (window, navigator, localStorage, XMLHttpRequest).
// It is evaluated, byte for byte as published, as a vm.SourceTextModule inside
// jsdom's own global context, so it runs in the page realm with jsdom's
// XMLHttpRequest (which enforces CORS) and localStorage. Its one import,
// lodash 3 (the SDK's declared dependency), is run as a classic script in the
// same page and handed to the SDK as the module's default export.
//
// The page is served from a different origin than base_url (default
// http://localhost:5173/), so every call is a real cross-origin XHR: a missing
// Access-Control-Allow-Origin on Cortex's answer makes the XHR fail and the
// SDK retry forever, which this driver reports as a timeout (exit 2).
//
// The driver only observes the SDK: it wraps XMLHttpRequest.prototype.open/send
// in the page to record each request and its status; it never changes what is
// sent or how the SDK reacts.
//
// stdout: one JSON object
//   {"sent": {type: count}, "responses": [status...], "requests": [...],
//    "device_tag": ..., "user_tag": ..., "events": [...], ...}
// exit 0: the SDK's persisted queue (localStorage dc.event_list) drained;
// exit 2: timeout; exit 1: usage / setup error.
'use strict';

const fs = require('fs');
const path = require('path');
const vm = require('vm');
const net = require('net');
const { spawnSync } = require('child_process');

// vm.SourceTextModule needs --experimental-vm-modules; re-exec once with it.
if (typeof vm.SourceTextModule !== 'function') {
  if (process.env.__DC_DRIVER_REEXEC) {
    console.error('vm.SourceTextModule unavailable even with --experimental-vm-modules');
    process.exit(1);
  }
  const r = spawnSync(process.execPath,
    ['--experimental-vm-modules', '--no-warnings', __filename, ...process.argv.slice(2)],
    { stdio: 'inherit', env: { ...process.env, __DC_DRIVER_REEXEC: '1' } });
  process.exit(r.status === null ? 1 : r.status);
}

const { JSDOM, VirtualConsole, ResourceLoader } = require('jsdom');

function usage(msg) {
  if (msg) console.error(msg);
  console.error('usage: node drive_browser_sdk.js <base_url> <org> <api_key> '
    + '[--page-url URL] [--timeout-ms N] [--offline-first]');
  process.exit(1);
}

function parseArgs(argv) {
  const pos = [];
  const opts = {
    pageUrl: process.env.DC_SDK_PAGE_URL || 'http://localhost:5173/',
    timeoutMs: Number(process.env.DC_SDK_TIMEOUT_MS || 30000),
    offlineFirst: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--page-url') opts.pageUrl = argv[++i];
    else if (a === '--timeout-ms') opts.timeoutMs = Number(argv[++i]);
    else if (a === '--offline-first') opts.offlineFirst = true;
    else if (a.startsWith('--')) usage('unknown option ' + a);
    else pos.push(a);
  }
  if (pos.length !== 3) usage();
  [opts.baseUrl, opts.org, opts.apiKey] = pos;
  opts.baseUrl = opts.baseUrl.replace(/\/+$/, '');
  if (!/^https?:\/\//.test(opts.baseUrl)) usage('base_url must be http(s)://...');
  if (!(opts.timeoutMs > 0)) usage('bad --timeout-ms');
  return opts;
}

// A desktop Chrome on macOS, so the SDK's user-agent sniffing fills
// os/os_ver/browser/browser_ver/device_type with real values.
const USER_AGENT = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) '
  + 'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36';

// A page load: a fresh jsdom window (optionally with localStorage carried
// over from an earlier load of the same origin) with the SDK module loaded.
async function openPage(opts, storageSeed) {
  const sdkPath = require.resolve('browser-data-cortex');
  const lodashPath = require.resolve('lodash', { paths: [path.dirname(sdkPath)] });

  const page = { sdkErrors: [] };
  const virtualConsole = new VirtualConsole();
  virtualConsole.on('error', (...a) => {
    page.sdkErrors.push(a.map(String).join(' '));
    console.error('[page console.error]', ...a);
  });
  virtualConsole.on('warn', (...a) => console.error('[page console.warn]', ...a));
  virtualConsole.on('log', (...a) => console.error('[page console.log]', ...a));
  virtualConsole.on('jsdomError', (e) => console.error('[jsdom]', e && (e.message || e)));

  const dom = new JSDOM('<!DOCTYPE html><html><head><title>cortex sdk test</title></head><body></body></html>', {
    url: opts.pageUrl,
    runScripts: 'outside-only',
    pretendToBeVisual: true,
    virtualConsole,
    resources: new ResourceLoader({ userAgent: USER_AGENT }),
  });
  const window = dom.window;
  const ctx = dom.getInternalVMContext();
  page.window = window;
  for (const [k, v] of Object.entries(storageSeed || {})) window.localStorage.setItem(k, v);

  // observation only: record every XHR the page makes and its final status
  window.eval(`(function () {
    var P = XMLHttpRequest.prototype, open = P.open, send = P.send;
    window.__dcRequests = [];
    window.__dcInFlight = 0;
    P.open = function (method, url) {
      this.__dcReq = { method: method, url: String(url), body: null, status: null };
      return open.apply(this, arguments);
    };
    P.send = function (body) {
      var rec = this.__dcReq, xhr = this;
      if (rec) {
        rec.body = body == null ? null : String(body);
        window.__dcRequests.push(rec);
        window.__dcInFlight++;
        xhr.addEventListener('loadend', function () {
          rec.status = xhr.status;
          window.__dcInFlight--;
        });
      }
      return send.apply(this, arguments);
    };
  })();`);

  // lodash 3 (the SDK's own dependency) as a classic script in the page
  vm.runInContext(fs.readFileSync(lodashPath, 'utf8'), ctx, { filename: lodashPath });
  if (typeof window._ !== 'function') throw new Error('lodash did not load into the page');

  // the SDK, unmodified, as an ES module evaluated in the page realm
  const lodashModule = new vm.SyntheticModule(['default'], function () {
    this.setExport('default', window._);
  }, { context: ctx, identifier: 'lodash' });
  const sdkModule = new vm.SourceTextModule(fs.readFileSync(sdkPath, 'utf8'), {
    context: ctx,
    identifier: 'file://' + sdkPath,
  });
  await sdkModule.link((specifier) => {
    if (specifier === 'lodash') return lodashModule;
    throw new Error('SDK imports unexpected module ' + specifier);
  });
  await sdkModule.evaluate();
  page.sdk = sdkModule.namespace.default;

  page.queueLen = () => {
    try { return JSON.parse(window.localStorage.getItem('dc.event_list') || '[]').length; } catch (e) { return -1; }
  };
  page.requests = () => window.__dcRequests.map((r) => {
    let bundle = null;
    try { bundle = JSON.parse(r.body); } catch (e) { /* keep null */ }
    return { method: r.method, url: r.url, status: r.status, bundle };
  });
  page.storage = () => {
    const out = {};
    for (let i = 0; i < window.localStorage.length; i++) {
      const k = window.localStorage.key(i);
      out[k] = window.localStorage.getItem(k);
    }
    return out;
  };
  page.close = () => window.close(); // also clears the SDK's 12 h DAU interval
  return page;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Wait until cond() or deadline; true if cond() held.
async function waitFor(cond, deadline) {
  for (;;) {
    if (cond()) return true;
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
}

// A TCP server that accepts and immediately drops every connection, so the
// SDK's XHRs fail with a network error ("offline").
function startBlackhole() {
  return new Promise((resolve) => {
    const srv = net.createServer((sock) => sock.destroy());
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}

function queueEvents(sdk) {
  sdk.addUserTag(424242); // numeric on purpose; the SDK stringifies it
  sdk.event({
    kingdom: 'sdk_test',
    phylum: 'browser',
    class: 'level',
    order: 'complete',
    family: 'world1',
    genus: 'stage3',
    species: 'boss',
    float1: 1.5,
    float2: -2.25,
    float3: 3,
    float4: 0.125,
  });
  sdk.economyEvent({
    spend_amount: 4.99,
    spend_currency: 'USD',
    spend_type: 'iap',
    kingdom: 'store',
    phylum: 'gems',
    class: 'pack',
    order: 'small',
  });
  // browser-data-cortex exposes no message_send / message_click / experiment
  // call: its whole public API is init, isReady, addUserTag, event, economyEvent.
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const sdkPath = require.resolve('browser-data-cortex');
  const sdkVersion = JSON.parse(fs.readFileSync(
    path.join(path.dirname(sdkPath), 'package.json'), 'utf8')).version;
  const start = Date.now();
  const deadline = start + opts.timeoutMs;
  const initOpts = (baseUrl) => ({
    api_key: opts.apiKey,
    org_name: opts.org,
    app_ver: '1.2.3',
    base_url: baseUrl,
  });

  let offline = null;
  let storageSeed = null;
  if (opts.offlineFirst) {
    // First page load while "offline": the SDK queues install/dau/event/
    // economy in localStorage, its sends fail; the tab is then closed.
    const hole = await startBlackhole();
    const holeUrl = `http://127.0.0.1:${hole.address().port}`;
    const p1 = await openPage(opts, null);
    p1.sdk.init(initOpts(holeUrl));
    queueEvents(p1.sdk);
    await waitFor(() => p1.requests().some((r) => r.status !== null), deadline);
    const reqs = p1.requests();
    storageSeed = p1.storage();
    offline = { base_url: holeUrl, responses: reqs.map((r) => r.status),
      queued: p1.queueLen(), sdk_errors: p1.sdkErrors };
    p1.close();
    hole.close();
    if (!reqs.length || offline.queued !== 4) {
      throw new Error('offline phase did not leave 4 queued events: ' + JSON.stringify(offline));
    }
  }

  // The (next) page load, online: init() against Cortex. On a fresh device it
  // queues `install` (no dc.device_tag yet) and `dau` (none in the last 24 h);
  // after an offline load it just resends what localStorage kept.
  const page = await openPage(opts, storageSeed);
  page.sdk.init(initOpts(opts.baseUrl));
  if (!opts.offlineFirst) queueEvents(page.sdk);
  const api = Object.keys(page.sdk).sort();

  // Done when the SDK's persisted queue is empty and no XHR is in flight.
  const drained = await waitFor(() => page.window.__dcRequests.length > 0
    && page.queueLen() === 0 && page.window.__dcInFlight === 0, deadline);

  const requests = page.requests();
  const seen = new Map(); // event_index -> event as transmitted
  for (const r of requests) {
    for (const e of (r.bundle && r.bundle.events) || []) seen.set(e.event_index, e);
  }
  const events = [...seen.values()].sort((a, b) => a.event_index - b.event_index);
  const sent = {};
  for (const e of events) sent[e.type] = (sent[e.type] || 0) + 1;
  const first = requests.find((r) => r.bundle) || { bundle: {} };
  const summary = {
    sent,
    responses: requests.map((r) => r.status),
    sdk: { name: 'browser-data-cortex', version: sdkVersion, api },
    page_url: opts.pageUrl,
    cross_origin: new URL(opts.pageUrl).origin !== new URL(opts.baseUrl).origin,
    device_tag: first.bundle.device_tag || null,
    user_tag: first.bundle.user_tag || null,
    queue_left: page.queueLen(),
    elapsed_ms: Date.now() - start,
    sdk_errors: page.sdkErrors,
    offline_phase: offline,
    events,
    requests,
  };
  if (!drained) summary.error = `timeout after ${opts.timeoutMs} ms: SDK queue not drained`;
  process.stdout.write(JSON.stringify(summary) + '\n');
  page.close();
  process.exit(drained ? 0 : 2);
}

main().catch((e) => {
  console.error(e && e.stack || e);
  process.exit(1);
});
