"""The conformance suite every Cortex sink must pass, for plugin authors to run on their own.

Subclass :class:`SinkConformance` in a test module of your plugin and tell it how to make
your sink and how to read back what it stored; the base class brings the tests::

    # tests/test_my_sink.py
    from cortex.sinks import SinkContext
    from cortex.testing import SinkConformance

    from my_plugin import MySink


    class TestMySink(SinkConformance):
        # every field of a record comes back (the default); set False if the sink keeps
        # only some, then only the fields it returns are compared
        stores_every_field = True

        def make_sink(self, tmp_path):
            # Not opened yet.  Two calls with the same tmp_path must give sinks on the
            # same storage: the suite uses that to simulate a restart.
            return MySink("mine", {"path": str(tmp_path / "out")}, SinkContext(tmp_path))

        def stored_records(self, sink):
            # Everything the sink holds: one dict per stored record (a record stored twice
            # appears twice), each with at least "id", "kind" and "type" plus the fields
            # it stored.  Called while the sink is open.
            return read_back(sink)

Run it with ``pytest``.  Your own tests in the same class can use the ``sink`` (made, not
opened) and ``opened_sink`` (opened, closed afterwards) fixtures,
:meth:`SinkConformance.assert_stored`, :meth:`SinkConformance.stored_by_id` and the
tolerant comparison :func:`values_equal` (floats, ``Decimal``, ISO strings against
datetimes, dicts stored as JSON text, ``UUID`` ids).

The records come from :mod:`cortex.testing.records`.  As the dispatcher does, the suite
writes batches in queue order: a record written later never has a lower ``seq``.
"""

from __future__ import annotations

import copy
import json
import math
import re
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Iterable

import pytest

from cortex.ingest.schemas import EVENT_TYPES
from cortex.sinks import Sink
from cortex.testing.records import CONTEXT_VALUES, KINDS, make_record, next_seq, sample_records

__all__ = [
    "SinkConformance",
    "contains_value",
    "parse_timestamp",
    "record_mismatches",
    "values_equal",
]


