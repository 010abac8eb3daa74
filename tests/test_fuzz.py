"""Fuzzing the bundle parser and the validators: whatever arrives, they answer with a result
or a clear error, never a crash, and the HTTP edge never answers 5xx."""

from __future__ import annotations

import gzip
import re
import zlib
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex.control import KeyOwner
from cortex.ingest.body import BodyError, BodyLimits, check_shape, decode_body, parse_json
from cortex.ingest.pipeline import BUNDLE, EVENTS, LOG_LINE, BundleError, Timing, build_records, check_bundle_shape
from cortex.ingest.schemas import EVENT_FIELDS, LOG_LINE_FIELDS

LIMITS = BodyLimits()
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
OWNER = KeyOwner(key_id=1, org="demo", app="default", app_id=1, strict=None)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=100),
    st.sampled_from(["2024-01-01T00:00:00Z", "2013-11-07T10:42Z", "2024-06-01", "0001-01-01T00:00:00Z",
                     "9999-12-31T23:59:59.999999+14:00", "", "100", "-1.5e300", "\x00\u202e\ud7ff"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)),
    max_leaves=30,
)
field_names = st.sampled_from(sorted({name for fields in EVENT_FIELDS.values() for name in fields}
                                     | set(LOG_LINE_FIELDS) | {"unknown", "api_key", "events", "device_tag"}))


@st.composite
def events(draw):
    """Event-like objects: a known type and a mix of known and unknown fields, any values."""
    event = draw(st.dictionaries(field_names, json_values, max_size=12))
    if draw(st.booleans()):
        event["type"] = draw(st.sampled_from(sorted(EVENT_FIELDS) + ["nope"]))
    return event


@st.composite
def bundles(draw):
    """Bundle-like documents: mostly well formed around events of any shape."""
    bundle = draw(st.dictionaries(field_names, json_values, max_size=8))
    if draw(st.booleans()):
        bundle["api_key"] = "key"
    if draw(st.booleans()):
        bundle["device_tag"] = draw(st.one_of(st.text(max_size=70), json_scalars))
    bundle["events"] = draw(st.one_of(st.lists(st.one_of(events(), json_values), max_size=8), json_values))
    return bundle


def run_pipeline(document, endpoint: str) -> None:
    """Everything a request does with a parsed body short of the queue; only clear errors may escape."""
    try:
        bundle, event_list = check_bundle_shape(document, endpoint, 100)
    except BundleError:
        return
    timing = Timing.parse(datetime.now(timezone.utc), "2024-01-01T00:00:00Z")
    try:
        outcome = build_records(bundle, event_list, endpoint, OWNER, timing, {"client_ip": "127.0.0.1"})
    except BundleError:
        return
    # whatever was accepted or rejected can be stored
    orjson.dumps([record for _, record in outcome.accepted + outcome.rejected])
    orjson.dumps(outcome.shared)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_any_bytes_parse_or_fail_clearly(data):
    try:
        document = parse_json(data)
    except BodyError as error:
        assert error.status == 400 and str(error)
        return
    try:
        check_shape(document, len(data), LIMITS)
    except BodyError as error:
        assert error.status == 400
        return
    run_pipeline(document, "track")


@FUZZ
@given(document=bundles(), endpoint=st.sampled_from(["track", "app_log"]))
def test_any_bundle_validates_or_fails_clearly(document, endpoint):
    text = orjson.dumps(document)
    parsed = parse_json(text)
    check_shape(parsed, len(text), LIMITS)
    run_pipeline(parsed, endpoint)


@FUZZ
@given(document=st.dictionaries(field_names, json_values, max_size=15),
       schema=st.sampled_from([BUNDLE, LOG_LINE, *EVENTS.values()]))
def test_every_validator_takes_any_document(document, schema):
    values, extra, warnings, errors = schema.load(document)
    assert isinstance(errors, dict) and all(isinstance(m, list) and m for m in errors.values())
    orjson.dumps([values, extra, warnings, errors])
    for value in [*values.values(), *extra.values()]:
        if isinstance(value, str):
            assert not CONTROL.search(value), "control characters are stripped from stored strings"


@FUZZ
@given(data=st.binary(max_size=3000), encoding=st.sampled_from(["gzip", "deflate", "x-gzip", "br", "gzip, gzip"]),
       wrap=st.sampled_from(["none", "gzip", "zlib", "truncated"]))
def test_any_compressed_body_decodes_or_fails_clearly(data, encoding, wrap):
    if wrap == "gzip":
        data = gzip.compress(data)
    elif wrap == "zlib":
        data = zlib.compress(data)
    elif wrap == "truncated":
        data = gzip.compress(data)[: max(1, len(data) // 2)]
    try:
        decoded = decode_body(data, encoding, LIMITS)
    except BodyError as error:
        assert error.status in (400, 413, 415)
        return
    assert len(decoded) <= LIMITS.decoded_limit(len(data))


@pytest.mark.parametrize("content_encoding", [None, "gzip"])
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_the_http_edge_never_answers_5xx(cortex, content_encoding, data):
    document = data.draw(st.one_of(bundles(), json_values))
    if isinstance(document, dict) and "api_key" in document:
        document["api_key"] = cortex.api_key
    body = data.draw(st.one_of(st.just(orjson.dumps(document)), st.binary(max_size=500)))
    headers = {}
    if content_encoding:
        body = gzip.compress(body)
        headers["Content-Encoding"] = content_encoding
    response = cortex.post(body, headers=headers)
    assert response.status_code in (200, 400, 413), response.data
    assert response.mimetype == "text/plain"
