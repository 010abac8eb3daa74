"""The bundled ``sql`` sink: the conformance suite and SQL-specific tests, on SQLite and
PostgreSQL.

PostgreSQL tests use the ``postgres_url`` fixture (the local server, or
``CORTEX_TEST_POSTGRES``; skipped when unreachable, failed under ``CI=true``), each in a
fresh schema dropped afterwards.
"""

from __future__ import annotations

import copy
import threading
import uuid
from datetime import datetime, timezone
from importlib.metadata import entry_points
from pathlib import Path

import pluggy
import pytest
import sqlalchemy as sa
from marshmallow import ValidationError
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from conftest import drop_schema
from cortex import hookspecs
from cortex.sinks import PermanentError, SinkContext
from cortex.testing import SinkConformance, make_record, sample_records
from cortex_sql import SqlSink
from cortex_sql import migrate
from cortex_sql.bulk import pg_datetime, sqlite_datetime
from cortex_sql.day_bitmaps import define_bitmap_tables
from cortex_sql.rollups import define_rollup_tables
from cortex_sql.tables import build_tables

HEAD = "0007"


# --- the conformance suite ------------------------------------------------------------------


class TestSqliteConformance(SinkConformance):
    """The conformance suite on SQLite, with the default URL (``events.db`` in the data dir)."""

    def make_sink(self, tmp_path: Path) -> SqlSink:
        return SqlSink("sql", {}, SinkContext(tmp_path))

    def stored_records(self, sink: SqlSink) -> list[dict]:
        return sink.read_records()


@pytest.mark.postgres
class TestPostgresConformance(SinkConformance):
    """The conformance suite on PostgreSQL, in a schema of its own per test."""

    @pytest.fixture(autouse=True)
    def _database(self, postgres_url, pg_schema):
        self.url, self.schema = postgres_url, pg_schema

    def make_sink(self, tmp_path: Path) -> SqlSink:
        return SqlSink("sql", {"url": self.url, "schema": self.schema}, SinkContext(tmp_path))

    def stored_records(self, sink: SqlSink) -> list[dict]:
        return sink.read_records()


# --- SQL-specific tests, on both databases --------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def make_sink(request, tmp_path):
    """A factory of (unopened) sinks on one database: SQLite in tmp_path, or a PG schema."""
    if request.param == "sqlite":
        base = {"url": f"sqlite:///{tmp_path}/events.db"}
    else:
        base = {
            "url": request.getfixturevalue("postgres_url"),
            "schema": request.getfixturevalue("pg_schema"),
        }
    made = []

    def factory(**options) -> SqlSink:
        sink = SqlSink("sql", {**base, **options}, SinkContext(tmp_path))
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


@pytest.fixture
def sink(make_sink) -> SqlSink:
    """An opened sink on each database."""
    sink = make_sink()
    sink.open()
    return sink


def tables_of(sink: SqlSink) -> dict[str, sa.Table]:
    """The sink's table definitions (with its prefix and schema)."""
    return build_tables(sa.MetaData(), sink.table_prefix, sink.schema)


def select_all(sink: SqlSink, table: str) -> list[sa.RowMapping]:
    """Every row of one of the sink's tables, as SQLAlchemy gives them back."""
    with sink.engine.connect() as connection:
        return list(connection.execute(sa.select(tables_of(sink)[table])).mappings())


def test_each_family_has_its_table(sink):
    """Records go to the table a reporting user expects for their kind and type."""
    sink.write(sample_records())
    counts = {name: len(select_all(sink, name)) for name in tables_of(sink)}
    assert counts == {
        "events": 3, "economy": 1, "links": 1, "messages": 2, "experiments": 1,
        "app_logs": 1, "interactions": 1, "ingest_errors": 1,
    }
    types = {row["type"] for row in select_all(sink, "events")}
    assert types == {"install", "dau", "event"}
    assert {row["type"] for row in select_all(sink, "messages")} == {
        "message_send", "message_click"
    }


