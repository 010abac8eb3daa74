"""The generic interactions API through HTTP: fates, dedupe by event_id, auth, business_id,
limits, and the shared path (queue, enrichers, sinks) with Data Cortex events."""

from __future__ import annotations

import uuid

import orjson
import pytest

from conftest import iso, make_plugin
from cortex import Enricher, hookimpl

SEED_EVENT = {
    "event_type": "purchase",
    "timestamp": "2024-06-01T13:45:30Z",
    "user_id": "anon-xyz123",
    "product_id": "prod-12345",
    "event_properties": {"amount": 49.99, "currency": "USD", "payment_method": "credit_card"},
    "source": "email_campaign_2024",
    "device_info": {"browser": "Chrome", "os": "Windows"},
}


def post(cortex, body, path="/api/v1/interactions", key="own", headers=None, **kwargs):
    """POST JSON to the generic API with the app's key in X-API-Key (unless told otherwise)."""
    headers = dict(headers or {})
    if key == "own":
        headers["X-API-Key"] = cortex.api_key
    elif key is not None:
        headers["X-API-Key"] = key
    data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    return cortex.client.post(path, data=data, headers=headers, content_type="application/json", **kwargs)


def batch(cortex, events, **kwargs):
    return post(cortex, events, "/api/v1/interactions/batch", **kwargs)