# --- tolerant comparison --------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def parse_timestamp(value: Any) -> datetime | None:
    """``value`` as an aware UTC datetime if it is a datetime or an ISO 8601 string, else None.

    Naive datetimes (as SQLite gives them back) are taken as UTC.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and _TIMESTAMP.match(value):
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def _decoded(value: Any) -> Any:
    """JSON text decoded (for sinks that store dicts and lists as text); anything else as is."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def values_equal(expected: Any, actual: Any, *, time_tolerance: float = 0.001) -> bool:
    """True when ``actual`` (as stored) is ``expected`` (as written), up to representation.

    Numbers compare with a relative tolerance of 1e-9 (``Decimal`` included); datetimes and
    ISO strings compare as instants, within ``time_tolerance`` seconds, naive ones as UTC;
    dicts and lists compare recursively and may be stored as JSON text; ``UUID`` objects
    compare by their hex.
    """
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool):
        return (isinstance(actual, bool) or _is_number(actual)) and actual == expected
    if isinstance(actual, bool):
        return False
    if _is_number(expected):
        if not _is_number(actual):
            return False
        return math.isclose(float(expected), float(actual), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(actual, uuid.UUID):
        actual = actual.hex
    if isinstance(expected, (str, datetime)):
        if isinstance(expected, str) and isinstance(actual, str) and expected == actual:
            return True
        left, right = parse_timestamp(expected), parse_timestamp(actual)
        if left is not None and right is not None:
            return abs((left - right).total_seconds()) <= time_tolerance
        return False
    if isinstance(expected, dict):
        actual = _decoded(actual)
        if not isinstance(actual, dict) or set(expected) != set(actual):
            return False
        return all(
            values_equal(value, actual[key], time_tolerance=time_tolerance)
            for key, value in expected.items()
        )
    if isinstance(expected, (list, tuple)):
        actual = _decoded(actual)
        if not isinstance(actual, (list, tuple)) or len(expected) != len(actual):
            return False
        return all(
            values_equal(left, right, time_tolerance=time_tolerance)
            for left, right in zip(expected, actual)
        )
    return bool(expected == actual)


def record_mismatches(
    expected: dict[str, Any],
    stored: dict[str, Any],
    *,
    required: Iterable[str] = ("id", "kind", "type"),
    every_field: bool = True,
    ignored: Iterable[str] = (),
    time_tolerance: float = 0.001,
) -> list[str]:
    """Human-readable differences between a record as written and as stored.

    ``required`` fields must be stored; with ``every_field`` every field of ``expected``
    except ``context`` must be, otherwise only the fields the sink stored are compared.
    ``ignored`` fields are never compared.
    """
    problems = []
    skip = set(ignored) | {"context"}
    must = set(required) - skip
    for key, value in expected.items():
        if key in skip:
            continue
        if key not in stored:
            if every_field or key in must:
                problems.append(f"{key}: missing (expected {_short(value)})")
            continue
        if not values_equal(value, stored[key], time_tolerance=time_tolerance):
            problems.append(f"{key}: stored {_short(stored[key])}, expected {_short(value)}")
    return problems


def contains_value(data: Any, needle: str) -> bool:
    """True if the string ``needle`` occurs in any string or key anywhere inside ``data``."""
    if isinstance(data, str):
        return needle in data
    if isinstance(data, bytes):
        return needle.encode() in data
    if isinstance(data, dict):
        return any(contains_value(k, needle) or contains_value(v, needle) for k, v in data.items())
    if isinstance(data, (list, tuple, set)):
        return any(contains_value(item, needle) for item in data)
    return False


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _stored_id(value: Any) -> str:
    return value.hex if isinstance(value, uuid.UUID) else str(value)


# --- the suite ------------------------------------------------------------------------------


class SinkConformance:
    """Base class of a sink's conformance tests: subclass it as ``TestSomething``.

    Implement :meth:`make_sink` and :meth:`stored_records`.  Tune with class attributes:

    ``stores_every_field``
        True (default): every field of a record except ``context`` must come back equal.
        False: only the fields :meth:`stored_records` returns are compared, and
        ``required_fields`` must be among them.
    ``required_fields``
        fields that must always come back (default ``id``, ``kind``, ``type``).
    ``ignored_fields``
        fields never compared (ones the sink deliberately transforms).
    ``stored_kinds``
        the record kinds the sink keeps; it must accept the others without error.
    ``time_tolerance``
        seconds two timestamps may differ by (for stores with coarser precision).
    """

    stores_every_field: ClassVar[bool] = True
    required_fields: ClassVar[tuple[str, ...]] = ("id", "kind", "type")
    ignored_fields: ClassVar[tuple[str, ...]] = ()
    stored_kinds: ClassVar[tuple[str, ...]] = KINDS
    time_tolerance: ClassVar[float] = 0.001

    # --- what the subclass provides ---

    def make_sink(self, tmp_path: Path) -> Sink:
        """A new, not yet opened sink whose storage is determined by ``tmp_path``."""
        raise NotImplementedError("SinkConformance subclasses implement make_sink(tmp_path)")

    def stored_records(self, sink: Sink) -> list[dict[str, Any]]:
        """Every record ``sink`` holds (duplicates included), as dicts with id, kind, type."""
        raise NotImplementedError("SinkConformance subclasses implement stored_records(sink)")

    # --- fixtures ---

    @pytest.fixture
    def sink(self, tmp_path: Path) -> Sink:
        """The sink under test, made by :meth:`make_sink` but not opened."""
        return self.make_sink(tmp_path)

    @pytest.fixture
    def opened_sink(self, sink: Sink):
        """The sink under test, opened; closed after the test."""
        sink.open()
        try:
            yield sink
        finally:
            sink.close()

    # --- helpers for tests ---

    def stored_by_id(self, sink: Sink) -> dict[str, list[dict[str, Any]]]:
        """:meth:`stored_records` grouped by id (a list per id: more than one is a duplicate)."""
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for stored in self.stored_records(sink):
            assert "id" in stored, f"stored_records() gave a record without an id: {stored!r}"
            grouped[_stored_id(stored["id"])].append(stored)
        return dict(grouped)

    def expected_stored(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records of ``records`` that this sink keeps (by ``stored_kinds``)."""
        return [r for r in records if r.get("kind") in self.stored_kinds]

    def assert_stored(
        self, sink: Sink, records: Iterable[dict[str, Any]], *, exactly_once: bool | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Assert every record of ``records`` the sink keeps is stored, with equal fields.

        ``exactly_once`` defaults to the sink's ``idempotent`` flag: then each id must be
        stored once, otherwise at least once.  Returns :meth:`stored_by_id`.
        """
        if exactly_once is None:
            exactly_once = bool(getattr(sink, "idempotent", False))
        by_id = self.stored_by_id(sink)
        problems = []
        for record in self.expected_stored(records):
            copies = by_id.get(record["id"], [])
            label = f"{record['kind']}/{record['type']} {record['id']}"
            if not copies:
                problems.append(f"{label}: not stored")
                continue
            if exactly_once and len(copies) != 1:
                problems.append(f"{label}: stored {len(copies)} times, expected once")
            for stored in copies:
                problems.extend(
                    f"{label}: {problem}"
                    for problem in record_mismatches(
                        record,
                        stored,
                        required=self.required_fields,
                        every_field=self.stores_every_field,
                        ignored=self.ignored_fields,
                        time_tolerance=self.time_tolerance,
                    )
                )
        assert not problems, "stored records differ from those written:\n  " + "\n  ".join(
            problems[:50]
        )
        return by_id

    # --- the tests ---

    def test_sink_class_is_declared(self, sink: Sink) -> None:
        """The sink is a :class:`Sink` with a type name, a description and a boolean flag."""
        assert isinstance(sink, Sink)
        assert isinstance(type(sink).type_name, str) and type(sink).type_name
        assert isinstance(type(sink).description, str)
        assert isinstance(type(sink).idempotent, bool)

    def test_open_write_close(self, sink: Sink) -> None:
        """The lifecycle open → write → close works and the record is stored."""
        record = make_record()
        sink.open()
        try:
            sink.write([record])
            self.assert_stored(sink, [record])
        finally:
            sink.close()

    def test_close_twice_is_harmless(self, sink: Sink) -> None:
        """Closing an already closed sink does not raise (shutdown paths may do it)."""
        sink.open()
        sink.close()
        sink.close()

    def test_empty_batch(self, opened_sink: Sink) -> None:
        """An empty batch is accepted and stores nothing."""
        opened_sink.write([])
        assert self.stored_records(opened_sink) == []

    def test_every_sample_record_is_stored(self, opened_sink: Sink) -> None:
        """One record of every kind and event type is stored with its id and fields intact."""
        records = sample_records()
        opened_sink.write(records)
        self.assert_stored(opened_sink, records)

    def test_context_is_never_stored(self, opened_sink: Sink) -> None:
        """No stored record has a ``context`` or any of its values."""
        opened_sink.write(sample_records())
        stored = self.stored_records(opened_sink)
        assert stored, "nothing was stored"
        for record in stored:
            assert "context" not in record, f"context stored: {_short(record)}"
            for name, value in CONTEXT_VALUES.items():
                assert not contains_value(record, value), f"context {name} stored: {_short(record)}"

    def test_write_does_not_change_the_records(self, opened_sink: Sink) -> None:
        """The batch is left as it was: the dispatcher hands the same dicts to every sink."""
        records = sample_records()
        before = copy.deepcopy(records)
        opened_sink.write(records)
        assert records == before

    def test_same_batch_twice(self, opened_sink: Sink) -> None:
        """A re-sent batch is stored once by an idempotent sink (at least once otherwise)."""
        records = sample_records()
        opened_sink.write(records)
        opened_sink.write(copy.deepcopy(records))
        self.assert_stored(opened_sink, records)

    def test_resent_batch_after_restart(self, tmp_path: Path) -> None:
        """A batch re-sent to a new sink instance (after a crash) is still stored once."""
        records = sample_records()
        first = self.make_sink(tmp_path)
        first.open()
        first.write(records)
        first.close()
        second = self.make_sink(tmp_path)
        second.open()
        try:
            second.write(copy.deepcopy(records))
            self.assert_stored(second, records)
        finally:
            second.close()

    def test_partly_written_batch_resent(self, opened_sink: Sink) -> None:
        """A batch whose first part was stored, re-sent whole, stores each record once."""
        records = sample_records() + sample_records(org="globex")
        opened_sink.write(copy.deepcopy(records[:5]))
        opened_sink.write(records)
        self.assert_stored(opened_sink, records)

    def test_large_batch(self, opened_sink: Sink) -> None:
        """A batch of 2,000 records (ten per queue entry, all event types) is stored whole."""
        records = []
        for entry in range(200):
            seq = next_seq()
            for index in range(10):
                event_type = EVENT_TYPES[(entry + index) % len(EVENT_TYPES)]
                records.append(make_record("track", event_type, seq=seq, event_index=index))
        opened_sink.write(records)
        by_id = self.assert_stored(opened_sink, records)
        if "track" in self.stored_kinds:
            assert len(by_id) == len(records)

    def test_several_orgs(self, opened_sink: Sink) -> None:
        """Records of several orgs in one batch are each stored under their own org."""
        orgs = ("acme", "globex", "initech")
        records = [
            make_record("track", "dau", org=orgs[i % 3], app=f"app{i % 2}") for i in range(30)
        ]
        for org in orgs:
            records += sample_records(org=org, app=f"{org}-app")
        opened_sink.write(records)
        by_id = self.assert_stored(opened_sink, records)
        for record in self.expected_stored(records):
            for stored in by_id[record["id"]]:
                if "org" in stored:
                    assert stored["org"] == record["org"]

    def test_unicode_and_longest_log_line(self, opened_sink: Sink) -> None:
        """Non-ASCII text of every plane and a 65,535-character log line survive unchanged."""
        text = "Grüße, 東京, Ünïcödé — ☕ 🎉 𝄞 \u200b\"quotes\" \\ back\\slash\n\ttab"
        log_line = ("ü☕𝄞a" * 16384)[:65535]
        assert len(log_line) == 65535
        records = [
            make_record("track", "event", kingdom="東京タワー", phylum="ødeland 🎉",
                        **{"class": "ÆØÅ", "order": "𝄞"}, extra={"note": text, "ключ": "значение"}),
            make_record("app_log", "log", log_line=log_line, hostname="hôte-1"),
            make_record("interaction", "review", event_properties={"text": text, "stars": 5}),
        ]
        opened_sink.write(records)
        self.assert_stored(opened_sink, records)

    def test_reopen_keeps_data(self, sink: Sink) -> None:
        """Closing and reopening the same instance keeps what was stored; writing continues."""
        first = sample_records()
        sink.open()
        sink.write(first)
        sink.close()
        second = sample_records(org="globex")
        sink.open()
        try:
            sink.write(second)
            self.assert_stored(sink, first + second)
        finally:
            sink.close()

    def test_restart_keeps_data(self, tmp_path: Path) -> None:
        """A new instance on the same storage sees the old records and adds new ones."""
        first = sample_records()
        old = self.make_sink(tmp_path)
        old.open()
        old.write(first)
        old.close()
        second = sample_records()
        new = self.make_sink(tmp_path)
        new.open()
        try:
            new.write(second)
            self.assert_stored(new, first + second)
        finally:
            new.close()

    def test_describe(self, sink: Sink) -> None:
        """describe() is a JSON-serialisable dict with the sink's name and type, open or not."""
        for phase in ("made", "opened"):
            summary = sink.describe()
            assert isinstance(summary, dict), phase
            assert summary.get("name") == sink.name, phase
            assert summary.get("type") == type(sink).type_name, phase
            json.dumps(summary)
            if phase == "made":
                sink.open()
        sink.close()