def test_typed_columns_round_trip(sink):
    """Floats, big integers, aware datetimes, JSON lists and long unicode keep their types."""
    event = make_record(
        "track", "event", float1=0.1 + 0.2, float2=-1.5e300, float3=5e-324,
        event_index=2**62, event_datetime="2024-02-29T23:59:59.999Z",
        event_time="2024-03-01T00:00:01.250Z", kingdom="東京タワー 🎉",
    )
    message = make_record("track", "message_send", to_list=["a", "ユーザー", "𝄞" * 62])
    economy = make_record("track", "economy", spend_amount=1234567.891, spend_amount_usd=1.5,
                          usd_rate_date="2024-02-29")
    log_line = ("ü☕𝄞a" * 16384)[:65535]
    log = make_record("app_log", "log", log_line=log_line, response_bytes=2**40)
    sink.write([event, message, economy, log])

    (row,) = select_all(sink, "events")
    assert row["float1"] == 0.1 + 0.2 and isinstance(row["float1"], float)
    assert row["float2"] == -1.5e300 and row["float3"] == 5e-324
    assert row["event_index"] == 2**62
    assert row["event_datetime"] == datetime(2024, 2, 29, 23, 59, 59, 999000, timezone.utc)
    assert row["event_time"].tzinfo is not None
    assert row["event_time"] == datetime(2024, 3, 1, 0, 0, 1, 250000, timezone.utc)
    assert row["clock_skew_seconds"] == pytest.approx(-1.251)
    assert row["kingdom"] == "東京タワー 🎉"
    assert row["extra"] == event["extra"] and row["warnings"] == event["warnings"]
    (row,) = select_all(sink, "messages")
    assert row["to_list"] == ["a", "ユーザー", "𝄞" * 62]
    (row,) = select_all(sink, "economy")
    assert row["spend_amount"] == 1234567.891
    assert row["spend_amount_usd"] == 1.5
    assert str(row["usd_rate_date"]) == "2024-02-29"
    (row,) = select_all(sink, "app_logs")
    assert row["log_line"] == log_line and len(row["log_line"]) == 65535
    assert row["response_bytes"] == 2**40


def test_column_types_in_the_database(sink):
    """The database itself has typed columns, not text everywhere."""
    inspector = sa.inspect(sink.engine)
    columns = {c["name"]: c["type"] for c in inspector.get_columns("events", schema=sink.schema)}
    assert isinstance(columns["float1"], sa.Float)
    assert isinstance(columns["event_index"], sa.BigInteger)
    assert isinstance(columns["seq"], sa.BigInteger)
    assert isinstance(columns["event_time"], sa.DateTime)
    assert isinstance(columns["kingdom"], sa.String) and columns["kingdom"].length == 32
    assert columns["device_tag"].length == 62 and columns["country"].length == 2
    assert "api_key" not in columns and "context" not in columns
    if sink.engine.dialect.name == "postgresql":
        assert columns["event_time"].timezone
        assert isinstance(columns["extra"], sa.JSON)
    indexes = inspector.get_indexes("events", schema=sink.schema)
    assert any(ix["column_names"] == ["org", "event_time"] for ix in indexes)
    economy = {c["name"] for c in inspector.get_columns("economy", schema=sink.schema)}
    assert {"spend_amount_usd", "usd_rate_date", "region", "city"} <= economy


def test_class_and_order_columns(sink):
    """The spec's ``class`` and ``order`` fields are real, queryable columns."""
    sink.write([make_record("track", "event", **{"class": "gems", "order": "größe_m"})])
    quote = sink.engine.dialect.identifier_preparer.quote
    table = tables_of(sink)["events"]
    name = quote(table.name) if not sink.schema else f"{quote(sink.schema)}.{quote(table.name)}"
    with sink.engine.connect() as connection:
        row = connection.execute(
            sa.text(f'SELECT {quote("class")}, {quote("order")} FROM {name}')
        ).one()
        assert tuple(row) == ("gems", "größe_m")
        count = connection.execute(
            sa.select(sa.func.count()).where(table.c["order"] == "größe_m")
        ).scalar()
        assert count == 1


