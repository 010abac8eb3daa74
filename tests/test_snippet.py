"""The browser tracking snippet (``/sdk/cortex.js``) in headless Chromium against a running
Cortex: batching, the persistent anonymous id, sendBeacon on page hide, retry with backoff.

The test page is served by an HTTP server of its own (another origin than Cortex, so every
call is a real cross-origin request).  The snippet posts through a small forwarding proxy
that records each request and can answer 503 to the first ones; everything else is
answered by Cortex under gunicorn, and the events are checked in the SQL sink.

Needs Chromium at ``/usr/bin/chromium`` (or ``$CORTEX_TEST_CHROMIUM``) and the ``playwright``
package (no browser download: the system Chromium is used).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import need_service

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CORTEX_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright."""
    if not Path(CHROMIUM).exists():
        need_service(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need_service("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Recorded:
    """What the proxy saw: one entry per POST."""

    def __init__(self):
        self.posts: list[dict] = []
        self.fail_next = 0
        #: bodies larger than this are answered 413, as a reverse proxy's body limit would
        self.max_body: int | None = None
        self.lock = threading.Lock()


def start_proxy(target: str, recorded: Recorded) -> tuple[ThreadingHTTPServer, str]:
    """A forwarding HTTP proxy to ``target`` that records POSTs and fails the first
    ``recorded.fail_next`` of them with 503 + Retry-After: 1."""
    target_host = urlsplit(target)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _forward(self, body: bytes | None, entry: dict | None = None):
            conn = http.client.HTTPConnection(target_host.hostname, target_host.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            if entry is not None:  # recorded before the client can see the answer
                entry["status"] = answer.status
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        def do_OPTIONS(self):
            self._forward(None)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            entry = {"at": time.monotonic(), "path": self.path, "content_type": self.headers.get("Content-Type"),
                     "x_api_key": self.headers.get("X-API-Key"), "events": json.loads(body)}
            with recorded.lock:
                recorded.posts.append(entry)
                fail = recorded.fail_next > 0
                recorded.fail_next -= fail
            if recorded.max_body is not None and len(body) > recorded.max_body:
                entry["status"] = 413
                self.send_response(413)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fail:
                entry["status"] = 503
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Expose-Headers", "Retry-After")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._forward(body, entry)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def wait_for_answers(recorded: Recorded, count: int, timeout: float = 15.0) -> None:
    """Block until the proxy has answered at least ``count`` POSTs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with recorded.lock:
            if len(recorded.posts) >= count and all("status" in p for p in recorded.posts):
                return
        time.sleep(0.05)
    raise TimeoutError(f"the proxy answered {len(recorded.posts)} POSTs, not {count}")


def start_page_server(pages: dict[str, str]) -> tuple[ThreadingHTTPServer, str]:
    """Serves ``pages`` (path -> HTML) from an origin of its own."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            html = pages.get(self.path.split("?")[0])
            if html is None:
                self.send_error(404)
                return
            data = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def setup(cortex_server):
    """(cortex server, proxy recording, page server base URL, pages dict to fill)."""
    recorded = Recorded()
    proxy, proxy_url = start_proxy(cortex_server.url, recorded)
    pages: dict[str, str] = {}
    page_server, page_url = start_page_server(pages)
    try:
        yield cortex_server, recorded, proxy_url, page_url, pages
    finally:
        proxy.shutdown()
        page_server.shutdown()


def page_html(server, proxy_url: str, body: str, **data: str) -> str:
    attributes = " ".join(f'data-{k.replace("_", "-")}="{v}"' for k, v in data.items())
    return (f"<!doctype html><html><head><title>shop</title>"
            f'<script>window.cortexQueue = [["page_view", {{"path": location.pathname}}]];</script>'
            f'<script src="{server.url}/sdk/cortex.js" data-api-key="{server.api_key}" '
            f'data-endpoint="{proxy_url}" {attributes}></script>'
            f"</head><body><button id='buy'>Buy</button>{body}</body></html>")


def interactions(server) -> list[dict]:
    server.wait_for_delivery()
    rows = server.sql_rows("SELECT event_type, event_id, user_id, event_properties, device_info, source "
                           "FROM interactions ORDER BY event_time")
    return [{"event_type": r[0], "event_id": r[1], "user_id": r[2], "event_properties": json.loads(r[3] or "null"),
             "device_info": json.loads(r[4] or "null"), "source": r[5]} for r in rows]


def test_events_are_batched_sent_and_stored_with_a_persistent_anonymous_id(browser, setup):
    server, recorded, proxy_url, page_url, pages = setup
    pages["/shop"] = page_html(server, proxy_url, """
        <script>
          document.getElementById("buy").addEventListener("click", function () {
            trackEvent("click", {button_id: "buy"});
            trackEvent("purchase", {amount: 49.99, currency: "USD"});
          });
        </script>""", flush_interval="2000", batch_size="3")
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{page_url}/shop?utm_source=newsletter")
    page.click("#buy")
    page.wait_for_function("cortex.pending() === 0 && cortex.stats().sent === 3", timeout=15_000)
    anonymous_id = page.evaluate("cortex.anonymousId()")
    assert anonymous_id.startswith("anon-")
    # one batch for the three events, the key in the header
    assert len(recorded.posts) == 1
    post = recorded.posts[0]
    assert [e["event_type"] for e in post["events"]] == ["page_view", "click", "purchase"]
    assert post["x_api_key"] == server.api_key and "api_key=" not in post["path"]

    page.reload()
    page.wait_for_function("cortex.pending() === 0 && cortex.stats().sent === 1", timeout=15_000)
    assert page.evaluate("cortex.anonymousId()") == anonymous_id
    context.close()

    stored = interactions(server)
    assert [e["event_type"] for e in stored] == ["page_view", "click", "purchase", "page_view"]
    assert {e["user_id"] for e in stored} == {anonymous_id}
    assert stored[2]["event_properties"] == {"amount": 49.99, "currency": "USD"}
    assert stored[0]["event_properties"] == {"path": "/shop"}
    assert stored[0]["device_info"]["browser"] == "Chrome" and stored[0]["device_info"]["os"] == "Linux"
    assert stored[0]["source"] == "newsletter"
    sent_ids = [e["event_id"] for p in recorded.posts for e in p["events"]]
    assert [e["event_id"] for e in stored] == sent_ids


def test_waiting_events_go_out_by_beacon_when_the_page_is_left(browser, setup):
    server, recorded, proxy_url, page_url, pages = setup
    pages["/article"] = page_html(server, proxy_url, "", flush_interval="600000", batch_size="100")
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{page_url}/article")
    page.evaluate("trackEvent('scroll_depth', {percent: 75}); trackEvent('feedback', {rating: 5})")
    assert page.evaluate("cortex.pending()") == 3
    assert recorded.posts == []
    page.goto("about:blank")  # pagehide: the snippet hands its queue to sendBeacon
    wait_for_answers(recorded, 1)
    assert len(recorded.posts) == 1
    beacon = recorded.posts[0]
    assert beacon["status"] == 200
    assert f"api_key={server.api_key}" in beacon["path"]  # sendBeacon cannot set headers
    assert beacon["content_type"].startswith("text/plain")  # a simple CORS request
    assert [e["event_type"] for e in interactions(server)] == ["page_view", "scroll_depth", "feedback"]

    # a beacon's fate is unknown, so the next page sends the events again: Cortex
    # recognises them by event_id and stores nothing twice
    page.goto(f"{page_url}/article")
    page.wait_for_function("cortex.pending() === 0", timeout=15_000)
    context.close()
    resent = {e["event_id"] for p in recorded.posts[1:] for e in p["events"]}
    assert {e["event_id"] for e in beacon["events"]} <= resent
    assert [e["event_type"] for e in interactions(server)] == ["page_view", "scroll_depth", "feedback", "page_view"]


def test_a_failing_server_is_retried_with_backoff_and_nothing_is_stored_twice(browser, setup):
    server, recorded, proxy_url, page_url, pages = setup
    recorded.fail_next = 2
    # the second event fills the batch: both always travel together
    pages["/retry"] = page_html(server, proxy_url, "", flush_interval="600000", batch_size="2")
    page = browser.new_page()
    page.goto(f"{page_url}/retry")
    page.evaluate("trackEvent('form_submit', {form: 'signup'})")
    page.wait_for_function("cortex.pending() === 0", timeout=30_000)
    assert page.evaluate("cortex.stats().retried") == 2
    page.close()
    assert [p["status"] for p in recorded.posts] == [503, 503, 200]
    # the same events each time, with the same ids
    assert len({json.dumps(p["events"], sort_keys=True) for p in recorded.posts}) == 1
    gaps = [b["at"] - a["at"] for a, b in zip(recorded.posts, recorded.posts[1:])]
    assert all(gap >= 0.45 for gap in gaps), gaps  # Retry-After: 1, with up to 50% jitter
    assert [e["event_type"] for e in interactions(server)] == ["page_view", "form_submit"]


def test_a_batch_larger_than_a_keepalive_request_is_sent_too(browser, setup):
    server, recorded, proxy_url, page_url, pages = setup
    pages["/big"] = page_html(server, proxy_url, "", flush_interval="200", batch_size="100")
    page = browser.new_page()
    page.goto(f"{page_url}/big")
    # about 90 KB in one batch: browsers refuse keepalive fetches over 64 KiB
    page.evaluate("for (var i = 0; i < 40; i++) trackEvent('review', {text: 'é'.repeat(1000), n: i})")
    page.wait_for_function("cortex.pending() === 0", timeout=15_000)
    page.close()
    # the page view may go out on its own first when the page is slow to load
    assert {p["status"] for p in recorded.posts} == {200}
    assert max(len(p["events"]) for p in recorded.posts) >= 40
    assert len(interactions(server)) == 41


def test_a_batch_too_large_for_the_server_is_sent_in_halves(browser, setup):
    server, recorded, proxy_url, page_url, pages = setup
    recorded.max_body = 30_000
    pages["/halves"] = page_html(server, proxy_url, "", flush_interval="200", batch_size="100")
    page = browser.new_page()
    page.goto(f"{page_url}/halves")
    page.evaluate("for (var i = 0; i < 40; i++) trackEvent('review', {text: 'x'.repeat(2000), n: i})")
    page.wait_for_function("cortex.pending() === 0", timeout=15_000)
    page.close()
    sizes = [(len(p["events"]), p["status"]) for p in recorded.posts]
    assert 413 in {status for _, status in sizes}, sizes
    for (count, status), (next_count, _) in zip(sizes, sizes[1:]):
        if status == 413:
            assert next_count == count // 2, sizes
    assert sizes[-1][1] == 200
    assert len(interactions(server)) == 41


def test_events_wait_in_local_storage_while_cortex_is_unreachable(browser, setup):
    server, recorded, proxy_url, page_url, pages = setup
    pages["/offline"] = page_html(server, "http://127.0.0.1:9", "", flush_interval="100")
    pages["/online"] = page_html(server, proxy_url, "", flush_interval="100")
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{page_url}/offline")
    page.evaluate("trackEvent('click', {button_id: 'x'})")
    page.wait_for_function("cortex.stats().retried >= 1", timeout=15_000)
    assert page.evaluate("cortex.pending()") == 2
    page.goto(f"{page_url}/online")  # same origin: the stored queue is sent from here
    page.wait_for_function("cortex.pending() === 0", timeout=15_000)
    context.close()
    assert sorted(e["event_type"] for e in interactions(server)) == ["click", "page_view", "page_view"]


def test_the_snippet_is_served_at_a_stable_url_with_caching(cortex):
    response = cortex.client.get("/sdk/cortex.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/javascript")
    assert b"trackEvent" in response.data and b"sendBeacon" in response.data
    etag = response.headers["ETag"]
    again = cortex.client.get("/sdk/cortex.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
