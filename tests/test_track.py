"""The Data Cortex ingest endpoints through HTTP: every event type and every error path."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from conftest import iso

NOW = iso()

EVENTS = {
    "install": {"type": "install", "event_datetime": NOW, "kingdom": "organic", "online_status": "online-wifi"},
    "dau": {"type": "dau", "event_datetime": NOW},
    "event": {"type": "event", "event_datetime": NOW, "kingdom": "k", "phylum": "p", "class": "c",
              "order": "o", "family": "f", "genus": "g", "species": "s", "float1": 1.5, "float4": -2},
    "economy": {"type": "economy", "event_datetime": NOW, "spend_amount": 4.99, "spend_currency": "USD",
                "spend_type": "iap"},
    "link": {"type": "link", "event_datetime": NOW, "user_tag": "u-1", "facebook_tag": "fb-1"},
    "message_send": {"type": "message_send", "event_datetime": NOW, "network": "email", "channel": "invite",
                     "from_tag": "u-1", "to_list": ["u-2", "u-3"]},
    "message_click": {"type": "message_click", "event_datetime": NOW, "network": "sms", "from_tag": "u-1",
                      "to_tag": "u-2"},
    "experiment": {"type": "experiment", "event_datetime": NOW, "experiment_name": "onboarding",
                   "variant_name": "b"},
}

TABLE_OF = {"install": "events", "dau": "events", "event": "events", "economy": "economy", "link": "links",
            "message_send": "messages", "message_click": "messages", "experiment": "experiments"}


def test_success_is_exactly_200_text_plain_ok(cortex):
    response = cortex.post(cortex.bundle([EVENTS["install"]]))
    assert response.status_code == 200
    assert response.data == b"OK"
    assert response.headers["Content-Type"] == "text/plain"


@pytest.mark.parametrize("event_type", sorted(EVENTS))
def test_every_event_type_lands_in_its_table(cortex, event_type):
    event = EVENTS[event_type]
    assert cortex.post(cortex.bundle([event], group_tag="session-1")).status_code == 200
    cortex.deliver()
    table = TABLE_OF[event_type]
    rows = cortex.sql(f"SELECT device_tag, app_ver, org, app, group_tag FROM {table}")
    assert rows == [("device-1", "1.0", "demo", "default", "session-1")]
    if table in ("events", "messages"):
        assert cortex.sql(f"SELECT type FROM {table}") == [(event_type,)]


def test_fields_are_stored_typed(cortex):
    bundle = cortex.bundle([EVENTS["event"], EVENTS["economy"], EVENTS["message_send"]], user_tag=12345)
    assert cortex.post(bundle).status_code == 200
    cortex.deliver()
    assert cortex.sql('SELECT kingdom, "class", "order", species, float1, float4 FROM events') == [
        ("k", "c", "o", "s", 1.5, -2.0)
    ]
    assert cortex.sql("SELECT spend_amount, spend_currency, user_tag FROM economy") == [(4.99, "USD", "12345")]
    (to_list,) = cortex.sql("SELECT to_list FROM messages")[0]
    assert orjson.loads(to_list) == ["u-2", "u-3"]


def test_app_log_lines_with_and_without_events_list(cortex):
    lines = [{"event_datetime": NOW, "log_line": "x" * 70000, "log_level": "error", "hostname": "web-1",
              "filename": "app.js", "remote_address": "10.0.0.1", "response_bytes": "512", "response_ms": 12.5}]
    assert cortex.post(cortex.bundle(lines), endpoint="app_log").status_code == 200
    single = {"api_key": cortex.api_key, "device_tag": "d", "log_line": "boot", "log_level": "info"}
    assert cortex.post(single, endpoint="app_log", current_time=None).status_code == 200
    cortex.deliver()
    rows = cortex.sql("SELECT length(log_line), log_level, response_bytes, response_ms FROM app_logs ORDER BY log_level")
    assert rows == [(65535, "error", 512, 12.5), (4, "info", None, None)]


def test_a_bad_event_never_costs_its_good_neighbours(cortex):
    events = [EVENTS["install"], {"type": "economy", "event_datetime": NOW, "spend_amount": "lots"},
              {"type": "teleport", "event_datetime": NOW}, EVENTS["dau"]]
    response = cortex.post(cortex.bundle(events))
    assert response.status_code == 200
    cortex.deliver()
    assert sorted(cortex.sql("SELECT type FROM events")) == [("dau",), ("install",)]
    errors = cortex.sql("SELECT payload, reasons FROM ingest_errors")
    reasons = [orjson.loads(r[1]) for r in errors]
    assert len(errors) == 2
    assert {"spend_amount", "spend_currency"} <= set(reasons[0]) or {"spend_amount", "spend_currency"} <= set(reasons[1])
    assert any("Unknown event type 'teleport'" in msg for r in reasons for msg in r.get("type", []))
    log = cortex.state.queue.ingest_errors("demo")
    assert [row["record"]["position"] for row in log] == [1, 2]


def test_bundle_with_no_valid_event_is_400_and_logged(cortex):
    response = cortex.post(cortex.bundle([{"type": "dau"}, {"type": "nope", "event_datetime": NOW}]))
    assert response.status_code == 400
    text = response.data.decode()
    assert "event 0: event_datetime: Missing data for required field." in text
    assert "event 1: type: Unknown event type 'nope'" in text
    assert len(cortex.state.queue.ingest_errors("demo")) == 2


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"events": []}', "no api_key"),
        (b'{"api_key": "k", "events": {}}', "events must be a list"),
        (b'{"api_key": "k", "events": []}', "at least one event"),
        (orjson.dumps({"api_key": "k", "events": [{}] * 101}), "at most 100 events"),
        (b'{"api_key": "k"}', "events must be a list"),
    ],
)
def test_bundle_level_defects_are_400(cortex, body, message):
    response = cortex.post(body)
    assert response.status_code == 400
    assert message in response.data.decode()
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_bundle_fields_invalid_or_device_tag_missing_is_400(cortex):
    response = cortex.post(cortex.bundle([EVENTS["dau"]], device_tag={"x": 1}))
    assert response.status_code == 400 and "device_tag: Not a valid string." in response.data.decode()
    bundle = cortex.bundle([EVENTS["dau"]])
    del bundle["device_tag"]
    response = cortex.post(bundle)
    assert response.status_code == 400 and "device_tag" in response.data.decode()
    assert len(cortex.state.queue.ingest_errors("demo")) == 2


def test_unknown_revoked_and_foreign_keys_are_403(cortex):
    control = cortex.state.control
    assert cortex.post({**cortex.bundle([EVENTS["dau"]]), "api_key": "nope"}).status_code == 403
    control.create_org("other")
    control.create_app("other", "game")
    other_key, record = control.create_key("other", "game")
    response = cortex.post({**cortex.bundle([EVENTS["dau"]]), "api_key": other_key})
    assert response.status_code == 403, "a key of another org must not write into this one"
    assert cortex.post({**cortex.bundle([EVENTS["dau"]]), "api_key": other_key}, org="other").status_code == 200
    control.revoke_key(str(record["id"]))
    cortex.state.keys.clear()
    assert cortex.post({**cortex.bundle([EVENTS["dau"]]), "api_key": other_key}, org="other").status_code == 403


def test_several_keys_per_app(cortex):
    second, _ = cortex.state.control.create_key("demo", "default", label="second")
    assert cortex.post({**cortex.bundle([EVENTS["dau"]]), "api_key": second}).status_code == 200
    assert cortex.post(cortex.bundle([EVENTS["install"]])).status_code == 200


def test_retried_bundle_stores_nothing_twice(cortex):
    events = [dict(EVENTS["event"], event_index=i) for i in range(5)] + [EVENTS["dau"], EVENTS["dau"]]
    bundle = cortex.bundle(events)
    for attempt in range(3):
        # each retry carries a fresh current_time, as the SDKs do
        current = iso(datetime.now(timezone.utc) + timedelta(seconds=attempt))
        assert cortex.post(bundle, current_time=current).status_code == 200
    cortex.deliver()
    # two identical dau events in one bundle are two events; retries add none
    assert cortex.sql("SELECT count(*) FROM events") == [(7,)]
    counts = cortex.state.queue.counters()["demo"]
    assert counts["accepted"] == 7 and counts["duplicate"] == 14


def test_one_event_index_sent_twice_in_a_bundle_is_one_event(cortex):
    # an SDK that numbers two events alike sent one event twice: the second is a duplicate,
    # and the counters agree with what the sink stores
    events = [dict(EVENTS["event"], event_index=7), dict(EVENTS["event"], event_index=7)]
    events += [dict(EVENTS["event"], event_index=i) for i in range(10, 30)]  # a commit past 16 keys
    events.append(dict(EVENTS["event"], event_index=12))
    assert cortex.post(cortex.bundle(events)).status_code == 200
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events") == [(21,)]
    counts = cortex.state.queue.counters()["demo"]
    assert counts["accepted"] == 21 and counts["duplicate"] == 2
    assert cortex.state.queue.sink_status(["sql"])["sql"]["delivered"] == 21


def test_retry_after_partial_failure_only_adds_what_is_new(cortex):
    first = [dict(EVENTS["event"], event_index=i) for i in range(3)]
    assert cortex.post(cortex.bundle(first)).status_code == 200
    second = first + [dict(EVENTS["event"], event_index=3)]
    assert cortex.post(cortex.bundle(second)).status_code == 200
    cortex.deliver()
    assert cortex.sql("SELECT event_index FROM events ORDER BY event_index") == [(0,), (1,), (2,), (3,)]


def test_lossless_coercion_is_applied_and_recorded(cortex):
    events = [
        {"type": "economy", "event_datetime": "2024-03-01T10:42Z", "spend_amount": "100", "spend_currency": "EUR",
         "kingdom": "k" * 40, "event_index": "7"},
        {"type": "experiment", "event_datetime": "2024-03-01T10:42:00Z", "experiment_name": "e", "variant_name": False},
    ]
    bundle = cortex.bundle(events, user_tag=987654, app_ver="2024.03.01-build-1234", device_family="phone",
                           marketplace="appstore", unknown_field="kept")
    assert cortex.post(bundle).status_code == 200
    records = {r["type"]: r for r in cortex.records()}
    economy = records["economy"]
    assert economy["spend_amount"] == 100.0 and economy["event_index"] == 7
    assert economy["kingdom"] == "k" * 32 and economy["user_tag"] == "987654"
    assert economy["app_ver"] == "2024.03.01-build"
    assert economy["extra"] == {"unknown_field": "kept"}
    warnings = " | ".join(economy["warnings"])
    for expected in ("kingdom: truncated from 40 to 32", "user_tag: number converted", "app_ver: truncated",
                     "spend_amount: string '100' read as the number", "event_index: string '7'"):
        assert expected in warnings
    assert records["experiment"]["variant_name"] == ""
    cortex.deliver()
    assert cortex.sql("SELECT device_family, marketplace FROM economy") == [("phone", "appstore")]


def test_clock_skew_is_corrected_and_the_client_time_kept(cortex):
    client_now = datetime.now(timezone.utc) - timedelta(hours=3)
    event_at = client_now - timedelta(minutes=10)
    bundle = cortex.bundle([dict(EVENTS["dau"], event_datetime=iso(event_at))])
    assert cortex.post(bundle, current_time=iso(client_now)).status_code == 200
    (record,) = cortex.records()
    corrected = datetime.fromisoformat(record["event_time"])
    expected = datetime.now(timezone.utc) - timedelta(minutes=10)
    assert abs((corrected - expected).total_seconds()) < 5
    assert record["event_datetime"] == iso(event_at)
    assert 3 * 3600 - 5 < record["clock_skew_seconds"] < 3 * 3600 + 5


def test_small_skew_is_left_alone_and_far_future_is_clamped(cortex):
    future = iso(datetime.now(timezone.utc) + timedelta(days=30))
    bundle = cortex.bundle([EVENTS["install"], dict(EVENTS["dau"], event_datetime=future)])
    assert cortex.post(bundle).status_code == 200
    install, dau = sorted(cortex.records(), key=lambda r: r["type"], reverse=True)
    assert install["event_time"] == install["event_datetime"] and "clock_skew_seconds" not in install
    assert dau["event_time"] == dau["received_at"] and dau["event_datetime"] == future
    assert any("clamped" in w for w in dau["warnings"])



def test_a_correction_beyond_the_calendar_keeps_the_time_as_sent(cortex):
    # a client clock in year 9999 puts events of year 1 before year 1 once corrected: they
    # are kept as sent, with a warning each (this was an answer 500)
    ancient = "0001-01-01T00:00:00.000Z"
    bundle = cortex.bundle([dict(EVENTS["dau"], event_datetime=ancient),
                            dict(EVENTS["dau"], event_datetime=ancient, event_index=2)])
    assert cortex.post(bundle, current_time="9999-12-31T23:59:59Z").status_code == 200
    records = cortex.records()
    assert len(records) == 2
    for record in records:
        assert record["event_time"] == record["event_datetime"] == ancient
        assert any("clock correction" in w and "kept as sent" in w for w in record["warnings"])
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events WHERE event_time < '0002-01-01'") == [(2,)]

@pytest.mark.parametrize(
    "current_time",
    ["2024-01-01T00%3A00%3A00.000Z", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00+00:00",
     "2024-01-01T00:00:00%2B00:00", "2024-01-01T00:00"],
)
def test_current_time_raw_or_percent_encoded(cortex, current_time):
    event = dict(EVENTS["dau"], event_datetime="2023-12-31T23:59:00Z")
    assert cortex.post(cortex.bundle([event]), current_time=current_time).status_code == 200
    (record,) = cortex.records()
    assert record["clock_skew_seconds"] > 0
    assert not any("current_time" in w for w in record.get("warnings", []))


def test_bad_current_time_is_a_warning_not_a_rejection(cortex):
    assert cortex.post(cortex.bundle([EVENTS["dau"]]), current_time="yesterday").status_code == 200
    (record,) = cortex.records()
    assert any("current_time" in w for w in record["warnings"])


def test_body_is_json_whatever_the_content_type(cortex):
    for content_type in ("text/plain", "application/json", "application/x-www-form-urlencoded", ""):
        bundle = cortex.bundle([dict(EVENTS["event"], event_index=len(content_type))])
        assert cortex.post(bundle, content_type=content_type).status_code == 200


def test_cors_preflight_and_headers_on_every_answer(cortex):
    preflight = cortex.client.options("/demo/1/track", headers={
        "Origin": "https://game.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code in (200, 204)
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type"
    for response in (cortex.post(cortex.bundle([EVENTS["dau"]])), cortex.post(b"{"),
                     cortex.post({**cortex.bundle([EVENTS["dau"]]), "api_key": "bad"}),
                     cortex.client.get("/demo/1/track"), cortex.client.options("/demo/1/app_log")):
        assert response.headers["Access-Control-Allow-Origin"] == "*", response.status_code


def test_body_over_the_limit_is_413(make_cortex):
    small = make_cortex(ingest={"max_body_bytes": 2048})
    response = small.post(small.bundle([dict(EVENTS["dau"], kingdom="x" * 4000)]))
    assert response.status_code == 413


def test_strict_mode_refuses_the_whole_bundle_and_logs_every_event(cortex):
    cortex.state.control.set_app_strict("demo", "default", True)
    cortex.state.keys.clear()
    events = [EVENTS["install"], {"type": "economy", "event_datetime": NOW}]
    response = cortex.post(cortex.bundle(events))
    assert response.status_code == 400 and "strict mode" in response.data.decode()
    log = cortex.state.queue.ingest_errors("demo")
    assert len(log) == 2
    assert "_bundle" in log[0]["record"]["reasons"] and "spend_amount" in log[1]["record"]["reasons"]
    assert not [r for r in cortex.records() if r["kind"] != "rejected"]


def test_records_carry_ids_stable_across_retries(cortex):
    bundle = cortex.bundle([EVENTS["install"]])
    cortex.post(bundle)
    (first,) = cortex.records()
    assert len(first["id"]) == 32
    int(first["id"], 16)


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{\"api_key\": 1}", b'{"api_key": "k", "events": [NaN]}', b"[" * 5000 + b"]" * 5000,
     b'{"api_key": "k", "events": [1e999]}'],
    ids=["not-utf8", "nan", "deep-nesting", "infinity"],
)
def test_hostile_bodies_get_a_clear_400(cortex, body):
    response = cortex.post(body)
    assert response.status_code == 400
    assert "not valid JSON" in response.data.decode()


def test_events_that_are_not_objects_are_rejected_one_by_one(cortex):
    response = cortex.post(cortex.bundle([EVENTS["dau"], "tap", 3, None]))
    assert response.status_code == 200
    log = cortex.state.queue.ingest_errors("demo")
    assert [row["record"]["position"] for row in log] == [1, 2, 3]
    assert all(row["record"]["reasons"] == {"_event": ["Each event must be a JSON object."]} for row in log)