def test_idempotent_rewrite(sink):
    """The same id written again, in another batch or the same one, is stored once."""
    record = make_record("track", "economy")
    changed = {**copy.deepcopy(record), "spend_amount": 99.0}
    sink.write([record])
    sink.write([changed, copy.deepcopy(record)])
    (row,) = select_all(sink, "economy")
    assert row["spend_amount"] == record["spend_amount"]


def test_idempotent_without_on_conflict(sink):
    """Dialects without ON CONFLICT look up stored ids first (forced here)."""
    sink._bulk = None
    sink._statements.clear()
    records = sample_records()
    sink.write(records[:4])
    sink.write(records + [copy.deepcopy(records[0])])
    assert len(sink.read_records()) == len(records)


def test_one_transaction_per_write(sink):
    """A batch that fails stores none of its records."""
    good = make_record("track", "dau")
    bad = make_record("track", "event", event_index=2**70)
    with pytest.raises(PermanentError):
        sink.write([good, bad])
    assert sink.read_records() == []


@pytest.mark.parametrize(
    "fields",
    [
        {"event_index": 2**70},  # beyond BIGINT
        {"event_datetime": "yesterday"},  # not a timestamp
        {"kingdom": {"not": "a string"}},  # a dict in a string column
    ],
    ids=["int-overflow", "bad-timestamp", "dict-in-string"],
)
def test_permanent_error_for_unstorable_values(sink, fields):
    """A value the database cannot take is a PermanentError, not a retryable failure."""
    with pytest.raises(PermanentError):
        sink.write([make_record("track", "event", **fields)])


@pytest.mark.postgres
def test_permanent_error_for_overlong_string_on_postgres(postgres_url, pg_schema, tmp_path):
    """PostgreSQL refuses a string longer than its column (or a NUL): a PermanentError."""
    sink = SqlSink("sql", {"url": postgres_url, "schema": pg_schema}, SinkContext(tmp_path))
    sink.open()
    try:
        with pytest.raises(PermanentError):
            sink.write([make_record("track", "event", kingdom="k" * 33)])
        with pytest.raises(PermanentError):
            sink.write([make_record("track", "event", kingdom="nul\x00byte")])
    finally:
        sink.close()


def test_unknown_kind_is_permanent(sink):
    """A record no table is made for is refused for good."""
    with pytest.raises(PermanentError):
        sink.write([make_record("track", "no_such_type")])
    with pytest.raises(PermanentError):
        sink.write([{**make_record(), "kind": "mystery"}])


def test_missing_table_is_not_permanent(sink):
    """A database problem (here a dropped table) propagates as is, to be retried."""
    with sink.engine.begin() as connection:
        tables_of(sink)["events"].drop(connection)
    with pytest.raises(sa.exc.DBAPIError) as caught:
        sink.write([make_record()])
    assert not isinstance(caught.value, PermanentError)


def test_rejected_records_with_odd_values_are_kept(sink):
    """An ingest error keeps whatever was sent: odd types and overlong strings are fitted."""
    record = make_record("rejected", "t" * 500, payload={"type": ["x"], "n": 10**30},
                         endpoint=12345)
    sink.write([record])
    (row,) = select_all(sink, "ingest_errors")
    assert row["type"] == "t" * 64 and row["endpoint"] == "12345"
    assert row["payload"] == {"type": ["x"], "n": 10**30}
    assert row["reasons"] == record["reasons"] and row["bundle"] == record["bundle"]


def test_unknown_keys_are_ignored(sink):
    """Fields the tables have no column for (context, future fields) are left out."""
    sink.write([make_record(brand_new_field="x", another={"a": 1})])
    (stored,) = sink.read_records()
    assert "brand_new_field" not in stored and "context" not in stored


def test_migration_is_rerunnable(make_sink):
    """Opening an up-to-date database again is a no-op that keeps the data."""
    first = make_sink()
    first.open()
    first.write(sample_records())
    migrate.upgrade(first.engine, first.table_prefix, first.schema)
    first.close()
    second = make_sink()
    second.open()
    assert migrate.current_revision(second.engine, "", second.schema) == HEAD
    assert len(second.read_records()) == len(sample_records())


