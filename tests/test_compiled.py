"""The compiled validators give exactly what marshmallow's Schema.load gives, on any input
(and the hand-made canonical timestamps what ``isoformat`` gives)."""

from __future__ import annotations

from datetime import timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex.ingest.fields import format_timestamp
from cortex.ingest.pipeline import BUNDLE, EVENTS, LOG_LINE

SCHEMAS = {"bundle": BUNDLE, "log": LOG_LINE, **EVENTS}

timestamps = st.sampled_from([
    "2024-01-01T00:00:00Z", "2013-11-07T10:42Z", "2024-06-01T13:45:30.123456+02:00", "2024-06-01",
    "not a date", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00 00:00",
])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=80),
    st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{1,3})?", fullmatch=True), timestamps,
)
values = st.one_of(scalars, st.lists(st.one_of(st.text(max_size=70), st.integers()), max_size=4),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def documents(schema):
    names = st.sampled_from(sorted(schema.fields) + ["unknown_a", "extra"])
    return st.dictionaries(names, values, max_size=len(schema.fields) + 2)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_equals_marshmallow(name, data):
    schema = SCHEMAS[name]
    document = data.draw(documents(schema))
    values_fast, _extra, warnings_fast, errors_fast = schema.load(document)
    values_slow, warnings_slow, errors_slow = schema.load_with_marshmallow(document)
    assert errors_fast == errors_slow
    if not errors_fast:
        assert values_fast == values_slow
        known = sorted(w for w in warnings_fast if "unknown field" not in w)
        assert known == sorted(warnings_slow)


def test_every_spec_limit_is_enforced_by_truncation():
    values, _, warnings, errors = BUNDLE.load({"api_key": "k", "device_tag": "d" * 100, "os": "o" * 17})
    assert not errors
    assert len(values["device_tag"]) == 62 and len(values["os"]) == 16
    assert len(warnings) == 2


def test_unknown_fields_are_kept_within_limits():
    document = {"type": "dau", "event_datetime": "2024-01-01T00:00:00Z", "note": "x" * 5000, "nested": {"a": 1}}
    values, extra, warnings, errors = EVENTS["dau"].load(document)
    assert not errors and len(extra["note"]) == 1024 and "nested" not in extra
    assert any("nested" in w for w in warnings)


@pytest.mark.parametrize("value, message", [
    (float("nan"), "Not a finite number."), ("inf", "Not a finite number."), (True, "Not a valid number."),
    ([1], "Not a valid number."), ("abc", "Not a valid number."),
])
def test_numbers_refuse_what_is_not_a_finite_number(value, message):
    _, _, _, errors = EVENTS["event"].load({"type": "event", "event_datetime": "2024-01-01T00:00:00Z", "float1": value})
    assert errors == {"float1": [message]}


def test_event_index_must_be_whole():
    _, _, _, errors = EVENTS["event"].load({"type": "event", "event_datetime": "2024-01-01T00:00:00Z", "event_index": 1.5})
    assert errors == {"event_index": ["Must be an integer, not fractional."]}


@settings(max_examples=500, deadline=None)
@given(moment=st.datetimes(timezones=st.just(timezone.utc)))
def test_canonical_timestamps_are_isoformat_with_milliseconds(moment):
    # format_timestamp formats by hand for speed; it must stay what isoformat gives
    assert format_timestamp(moment) == moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
