"""The ingest lane answers the Data Cortex POSTs exactly as the Flask views behind it would."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from werkzeug.test import Client

from conftest import iso, make_plugin
from cortex import hookimpl
from cortex.ingest.lane import IngestLane
from cortex.logs import JsonFormatter

DIFFERING_HEADERS = {"X-Request-Id"}
DIFFERING_LOG_FIELDS = {"request_id", "duration_ms"}


def _cases(cortex, device: str) -> list[tuple[str, dict]]:
    """(name, request) pairs covering every kind of answer; ``device`` keeps them apart."""
    now = iso()
    dau = {"type": "dau", "event_datetime": now}
    good = cortex.bundle([dau, {"type": "event", "event_datetime": now, "kingdom": "k"}], device_tag=device)
    return [
        ("ok", {"data": orjson.dumps(good)}),
        ("retry", {"data": orjson.dumps(good)}),
        ("partial", {"data": orjson.dumps(cortex.bundle([dau, {"type": "nonsense"}], device_tag=device + "p"))}),
        ("none valid", {"data": orjson.dumps(cortex.bundle([{"type": "event", "event_datetime": "x"}],
                                                           device_tag=device))}),
        ("app_log", {"endpoint": "app_log",
                     "data": orjson.dumps({**cortex.bundle([], device_tag=device), "events": None,
                                           "log_message": "hello", "event_datetime": now})}),
        ("not json", {"data": b"{not json"}),
        ("empty", {"data": b""}),
        ("no events", {"data": orjson.dumps(cortex.bundle([], device_tag=device))}),
        ("unknown key", {"data": orjson.dumps({**good, "api_key": "nope"})}),
        ("other org", {"org": "d%C3%A9mo", "data": orjson.dumps(good)}),
        ("chunked", {"data": orjson.dumps(cortex.bundle([dau], device_tag=device + "c")),
                     "headers": {"Transfer-Encoding": "chunked"}}),
        ("headers", {"data": orjson.dumps(cortex.bundle([dau], device_tag=device + "h")),
                     "headers": {"Access-Control-Request-Headers": "X-Custom", "User-Agent": "sdk/1",
                                 "X-Request-Id": "client-id-1"}}),
    ]


def _send(client: Client, cortex, request: dict):
    url = f"/{request.get('org', cortex.org)}/1/{request.get('endpoint', 'track')}?current_time={iso()}"
    return client.post(url, data=request["data"], content_type="text/plain", headers=request.get("headers", {}),
                       environ_base={"REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "tests"})


def _headers(response) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in response.headers.items() if k not in DIFFERING_HEADERS)


def _log_fields(caplog) -> list[dict]:
    lines = [orjson.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "cortex.request"]
    caplog.clear()
    return [{k: v for k, v in line.items() if k not in DIFFERING_LOG_FIELDS and k != "time"} for line in lines]


def test_the_lane_answers_and_logs_as_the_flask_views_do(make_cortex, caplog):
    caplog.set_level(logging.INFO, logger="cortex.request")
    cortex = make_cortex(ingest={"max_body_bytes": 4096})
    lane = cortex.app.wsgi_app
    assert isinstance(lane, IngestLane)
    through_flask = Client(lane.next)
    big = {"data": orjson.dumps(cortex.bundle([{"type": "dau", "event_datetime": iso()}] * 100))}
    for (name, request), (_, twin) in zip(_cases(cortex, "lane") + [("too large", big)],
                                          _cases(cortex, "flsk") + [("too large", big)]):
        by_lane = _send(cortex.client, cortex, request)
        lane_log = _log_fields(caplog)
        by_flask = _send(through_flask, cortex, twin)
        flask_log = _log_fields(caplog)
        assert (by_lane.status, by_lane.data) == (by_flask.status, by_flask.data), name
        assert _headers(by_lane) == _headers(by_flask), name
        assert by_lane.headers["X-Request-Id"] and by_flask.headers["X-Request-Id"], name
        assert lane_log == flask_log and len(lane_log) == 1, name
    assert by_lane.status_code == 413


def test_what_each_way_stored_is_the_same(cortex):
    lane = cortex.app.wsgi_app
    through_flask = Client(lane.next)
    for client, device in ((cortex.client, "lane"), (through_flask, "flsk")):
        for _, request in _cases(cortex, device):
            _send(client, cortex, request)
    by_device = {}
    for record in cortex.records():
        if record.get("kind") == "rejected":
            device = record["bundle"].get("device_tag", "")
        else:
            device = record.get("device_tag", "")
        side = "lane" if device.startswith("lane") else "flsk"
        by_device.setdefault(side, []).append(
            (record["kind"], record.get("type"), record.get("request_id") is not None,
             record.get("context", {}).get("user_agent")))
    assert sorted(by_device["lane"], key=repr) == sorted(by_device["flsk"], key=repr)
    assert len(by_device["lane"]) >= 6
    rejected = [r for r in cortex.records() if r.get("kind") == "rejected"]
    assert rejected and all(r["request_id"] for r in rejected)


def test_the_client_clock_is_read_from_an_encoded_query(cortex):
    client_now = datetime.now(timezone.utc) - timedelta(hours=2)
    encoded = iso(client_now).replace(":", "%3A")
    bundle = cortex.bundle([{"type": "dau", "event_datetime": iso(client_now)}])
    assert cortex.post(bundle, current_time=encoded).status_code == 200
    [record] = [r for r in cortex.records() if r.get("type") == "dau"]
    assert record["clock_skew_seconds"] == pytest.approx(7200, abs=30)


def test_preflights_other_methods_and_trailing_slashes_go_on_to_flask(cortex):
    preflight = cortex.client.options("/demo/1/track", headers={
        "Origin": "https://game.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    wrong_method = cortex.client.get("/demo/1/track")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Access-Control-Allow-Origin"] == "*"
    assert wrong_method.headers["X-Request-Id"]
    slash = cortex.client.post("/demo/1/track/", data=b"{}")
    assert slash.status_code == 404 and slash.data.startswith(b"404 Not Found")
    assert slash.headers["Access-Control-Allow-Origin"] == "*"


def test_a_failure_in_the_lane_is_a_plain_500_with_cors(cortex, monkeypatch, caplog):
    def broken(submission):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cortex.state.queue, "submit", broken)
    bundle = cortex.bundle([{"type": "dau", "event_datetime": iso()}])
    with caplog.at_level(logging.ERROR, logger="cortex"):
        answer = cortex.post(bundle)
    assert answer.status_code == 500
    assert answer.data.startswith(b"500 Internal Server Error: Cortex failed on this request")
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert answer.headers["X-Request-Id"]
    assert any("Exception on /demo/1/track [POST]" in r.getMessage() and r.exc_info for r in caplog.records)
    # as with Flask, in testing mode the exception reaches the caller
    cortex.app.testing = True
    with pytest.raises(RuntimeError, match="disk on fire"):
        cortex.post(bundle)


def test_the_lane_steps_aside_for_a_plugin_s_request_hooks(make_cortex):
    def startup(app):
        @app.before_request
        def teapot():
            from flask import request

            if request.headers.get("X-Teapot"):
                return "short and stout", 418

    cortex = make_cortex(plugins=[make_plugin("teapot_plugin", startup=hookimpl(startup))])
    bundle = cortex.bundle([{"type": "dau", "event_datetime": iso()}])
    refused = cortex.post(bundle, headers={"X-Teapot": "1"})
    assert refused.status_code == 418 and refused.data == b"short and stout"
    assert cortex.app.wsgi_app.serving is False
    accepted = cortex.post(bundle)
    assert (accepted.status_code, accepted.data) == (200, b"OK")
    assert accepted.headers["Access-Control-Allow-Origin"] == "*"


def test_without_plugin_hooks_the_lane_serves(cortex):
    assert cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()}])).status_code == 200
    assert cortex.app.wsgi_app.serving is True