def test_migrated_schema_matches_table_definitions(sink):
    """The migrations build exactly the tables :mod:`cortex_sql.tables` defines.

    When this fails, the ingest schemas changed: add a migration revision.
    """
    metadata = sa.MetaData()
    build_tables(metadata, sink.table_prefix, sink.schema)
    define_rollup_tables(metadata, sink.table_prefix, sink.schema)
    define_bitmap_tables(metadata, sink.table_prefix, sink.schema)
    with sink.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "include_schemas": bool(sink.schema),
                  "include_name": lambda name, type_, parent: (
                      type_ != "schema" or name == sink.schema)},
        )
        diffs = compare_metadata(context, metadata)
    diffs = [d for d in diffs if not (
        d[0] == "remove_table" and d[1].name == migrate.VERSION_TABLE)]
    assert diffs == []


def test_version_table_name(sink):
    """Alembic's version table is ``cortex_sql_version``, not a user's ``alembic_version``."""
    names = sa.inspect(sink.engine).get_table_names(schema=sink.schema)
    assert "cortex_sql_version" in names and "alembic_version" not in names


def test_concurrent_open(make_sink):
    """Two sinks opening a new database at the same moment both succeed."""
    sinks = [make_sink(), make_sink()]
    barrier = threading.Barrier(len(sinks))
    errors = []

    def open_sink(sink):
        try:
            barrier.wait()
            sink.open()
            sink.write(sample_records())
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_sink, args=(sink,)) for sink in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(sinks[0].read_records()) == 2 * len(sample_records())
    assert migrate.current_revision(sinks[0].engine, "", sinks[0].schema) == HEAD


def test_table_prefixes_share_a_database(make_sink):
    """Sinks with different prefixes keep separate tables and version tables."""
    plain, prefixed = make_sink(), make_sink(table_prefix="dc_")
    plain.open()
    prefixed.open()
    plain.write([make_record()])
    prefixed.write([make_record(), make_record()])
    assert len(plain.read_records()) == 1 and len(prefixed.read_records()) == 2
    names = set(sa.inspect(plain.engine).get_table_names(schema=plain.schema))
    assert {"events", "dc_events", "cortex_sql_version", "dc_cortex_sql_version"} <= names


# --- the bulk path (SQLite, PostgreSQL) -------------------------------------------------------


def varied_records() -> list[dict]:
    """Records that take every branch of the bulk path: odd times, absent and None fields,
    computed columns, reordered keys, rejected records' odd values."""
    def with_values(record, **values):  # make_record drops a None override; keep it here
        record.update(values)
        return record

    records = sample_records()
    records += [
        # times: offset, microseconds, no fraction, naive string, datetime objects
        make_record("track", "event", event_datetime="2024-06-01T15:45:30.123456+02:00",
                    event_time="2024-06-01T13:45:30Z", received_at="2024-06-01T13:45:31.5Z"),
        make_record("track", "dau", event_datetime="2024-06-01T13:45:30.123",
                    event_time=datetime(2024, 6, 1, 13, 45, 29, 7, timezone.utc)),
        make_record("track", "dau", event_time=datetime(2024, 6, 1, 13, 45, 30)),
        make_record("track", "install", event_datetime="2024-02-29T23:59:59.999Z",
                    event_time="2024-03-01T00:00:00.000Z"),
        # fields absent, or present as None; skew given, or None
        make_record("track", "event", kingdom=None, phylum=None, float1=None, extra=None),
        with_values(make_record("track", "event"), kingdom=None, warnings=None,
                    clock_skew_seconds=None, event_datetime="2024-06-01T13:45:40.000Z",
                    event_time="2024-06-01T13:45:30.000Z"),
        make_record("track", "event", clock_skew_seconds=12.5),
        make_record("track", "economy", usd_rate_date="2024-02-29", spend_amount_usd=1.25,
                    spend_amount=7),
        make_record("app_log", "log", response_ms=5, event_datetime=None, event_time=None),
        # the interactions' type column: absent, None, or its own value
        make_record("interaction", "purchase", event_type=None),
        with_values(make_record("interaction", "purchase"), event_type=None),
        make_record("interaction", "purchase", event_type="refund"),
        # rejected: whatever was sent, fitted
        make_record("rejected", "t" * 100, endpoint=12345, app="a\x00pp",
                    payload={"n": 10**30}),
        make_record(brand_new_field="x"),
        dict(reversed(list(make_record("track", "message_send").items()))),
    ]
    return records