def test_the_seed_event_is_accepted_and_lands_in_the_interactions_table(cortex):
    response = post(cortex, {**SEED_EVENT, "event_id": "evt-1"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json == {"accepted": 1, "duplicate": 0, "rejected": 0,
                             "events": [{"index": 0, "event_id": "evt-1", "status": "accepted"}]}
    cortex.deliver()
    rows = cortex.sql(
        "SELECT org, app, event_type, event_id, user_id, business_id, product_id, source, "
        "event_properties, device_info, timestamp, event_datetime FROM interactions"
    )
    assert len(rows) == 1
    (org, app, event_type, event_id, user_id, business_id, product_id, source, props, device, ts, sent) = rows[0]
    assert (org, app, event_type, event_id, user_id, product_id, source) == (
        "demo", "default", "purchase", "evt-1", "anon-xyz123", "prod-12345", "email_campaign_2024")
    assert business_id == "default"  # absent: the key's own app
    assert orjson.loads(props) == SEED_EVENT["event_properties"]
    assert orjson.loads(device) == {"browser": "Chrome", "os": "Windows"}
    assert ts.startswith("2024-06-01 13:45:30") and sent.startswith("2024-06-01 13:45:30")


def test_the_server_makes_a_uuid7_event_id_when_absent_and_returns_it(cortex):
    response = post(cortex, {"event_type": "page_view"})
    assert response.status_code == 200
    event_id = response.json["events"][0]["event_id"]
    assert uuid.UUID(event_id).version == 7
    cortex.deliver()
    assert cortex.sql("SELECT event_id FROM interactions") == [(event_id,)]
    # with no timestamp the event is dated when received
    assert cortex.sql("SELECT timestamp IS NOT NULL FROM interactions") == [(1,)]


def test_a_batch_answers_every_events_fate_and_the_counts(cortex):
    events = [
        {"event_type": "click", "event_id": "a", "event_properties": {"button_id": "buy"}},
        {"event_type": "click", "event_id": "a"},                      # same id in the batch
        {"event_type": "2fast", "user_id": "", "timestamp": "yesterday"},  # three bad fields
        "not an object",
        {"event_type": "signup.completed", "event_id": "b"},         # a custom type
    ]
    response = batch(cortex, events)
    assert response.status_code == 200
    body = response.json
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 1, 2)
    fates = body["events"]
    assert [f["status"] for f in fates] == ["accepted", "duplicate", "rejected", "rejected", "accepted"]
    assert [f["index"] for f in fates] == [0, 1, 2, 3, 4]
    assert set(fates[2]["errors"]) == {"event_type", "user_id", "timestamp"}
    assert "pattern" in fates[2]["errors"]["event_type"][0]
    assert fates[3]["errors"] == {"_event": ["Each event must be a JSON object."]}
    cortex.deliver()
    assert sorted(cortex.sql("SELECT event_id, event_type FROM interactions")) == [
        ("a", "click"), ("b", "signup.completed")]
    errors = cortex.sql("SELECT endpoint, reasons FROM ingest_errors ORDER BY endpoint")
    assert len(errors) == 2 and {e[0] for e in errors} == {"interactions"}


def test_a_retried_batch_is_idempotent_by_event_id(cortex):
    events = [{**SEED_EVENT, "event_id": f"evt-{i}"} for i in range(5)] + [{"event_type": "bad type"}]
    first = batch(cortex, events)
    assert (first.json["accepted"], first.json["duplicate"], first.json["rejected"]) == (5, 0, 1)
    second = batch(cortex, events)
    assert second.status_code == 200
    assert (second.json["accepted"], second.json["duplicate"], second.json["rejected"]) == (0, 5, 1)
    assert [f["status"] for f in second.json["events"][:5]] == ["duplicate"] * 5
    # the same event_id with other content is still the same event
    third = post(cortex, {"event_type": "click", "event_id": "evt-0", "timestamp": iso()})
    assert third.json["events"][0]["status"] == "duplicate"
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM interactions") == [(5,)]
    assert cortex.sql("SELECT count(*) FROM ingest_errors") == [(1,)]
    status = cortex.state.queue.counters()["demo"]
    assert status["accepted"] == 5 and status["duplicate"] >= 7


def test_event_ids_are_scoped_to_the_org(cortex):
    cortex.state.control.create_org("other")
    cortex.state.control.create_app("other", "shop")
    other_key, _ = cortex.state.control.create_key("other", "shop")
    assert post(cortex, {"event_type": "click", "event_id": "shared-id"}).json["accepted"] == 1
    assert post(cortex, {"event_type": "click", "event_id": "shared-id"}, key=other_key).json["accepted"] == 1
    cortex.deliver()
    assert sorted(cortex.sql("SELECT org FROM interactions")) == [("demo",), ("other",)]


@pytest.mark.parametrize("how", ["bearer", "x-api-key", "query"])
def test_the_key_comes_in_a_header_or_the_beacon_query(cortex, how):
    path = "/api/v1/interactions"
    headers = {}
    if how == "bearer":
        headers["Authorization"] = f"Bearer {cortex.api_key}"
    elif how == "x-api-key":
        headers["X-API-Key"] = cortex.api_key
    else:
        path += f"?api_key={cortex.api_key}"
    response = post(cortex, {"event_type": "click"}, path=path, key=None, headers=headers)
    assert response.status_code == 200, response.json


def test_missing_unknown_and_revoked_keys_are_401(cortex):
    missing = post(cortex, {"event_type": "click"}, key=None)
    assert missing.status_code == 401
    assert "Bearer" in missing.headers["WWW-Authenticate"]
    assert "Authorization" in missing.json["error"]
    assert post(cortex, {"event_type": "click"}, key="nope").status_code == 401
    key, record = cortex.state.control.create_key("demo", "default")
    cortex.state.control.revoke_key(str(record["id"]))
    assert post(cortex, {"event_type": "click"}, key=key).status_code == 401
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM interactions") == [(0,)]


def test_business_id_names_an_app_of_the_keys_org(cortex):
    control = cortex.state.control
    control.create_app("demo", "biz-98765")
    control.create_org("rival")
    control.create_app("rival", "rival-shop")
    events = [
        {"event_type": "purchase", "business_id": "biz-98765"},
        {"event_type": "purchase", "business_id": "rival-shop"},  # an app of another org
        {"event_type": "purchase", "business_id": "no-such-app"},
    ]
    body = batch(cortex, events).json
    assert [f["status"] for f in body["events"]] == ["accepted", "rejected", "rejected"]
    assert "No app named 'rival-shop' in org 'demo'" in body["events"][1]["errors"]["business_id"][0]
    cortex.deliver()
    assert cortex.sql("SELECT org, app, business_id FROM interactions") == [("demo", "biz-98765", "biz-98765")]


def test_event_properties_limits(cortex):
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}
    many = {f"k{i}": i for i in range(101)}
    big = {"text": "x" * 17_000}
    ok = {"a": {"b": {"c": {"d": [1, 2]}}}, "n": None, "t": True}
    events = [{"event_type": "click", "event_properties": p} for p in (deep, many, big, ok, [1, 2])]
    fates = batch(cortex, events).json["events"]
    assert [f["status"] for f in fates] == ["rejected", "rejected", "rejected", "accepted", "rejected"]
    assert "deeper than 5" in fates[0]["errors"]["event_properties"][0]
    assert "More than 100 keys" in fates[1]["errors"]["event_properties"][0]
    assert "Larger than 16384 bytes" in fates[2]["errors"]["event_properties"][0]
    assert fates[4]["errors"]["event_properties"] == ["Not a valid JSON object."]


def test_control_characters_are_removed_from_stored_strings_with_a_warning(cortex):
    response = post(cortex, {"event_type": "click", "source": "mail\x00\x1b",
                             "event_properties": {"note\x07": "a\x00b"}})
    fate = response.json["events"][0]
    assert fate["status"] == "accepted"
    assert any("control characters" in w for w in fate["warnings"])
    cortex.deliver()
    source, props = cortex.sql("SELECT source, event_properties FROM interactions")[0]
    assert source == "mail" and orjson.loads(props) == {"note": "ab"}


