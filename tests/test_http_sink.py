"""The ``http`` sink against a real local HTTP server that fails, stalls and recovers."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cortex.sinks import PermanentError, SinkContext
from cortex.testing import SinkConformance, make_record, sample_records
from cortex_http import register_sinks
from cortex_http.retry import backoff_delay, parse_retry_after
from cortex_http.sink import HttpSink, RetryableHTTPError
from conftest import iso


class Receiver:
    """A threaded HTTP server that stores POSTed JSON arrays per path and follows a script.

    ``script`` is a list of actions taken by the next requests, one each, before the
    receiver goes back to accepting: ``("status", code, headers, body)`` answers with that
    status without storing; ``("stall", seconds)`` waits, then drops the connection
    without storing; ``("refuse_type", type)`` (a standing rule, not consumed) answers 422
    to any request holding a record of that event type.
    """

    def __init__(self):
        self.stored: dict[str, list[dict]] = defaultdict(list)
        self.acknowledged: Counter[str] = Counter()
        self.requests: list[dict] = []
        self.script: list[tuple] = []
        self.refused_types: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                receiver.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length", 0))
        raw = request.rfile.read(length)
        body = gzip.decompress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw
        records = json.loads(body)
        with self.lock:
            action = self.script.pop(0) if self.script else ("accept",)
            self.requests.append({"at": time.monotonic(), "path": request.path, "action": action[0],
                                  "headers": dict(request.headers), "ids": [r["id"] for r in records]})
        if action[0] == "stall":
            time.sleep(action[1])
            request.close_connection = True
            return
        if action[0] == "status":
            _, code, headers, text = action
            self.answer(request, code, text, headers)
            return
        refused = [r["type"] for r in records if r.get("type") in self.refused_types]
        if refused:
            self.answer(request, 422, f"event type {refused[0]} is not accepted here", {})
            return
        with self.lock:
            self.stored[request.path].extend(records)
        self.answer(request, 200, '{"ok": true}', {})
        with self.lock:
            # counted once the answer went out: the sender saw this acknowledgement
            self.acknowledged.update(r["id"] for r in records)

    @staticmethod
    def answer(request, code: int, text: str, headers: dict) -> None:
        data = text.encode()
        request.send_response(code)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def records(self, path: str) -> list[dict]:
        with self.lock:
            return list(self.stored[path])

    def all_records(self) -> list[dict]:
        with self.lock:
            return [r for records in self.stored.values() for r in records]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    """One receiver for the module; tests use their own paths."""
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def fresh_receiver():
    """A receiver of this test alone (its script and counters start empty)."""
    server = Receiver()
    yield server
    server.stop()


def make_http_sink(url: str, tmp_path, **options) -> HttpSink:
    """An http sink (not opened) with quick retries for tests."""
    settings = {"url": url, "retry_initial": 0.05, "retry_max": 2.0, "timeout": 2.0, **options}
    return HttpSink("forward", settings, SinkContext(data_dir=tmp_path))


class TestHttpSinkConformance(SinkConformance):
    """The shared sink conformance suite, run on the http sink against a real receiver."""

    @pytest.fixture(autouse=True)
    def _receiver(self, receiver):
        self.receiver = receiver

    def make_sink(self, tmp_path):
        """An http sink posting to a path of its own (same tmp_path, same path)."""
        return make_http_sink(f"{self.receiver.url}/{tmp_path.name}", tmp_path)

    def stored_records(self, sink):
        """What the receiver stored under the sink's path."""
        return self.receiver.records("/" + sink.url.rsplit("/", 1)[1])


def test_registers_through_the_hook():
    """register_sinks registers HttpSink, type name ``http``, at least once."""
    registered = []
    register_sinks(registered.append)
    assert registered == [HttpSink]
    assert HttpSink.type_name == "http" and not HttpSink.idempotent


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://x"}, "url must be an http:// or https:// URL"),
        ({"url": None}, "url must be an http:// or https:// URL"),
        ({"timeout": 0}, "timeout must be a number of at least"),
        ({"concurrency": 0}, "concurrency must be an integer of at least 1"),
        ({"concurrency": 1.5}, "concurrency must be an integer"),
        ({"gzip": "yes"}, "gzip must be true or false"),
        ({"headers": "x"}, "headers must be a table"),
        ({"retries": 3}, "unknown option(s) retries"),
    ],
)
def test_invalid_options_are_refused(tmp_path, options, message):
    """Bad options fail when the sink is made, naming the sink and the option."""
    with pytest.raises(ValueError) as error:
        HttpSink("forward", {"url": "http://127.0.0.1:9/x", **options}, SinkContext(data_dir=tmp_path))
    assert message in str(error.value) and "forward" in str(error.value)