def test_bulk_path_stores_what_sqlalchemy_stores(make_sink):
    """The bulk path and the SQLAlchemy Core path store the same values (on SQLite the same
    text, byte for byte), so reads through SQLAlchemy see no difference."""
    records = varied_records()
    bulk, core = make_sink(), make_sink(table_prefix="core_")
    bulk.open()
    core.open()
    assert bulk._bulk is not None
    core._bulk = None
    bulk.write(copy.deepcopy(records))
    core.write(copy.deepcopy(records))
    sqlite = bulk.engine.dialect.name == "sqlite"
    for name, table in tables_of(bulk).items():
        if sqlite:
            with bulk.engine.connect() as connection:
                stored = {
                    prefix: [
                        tuple((type(value).__name__, value) for value in row)
                        for row in connection.exec_driver_sql(
                            f'SELECT * FROM "{prefix}{name}" ORDER BY id'
                        )
                    ]
                    for prefix in ("", "core_")
                }
            assert stored[""] == stored["core_"], name
        mine = sorted(select_all(bulk, name), key=lambda row: row["id"])
        theirs = sorted(select_all(core, name), key=lambda row: row["id"])
        assert [dict(row) for row in mine] == [dict(row) for row in theirs], name
    assert len(bulk.read_records()) == len(records)


def test_mixed_column_sets_in_one_batch(sink):
    """Records with different columns, interleaved in one batch, each keep their own."""
    full = [make_record("track", "event", kingdom=f"k{i}", float4=float(i)) for i in range(3)]
    bare = [
        make_record("track", "event", kingdom=None, phylum=None, float4=None, extra=None,
                    warnings=None, group_tag=None)
        for _ in range(3)
    ]
    dau = [make_record("track", "dau") for _ in range(2)]
    reordered = [dict(reversed(list(make_record("track", "event").items())))]
    batch = [full[0], bare[0], dau[0], full[1], bare[1], reordered[0], dau[1], bare[2], full[2]]
    sink.write(batch)
    rows = {row["id"]: row for row in select_all(sink, "events")}
    assert set(rows) == {record["id"] for record in batch}
    for i, record in enumerate(full):
        row = rows[record["id"]]
        assert row["kingdom"] == f"k{i}" and row["float4"] == float(i)
        assert row["extra"] == record["extra"] and row["group_tag"] == "cohort-α"
    for record in bare:
        row = rows[record["id"]]
        assert row["kingdom"] is None and row["phylum"] is None and row["float4"] is None
        assert row["extra"] is None and row["warnings"] is None and row["group_tag"] is None
        assert row["device_tag"] == record["device_tag"] and row["type"] == "event"
    for record in dau:
        row = rows[record["id"]]
        assert row["type"] == "dau" and row["kingdom"] == "session" and row["float1"] is None
    assert rows[reordered[0]["id"]]["kingdom"] == "level_complete"
    stored = {r["id"]: r for r in sink.read_records()}
    for record in bare:
        assert not {"kingdom", "phylum", "float4", "extra", "warnings"} & set(stored[record["id"]])