def test_request_level_errors_are_400_with_a_json_reason(cortex):
    cases = [
        (post, b"{not json"),
        (post, [{"event_type": "click"}]),          # an array to the single endpoint
        (batch, {"event_type": "click"}),           # an object to the batch endpoint
        (batch, []),
        (batch, [{"event_type": "click"}] * 501),
    ]
    for send, body in cases:
        response = send(cortex, body)
        assert response.status_code == 400, body
        assert response.json["status"] == 400 and response.json["error"]


def test_a_request_whose_every_event_is_rejected_is_400_with_the_fates(cortex):
    response = batch(cortex, [{"event_type": "x y"}, {"user_id": "u"}])
    assert response.status_code == 400
    assert response.json["rejected"] == 2
    assert response.json["events"][1]["errors"] == {"event_type": ["Missing data for required field."]}


def test_strict_mode_refuses_the_whole_batch(cortex):
    cortex.state.control.set_app_strict("demo", "default", True)
    cortex.state.keys.clear()
    response = batch(cortex, [{"event_type": "click"}, {"event_type": "x y"}])
    assert response.status_code == 400
    assert response.json["events"][0]["errors"]["_batch"]
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM interactions") == [(0,)]
    assert cortex.sql("SELECT count(*) FROM ingest_errors") == [(2,)]


def test_the_key_is_never_stored_with_the_event(cortex):
    post(cortex, {"event_type": "click", "api_key": cortex.api_key})
    cortex.deliver()
    assert cortex.api_key not in str(cortex.sql("SELECT * FROM interactions"))


def test_cors_preflight_and_headers(cortex):
    preflight = cortex.client.options("/api/v1/interactions/batch", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-API-Key" in preflight.headers["Access-Control-Allow-Headers"]
    answer = post(cortex, {"event_type": "click"})
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "RateLimit-Remaining" in answer.headers["Access-Control-Expose-Headers"]


class TagEnricher(Enricher):
    type_name = "tag"

    def enrich(self, records):
        for record in records:
            record.setdefault("extra", {})["enriched_by"] = self.name


def _enrichers(register):
    register(TagEnricher)


def test_generic_and_data_cortex_events_share_the_queue_enrichers_and_sinks(make_cortex):
    plugin = make_plugin("tagger", register_enrichers=hookimpl(_enrichers))
    cortex = make_cortex(plugins=[plugin], enrichers={"tagger": {"type": "tag"}})
    assert post(cortex, {"event_type": "click", "event_id": "one"}).status_code == 200
    assert cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()}])).status_code == 200
    kinds = sorted(r["kind"] for r in cortex.records())
    assert kinds == ["interaction", "track"]
    cortex.deliver()
    (extra,) = cortex.sql("SELECT extra FROM interactions")[0]
    assert orjson.loads(extra) == {"enriched_by": "tagger"}
    (extra,) = cortex.sql("SELECT extra FROM events")[0]
    assert orjson.loads(extra)["enriched_by"] == "tagger"


def test_replay_queues_refused_events_once_they_are_valid(cortex):
    cortex.state.control.set_app_strict("demo", "default", True)
    cortex.state.keys.clear()
    events = [{"event_type": "click", "event_id": "kept"}, {"event_type": "x y", "event_id": "bad"}]
    assert batch(cortex, events).status_code == 400
    cortex.state.control.set_app_strict("demo", "default", False)
    result = cortex.cli("replay", "--errors")
    assert result.exit_code == 0, result.output
    cortex.deliver()
    assert cortex.sql("SELECT event_id FROM interactions") == [("kept",)]
    # a second replay stores nothing twice
    cortex.cli("replay", "--errors")
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM interactions") == [(1,)]


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cortex.ingest.interactions import INTERACTION  # noqa: E402

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**40), max_value=2**40),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=30,
)
interaction_documents = st.dictionaries(
    st.sampled_from(sorted(INTERACTION.fields) + ["unknown_a"]),
    st.one_of(json_values, st.sampled_from(["click", "page_view", "9bad", "2024-06-01T13:45:30Z", "biz-1", ""])),
    max_size=len(INTERACTION.fields) + 1,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=interaction_documents)
def test_the_compiled_interaction_validator_equals_marshmallow(document):
    values_fast, _extra, warnings_fast, errors_fast = INTERACTION.load(document)
    values_slow, warnings_slow, errors_slow = INTERACTION.load_with_marshmallow(document)
    assert errors_fast == errors_slow
    if not errors_fast:
        assert values_fast == values_slow
        assert sorted(w for w in warnings_fast if "unknown field" not in w) == sorted(warnings_slow)