def test_retry_after_parsing():
    """Retry-After as seconds or as an HTTP date; garbage is ignored."""
    from datetime import datetime, timezone

    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("Sat, 01 Jun 2024 12:00:07 GMT", now=now) == 7.0
    assert parse_retry_after("Sat, 01 Jun 2024 11:00:00 GMT", now=now) == 0.0
    for attempt in range(8):
        delay = backoff_delay(attempt, 0.5, 10.0)
        assert min(10.0, 0.5 * 2 ** attempt) / 2 <= delay <= min(10.0, 0.5 * 2 ** attempt)
    assert backoff_delay(0, 0.5, 10.0, retry_after=4.0) >= 4.0
    assert backoff_delay(0, 0.5, 10.0, retry_after=400.0) == 10.0


def test_5xx_and_429_are_retried_honouring_retry_after(fresh_receiver, tmp_path):
    """503 and 429 answers are retried; a Retry-After of 1s is waited for; then delivered once."""
    fresh_receiver.script = [
        ("status", 503, {"Retry-After": "1"}, "down for maintenance"),
        ("status", 429, {}, "slow down"),
        ("status", 500, {}, "oops"),
    ]
    sink = make_http_sink(f"{fresh_receiver.url}/r", tmp_path)
    records = sample_records()
    sink.open()
    try:
        sink.write(records)
    finally:
        sink.close()
    attempts = fresh_receiver.requests
    assert [a["action"] for a in attempts] == ["status", "status", "status", "accept"]
    assert attempts[1]["at"] - attempts[0]["at"] >= 0.95, "Retry-After: 1 was not honoured"
    assert len({a["headers"]["Idempotency-Key"] for a in attempts}) == 1
    assert sorted(r["id"] for r in fresh_receiver.records("/r")) == sorted(r["id"] for r in records)


def test_out_of_attempts_raises_a_retryable_error(fresh_receiver, tmp_path):
    """After max_attempts failed tries the write raises (not PermanentError) and stores nothing."""
    fresh_receiver.script = [("status", 502, {}, "bad gateway")] * 3
    sink = make_http_sink(f"{fresh_receiver.url}/r", tmp_path, max_attempts=3)
    sink.open()
    try:
        with pytest.raises(RetryableHTTPError, match="502"):
            sink.write(sample_records())
    finally:
        sink.close()
    assert fresh_receiver.records("/r") == []


def test_a_stalled_request_times_out_and_is_retried(fresh_receiver, tmp_path):
    """A receiver that stalls past the timeout costs a retry, not the batch."""
    fresh_receiver.script = [("stall", 1.5)]
    sink = make_http_sink(f"{fresh_receiver.url}/r", tmp_path, timeout=0.5)
    records = sample_records()
    sink.open()
    try:
        sink.write(records)
    finally:
        sink.close()
    assert [a["action"] for a in fresh_receiver.requests] == ["stall", "accept"]
    assert len(fresh_receiver.records("/r")) == len(records)


def test_4xx_is_permanent_with_the_answer(fresh_receiver, tmp_path):
    """A 4xx other than 429 raises PermanentError carrying the status and the answer's text."""
    fresh_receiver.script = [("status", 400, {}, "field spend_amount: not a number")]
    sink = make_http_sink(f"{fresh_receiver.url}/r", tmp_path)
    sink.open()
    try:
        with pytest.raises(PermanentError) as error:
            sink.write([make_record()])
    finally:
        sink.close()
    assert "400" in str(error.value) and "spend_amount: not a number" in str(error.value)
    assert len(fresh_receiver.requests) == 1


def test_acknowledged_requests_are_not_sent_again(fresh_receiver, tmp_path):
    """When one request of a write fails for good, a repeated write sends only the rest."""
    records = [make_record("track", "dau") for _ in range(30)]
    fresh_receiver.script = [("accept",), ("status", 503, {}, "busy"), ("accept",)]
    sink = make_http_sink(f"{fresh_receiver.url}/r", tmp_path, max_records=10, concurrency=1, max_attempts=1)
    sink.open()
    try:
        with pytest.raises(RetryableHTTPError):
            sink.write(records)
        sink.write(records)
    finally:
        sink.close()
    assert set(fresh_receiver.acknowledged) == {r["id"] for r in records}
    assert max(fresh_receiver.acknowledged.values()) == 1


def test_gzip_auth_secret_and_headers(fresh_receiver, tmp_path, monkeypatch):
    """Bodies are gzipped; the auth header comes from a secret reference and is never described."""
    from cortex.config import load_config

    monkeypatch.setenv("FORWARD_TOKEN", "Bearer s3cret")
    config = load_config(
        environ={"FORWARD_TOKEN": "Bearer s3cret"},
        overrides={"data_dir": str(tmp_path), "sinks": {"forward": {
            "type": "http", "url": f"{fresh_receiver.url}/z", "gzip": True,
            "auth": {"env": "FORWARD_TOKEN"}, "headers": {"X-Source": "cortex"}}}},
    )
    options = {k: v for k, v in config["sinks"]["forward"].items() if k != "type"}
    sink = HttpSink("forward", options, SinkContext(data_dir=tmp_path))
    assert "s3cret" not in json.dumps(sink.describe()) and "s3cret" not in repr(config)
    records = sample_records()
    sink.open()
    try:
        sink.write(records)
    finally:
        sink.close()
    headers = fresh_receiver.requests[0]["headers"]
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Source"] == "cortex"
    assert headers["Content-Type"] == "application/json"
    assert len(fresh_receiver.records("/z")) == len(records)