def test_missing_optional_columns_next_to_present_ones(sink):
    """A record without optional fields, next to one with them, stores NULL there, never
    its neighbour's values; each layout gets one statement, kept for the next batches."""
    with_fields = make_record("track", "economy", spend_amount_usd=2.5,
                              usd_rate_date="2024-05-31", region="Bayern", city="München")
    without = make_record("track", "economy", spend_amount=None, spend_currency=None,
                          spend_type=None, country=None, language=None)
    sink.write([with_fields, without])
    rows = {row["id"]: row for row in select_all(sink, "economy")}
    row = rows[with_fields["id"]]
    assert (row["spend_amount_usd"], str(row["usd_rate_date"])) == (2.5, "2024-05-31")
    assert (row["region"], row["city"], row["country"]) == ("Bayern", "München", "de")
    row = rows[without["id"]]
    for name in ("spend_amount", "spend_currency", "spend_type", "country", "language",
                 "spend_amount_usd", "usd_rate_date", "region", "city"):
        assert row[name] is None, name
    assert row["kingdom"] == "shop" and row["spend_amount"] is None
    plan = sink._bulk._plans["economy"]
    assert len(plan._statements) == 2
    sink.write([make_record("track", "economy", spend_amount_usd=1.0, usd_rate_date="2024-06-01",
                            region="r", city="c"), make_record("track", "economy")])
    assert len(plan._statements) == 3  # the plain economy record is a layout of its own


def test_bulk_path_bad_record_is_permanent_and_isolates(sink):
    """A value the bulk path cannot convert fails the batch as a PermanentError naming the
    record; without it (as the dispatcher's bisection finds) the others are stored."""
    good = [make_record("track", "dau") for _ in range(3)]
    bad = make_record("track", "event", event_time="2024-02-30T10:00:00.000Z")
    with pytest.raises(PermanentError, match=bad["id"]):
        sink.write(good[:2] + [bad] + good[2:])
    assert sink.read_records() == []
    sink.write(good)
    with pytest.raises(PermanentError):
        sink.write([bad])
    assert {r["id"] for r in sink.read_records()} == {r["id"] for r in good}


@pytest.mark.parametrize(
    "fields",
    [
        {"float1": "not a number"},
        {"event_time": "2024-06-01T24:00:00.000Z"},
        {"event_time": "2024-06-01T13:45:30.12ZZ"},
        {"event_datetime": ["2024-06-01T13:45:30.123Z"]},
        {"usd_rate_date": "2024-13-01"},
        {"extra": {"a"}},  # a set: JSON text anyway ("default=str"); stored
    ],
    ids=["str-in-float", "hour-24", "double-z", "list-time", "bad-date", "set-in-json"],
)
def test_bulk_path_odd_values(sink, fields):
    """Odd values the bulk path meets are refused for good, or stored (JSON's fallback)."""
    record = make_record("track", "economy", **fields)
    if "extra" in fields:
        sink.write([record])
        assert select_all(sink, "economy")[0]["extra"] == "{'a'}"
    else:
        with pytest.raises(PermanentError):
            sink.write([record])


@pytest.mark.postgres
def test_wrong_parameter_type_is_permanent_on_postgres(postgres_url, pg_schema, tmp_path):
    """A value PostgreSQL refuses for its column's type (a bool for a BIGINT) is permanent."""
    sink = SqlSink("sql", {"url": postgres_url, "schema": pg_schema}, SinkContext(tmp_path))
    sink.open()
    try:
        for bulk in (sink._bulk, None):
            sink._bulk = bulk
            with pytest.raises(PermanentError):
                sink.write([make_record("track", "event", event_index=True)])
    finally:
        sink.close()


@pytest.mark.postgres
def test_percent_in_schema_name(postgres_url, tmp_path):
    """Identifiers are quoted, and a "%" in them is no placeholder for psycopg."""
    schema = f"cortex%test_{uuid.uuid4().hex[:8]}"
    sink = SqlSink("sql", {"url": postgres_url, "schema": schema}, SinkContext(tmp_path))
    try:
        sink.open()
        records = sample_records()
        sink.write(records)
        assert len(sink.read_records()) == len(records)
    finally:
        sink.close()
        drop_schema(postgres_url, schema)


@pytest.mark.parametrize(
    "value",
    [
        "2024-06-01T13:45:30.123Z",
        "2024-06-01T13:45:30.000Z",
        "2024-02-29T23:59:59.999Z",
        "0001-01-01T00:00:00.001Z",
        "2024-06-01T13:45:30Z",
        "2024-06-01T13:45:30.123456Z",
        "2024-06-01T15:45:30.123+02:00",
        "2024-06-01T13:45:30.123",
        "2024-06-01 13:45:30.123Z",
        datetime(2024, 6, 1, 13, 45, 30, 123456, timezone.utc),
        datetime(2024, 6, 1, 13, 45, 30),
    ],
)
def test_time_conversion_matches_sqlalchemy(value):
    """Record times become what SQLAlchemy's types make of the parsed datetime."""
    from cortex_sql.rows import _utc_datetime

    moment = _utc_datetime(value)
    sqlite_bind = sa.DateTime().dialect_impl(sa.dialects.sqlite.dialect()).bind_processor(
        sa.dialects.sqlite.dialect()
    )
    assert sqlite_datetime(value) == sqlite_bind(moment)
    converted = pg_datetime(value)
    assert converted == moment and converted.utcoffset() is not None


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2024-02-30T00:00:00.000Z", "2024-06-01T24:00:00.000Z",
     "2024-06-01T13:45:30.12ZZ", "2024-06-01T13:4a:30.123Z", "", 17],
)
def test_time_conversion_refuses_non_times(value):
    """Anything but a date and time raises (and becomes a PermanentError in write)."""
    for convert in (sqlite_datetime, pg_datetime):
        with pytest.raises((ValueError, ValidationError)):
            convert(value)


@pytest.mark.parametrize("durability, synchronous", [("os", 1), ("fsync", 2)])
def test_sqlite_synchronous_follows_durability(tmp_path, durability, synchronous):
    """SQLite commits are fsynced (synchronous=FULL) only when the queue fsyncs its own;
    with durability "os" (synchronous=NORMAL in WAL mode) they survive kill -9."""
    sink = SqlSink("sql", {}, SinkContext(tmp_path, durability=durability))
    sink.open()
    try:
        for _ in range(2):  # every connection of the pool, not only the first
            with sink.engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == synchronous
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        sink.write(sample_records())
        assert len(sink.read_records()) == len(sample_records())
    finally:
        sink.close()


# --- configuration and registration ---------------------------------------------------------


def test_default_database_is_in_the_data_dir(tmp_path):
    """Without a URL the sink uses ``events.db`` in the data dir, created only by open()."""
    data_dir = tmp_path / "data"
    sink = SqlSink("sql", {}, SinkContext(data_dir))
    assert not data_dir.exists()
    sink.open()
    try:
        assert (data_dir / "events.db").exists()
        with sink.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        sink.close()


def test_describe_hides_the_password(tmp_path):
    """describe() shows where the data goes, never the password."""
    sink = SqlSink(
        "warehouse",
        {"url": "postgresql+psycopg://cortex:s3cr3t-pw@db.example:5432/analytics",
         "schema": "cortex"},
        SinkContext(tmp_path),
    )
    summary = sink.describe()
    assert "s3cr3t-pw" not in repr(summary)
    assert summary["url"] == "postgresql+psycopg://cortex:***@db.example:5432/analytics"
    assert summary["schema"] == "cortex" and summary["type"] == "sql"


def test_bad_options_are_refused(tmp_path):
    """An unsafe table prefix, or a schema on SQLite, is a configuration error."""
    with pytest.raises(ValueError):
        SqlSink("sql", {"table_prefix": "x; DROP"}, SinkContext(tmp_path))
    with pytest.raises(ValueError):
        SqlSink("sql", {"schema": "s"}, SinkContext(tmp_path))


def test_registered_through_the_entry_point():
    """The ``cortex`` entry point ``sql`` registers :class:`SqlSink` via the hook."""
    (entry,) = [ep for ep in entry_points(group="cortex") if ep.name == "sql"]
    plugin = entry.load()
    manager = pluggy.PluginManager("cortex")
    manager.add_hookspecs(hookspecs)
    manager.register(plugin)
    registered = []
    manager.hook.register_sinks(register=registered.append)
    assert registered == [SqlSink]
    assert SqlSink.type_name == "sql" and SqlSink.idempotent is True