def test_concurrency_and_rate_limit_bound_the_requests(fresh_receiver, tmp_path):
    """No more requests start in a second than the rate limit (plus its burst) allows."""
    records = [make_record("track", "dau") for _ in range(60)]
    sink = make_http_sink(f"{fresh_receiver.url}/r", tmp_path, max_records=2, concurrency=3, rate_limit=10)
    sink.open()
    try:
        sink.write(records)
    finally:
        sink.close()
    starts = [r["at"] for r in fresh_receiver.requests]
    assert len(starts) == 30
    first = starts[0]
    assert sum(1 for s in starts if s - first < 1.0) <= 10 + 10 + 1
    assert starts[-1] - first >= 1.5, "30 requests at 10/s (burst 10) need about 2s"


def _cortex_with_http(make_cortex, url: str, **options):
    return make_cortex(
        sinks={"forward": {"type": "http", "url": url, "retry_initial": 0.05, "retry_max": 1.0,
                           "timeout": 1.0, "max_records": 7, "concurrency": 3, "max_attempts": 2, **options}},
        dispatcher={"retry_initial": 0.05, "retry_max": 0.5, "batch_size": 40},
    )


def _post_events(cortex, bundles: int, per_bundle: int, event_type: str = "event") -> None:
    for bundle in range(bundles):
        # event_index unique per device: two bundles of one device posted within the same
        # millisecond would otherwise be retries of each other
        events = [{"type": event_type, "event_datetime": iso(), "event_index": bundle * per_bundle + index,
                   "kingdom": f"b{bundle}"} for index in range(per_bundle)]
        response = cortex.post(cortex.bundle(events, device_tag=f"device-{bundle % 5}"))
        assert response.status_code == 200, response.data


def test_through_the_dispatcher_a_failing_stalling_receiver_loses_nothing(fresh_receiver, make_cortex):
    """Failures, stalls and recovery mid-stream: every event arrives, none acknowledged twice."""
    fresh_receiver.script = [
        ("accept",), ("status", 503, {"Retry-After": "0"}, "busy"), ("stall", 1.5),
        ("status", 500, {}, "crash"), ("status", 502, {}, "bad gateway"), ("stall", 1.5),
        ("accept",), ("status", 429, {"Retry-After": "0"}, "slow"), ("status", 503, {}, "busy"),
        ("status", 503, {}, "busy"), ("status", 503, {}, "busy"), ("status", 503, {}, "busy"),
    ]
    cortex = _cortex_with_http(make_cortex, f"{fresh_receiver.url}/all")
    _post_events(cortex, bundles=20, per_bundle=6)
    accepted = {r["id"] for r in cortex.records() if r["kind"] == "track"}
    assert len(accepted) == 120
    cortex.deliver()
    stored_ids = [r["id"] for r in fresh_receiver.records("/all")]
    assert set(stored_ids) == accepted
    assert max(fresh_receiver.acknowledged.values()) == 1, "an acknowledged record was sent again"
    assert cortex.state.queue.dead_letters() == []
    assert not fresh_receiver.script, "the script was not used up: the failures were not met"


def test_through_the_dispatcher_refused_records_are_dead_lettered_with_the_answer(fresh_receiver, make_cortex):
    """A 422 for some records dead-letters exactly those, with the answer; the rest arrive once."""
    fresh_receiver.refused_types = {"install"}
    cortex = _cortex_with_http(make_cortex, f"{fresh_receiver.url}/mixed")
    _post_events(cortex, bundles=6, per_bundle=5)
    _post_events(cortex, bundles=1, per_bundle=1, event_type="install")
    cortex.deliver()
    letters = cortex.state.queue.dead_letters("forward")
    assert [letter["record"]["type"] for letter in letters] == ["install"]
    assert "422" in letters[0]["error"] and "event type install is not accepted here" in letters[0]["error"]
    stored = fresh_receiver.records("/mixed")
    assert len(stored) == 30 and all(r["type"] == "event" for r in stored)
    assert max(fresh_receiver.acknowledged.values()) == 1


def test_unknown_type_names_the_extra():
    """Without the plugin's library installed, configuring type = "http" names the extra."""
    from cortex.plugins import Registry, missing_type_error

    for type_name in ("http", "kafka"):
        error = missing_type_error("sinks", "out", type_name, Registry())
        assert f"pip install 'cortex[{type_name}]'" in str(error)
