"""The ``sql`` sink: every record in typed tables of any SQLAlchemy database."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, timezone
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from marshmallow import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

from cortex.sinks import PermanentError, Sink
from cortex_sql import migrate
from cortex_sql import privacy
from cortex_sql.bulk import BulkWriter
from cortex_sql.engine import create_engine
from cortex_sql.rollups import RollupWriter, define_rollup_tables
from cortex_sql.rows import TableRows
from cortex_sql.tables import FAMILIES, build_tables, family_of

__all__ = ["SqlSink"]

OPTIONS = {"url", "table_prefix", "schema", "pool_size", "busy_timeout", "rollups"}

#: letters, digits, underscores; short enough for index names within PostgreSQL's 63
_PREFIX = re.compile(r"^[A-Za-z0-9_]{0,30}$")

#: dialects with ``INSERT ... ON CONFLICT (id) DO NOTHING``
_UPSERT_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}

#: ids looked up per query where a dialect has no ON CONFLICT
_LOOKUP_CHUNK = 500

#: PostgreSQL's datatype_mismatch and cannot_coerce: a parameter of the wrong type
_VALUE_TYPE_SQLSTATES = frozenset({"42804", "42846"})


class SqlSink(Sink):
    """Stores records in SQL tables, one per event family, idempotent on the record id.

    Options: ``url`` (SQLAlchemy URL; default ``sqlite:///<data_dir>/events.db``),
    ``table_prefix`` (before every table name), ``schema`` (PostgreSQL schema, created if
    missing), ``pool_size``, ``busy_timeout`` (SQLite, milliseconds).

    On SQLite (pysqlite) and PostgreSQL (psycopg) a batch is written by
    :class:`~cortex_sql.bulk.BulkWriter`: plain tuples and one ``executemany`` per table and
    column set, bypassing SQLAlchemy's per-row processing.  Other databases and drivers go
    through SQLAlchemy Core (``INSERT ... ON CONFLICT`` where the dialect has it, otherwise
    a look-up of the ids already stored).  On SQLite, every commit is fsynced only when the
    context's ``durability`` is ``"fsync"`` (see :mod:`cortex_sql.engine`).
    """

    type_name = "sql"
    description = "Typed SQL tables (SQLite, PostgreSQL, any SQLAlchemy database), exactly once"
    idempotent = True

    def __init__(self, name, options, context):
        super().__init__(name, options, context)
        unknown = set(self.options) - OPTIONS
        if unknown:
            context.logger.warning(
                "sink %s: unknown options %s ignored", name, ", ".join(sorted(unknown))
            )
        self.table_prefix = str(self.options.get("table_prefix") or "")
        if not _PREFIX.match(self.table_prefix):
            raise ValueError(
                f"sink {name}: table_prefix may hold only letters, digits and underscores"
                " (30 at most)"
            )
        self.schema = self.options.get("schema") or None
        self.url = sa.make_url(
            self.options.get("url") or f"sqlite:///{context.data_dir}/events.db"
        )
        if self.schema and self.url.get_backend_name() == "sqlite":
            raise ValueError(f"sink {name}: schema is not supported on SQLite")
        self.engine: sa.Engine | None = None
        #: by unprefixed table name
        self._rows: dict[str, TableRows] = {}
        self._statements: dict[TableRows, Any] = {}
        #: the fast path, where the database and driver have one
        self._bulk: BulkWriter | None = None
        #: keeps the rollup tables up to date (option ``rollups``, default on)
        self.rollups_enabled = bool(self.options.get("rollups", True))
        self._rollups: RollupWriter | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create the engine and bring the tables to the newest migration."""
        self.close()
        self.engine = create_engine(
            self.url,
            pool_size=self.options.get("pool_size"),
            busy_timeout_ms=int(self.options.get("busy_timeout", 10_000)),
            durability=self.context.durability,
        )
        migrate.upgrade(self.engine, self.table_prefix, self.schema)
        tables = build_tables(sa.MetaData(), self.table_prefix, self.schema)
        upsert_insert = _UPSERT_INSERTS.get(self.engine.dialect.name)
        for family in FAMILIES:
            rows = self._rows[family.table] = TableRows(family, tables[family.table])
            if upsert_insert is not None:
                table = rows.table
                self._statements[rows] = upsert_insert(table).on_conflict_do_nothing(
                    index_elements=[table.c.id]
                )
        if BulkWriter.supports(self.engine.dialect):
            self._bulk = BulkWriter(self.engine.dialect, self._rows.values())
        if self.rollups_enabled and RollupWriter.supports(self.engine.dialect):
            rollup_tables = define_rollup_tables(sa.MetaData(), self.table_prefix, self.schema)
            self._rollups = RollupWriter(self.engine.dialect, rollup_tables, tables)
        elif self.rollups_enabled:
            self.context.logger.warning(
                "sink %s: rollups are kept on SQLite and PostgreSQL only; the query API reads"
                " the raw tables", self.name)

    def close(self) -> None:
        """Release the connection pool."""
        self._bulk = None
        self._rollups = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def describe(self) -> dict[str, Any]:
        """Name, type, database URL without its password, prefix and schema."""
        return {
            **super().describe(),
            "url": self.url.render_as_string(hide_password=True),
            "dialect": self.url.get_backend_name(),
            "table_prefix": self.table_prefix,
            "schema": self.schema,
            "rollups": self.rollups_enabled,
        }

    # -- writing ---------------------------------------------------------------------------

    def _table_rows(self, record: dict[str, Any]) -> TableRows:
        family = family_of(record.get("kind"), record.get("type"))
        if family is None:
            raise PermanentError(
                f"no table for records of kind {record.get('kind')!r}"
                f" and type {record.get('type')!r}"
            )
        return self._rows[family.table]

    def write(self, records: list[dict[str, Any]]) -> None:
        """Store ``records`` in one transaction; records stored before are skipped."""
        if self.engine is None:
            raise RuntimeError(f"sink {self.name} is not open")
        if not records:
            return
        if self._bulk is not None:
            groups = self._bulk.group(records)
            if self._rollups is not None:
                try:
                    self._run(self._all_new_rolled_up(records), groups)
                    return
                except _NotAllNew:
                    pass  # some were stored before (a batch sent again): the careful way
            self._run(self._rolled_up(self._bulk.insert, records), groups)
            return
        batches: dict[TableRows, list[dict[str, Any]]] = defaultdict(list)
        try:
            for record in records:
                rows = self._table_rows(record)
                batches[rows].append(rows.row(record))
        except (ValidationError, ValueError, TypeError, AttributeError) as exc:
            raise PermanentError(f"record {record.get('id')!r}: {exc}") from exc
        self._run(self._rolled_up(self._insert_all, records), batches)

    def _rolled_up(self, insert, records: list[dict[str, Any]]):
        """``insert``, followed in its transaction by the rollups of the records it added."""
        rollups = self._rollups
        if rollups is None:
            return insert

        def insert_and_roll_up(connection: sa.Connection, batches) -> None:
            stored = rollups.stored_ids(connection, records)
            insert(connection, batches)
            rollups.apply(connection, records, stored)

        return insert_and_roll_up

    def _all_new_rolled_up(self, records: list[dict[str, Any]]):
        """The bulk insert, followed by the rollups of all ``records``, or :class:`_NotAllNew`
        (rolling the transaction back) when the database already held some of them.

        Nearly every batch is new, so this skips looking the batch's ids up before writing;
        the rows the inserts added are counted instead.
        """
        rollups, bulk = self._rollups, self._bulk

        def insert_and_roll_up(connection: sa.Connection, groups) -> None:
            if bulk.insert(connection, groups) != len({record["id"] for record in records}):
                raise _NotAllNew()
            rollups.apply(connection, records, set())

        return insert_and_roll_up

    def recompute_rollups(self, org: str, start, end, secure: bool = False) -> None:
        """Rebuild ``org``'s rollups of days ``start`` … ``end`` (dates, inclusive) from the
        raw tables, e.g. after rows were deleted; in one transaction.

        ``secure``: on SQLite, zero the freed pages and empty the WAL afterwards, so that
        no copy of the rows removed stays in the files (for a data subject's deletion).
        """
        from cortex_sql.rollups import recompute

        if self.engine is None:
            raise RuntimeError(f"sink {self.name} is not open")
        metadata = sa.MetaData()
        raw = build_tables(metadata, self.table_prefix, self.schema)
        rollup_tables = define_rollup_tables(metadata, self.table_prefix, self.schema)
        sqlite = secure and self.engine.dialect.name == "sqlite"
        with self.engine.connect() as connection:
            dbapi = connection.connection.dbapi_connection
            if sqlite:
                dbapi.execute("PRAGMA secure_delete = ON")
            try:
                with connection.begin():
                    recompute(connection, rollup_tables, raw, org, start, end)
            finally:
                if sqlite:
                    dbapi.execute("PRAGMA secure_delete = OFF")
            if sqlite:
                dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _run(self, insert, batches) -> None:
        """``insert(connection, batches)`` in one transaction; data errors made permanent."""
        try:
            with self.engine.begin() as connection:
                insert(connection, batches)
        except Exception as exc:
            if _is_data_error(exc):
                raise PermanentError(str(exc)) from exc
            raise

    def _insert_all(self, connection: sa.Connection, batches: dict[TableRows, list]) -> None:
        for rows, batch in batches.items():
            self._insert(connection, rows, batch)

    def _insert(self, connection: sa.Connection, rows: TableRows, batch: list[dict]) -> None:
        statement = self._statements.get(rows)
        if statement is not None:
            connection.execute(statement, batch)
            return
        # No ON CONFLICT: leave out ids stored before (and repeats within the batch).
        table = rows.table
        new = {row["id"]: row for row in batch}
        ids = list(new)
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            for stored in connection.scalars(sa.select(table.c.id).where(table.c.id.in_(chunk))):
                new.pop(stored, None)
        if new:
            connection.execute(table.insert(), list(new.values()))

    # -- reading ---------------------------------------------------------------------------

    def read_records(self, kinds: Iterable[str] | str | None = None) -> list[dict[str, Any]]:
        """Every stored record (of ``kinds``, if given) in record form, in ``seq`` order.

        For tests and tools, not for the hot path: it reads whole tables.
        """
        if self.engine is None:
            raise RuntimeError(f"sink {self.name} is not open")
        if isinstance(kinds, str):
            kinds = (kinds,)
        wanted = set(kinds) if kinds is not None else None
        records = []
        with self.engine.connect() as connection:
            for rows in self._rows.values():
                if wanted is not None and rows.family.kind not in wanted:
                    continue
                result = connection.execute(sa.select(rows.table))
                records.extend(rows.record(row) for row in result.mappings())
        records.sort(key=lambda r: (r.get("seq") or 0, r["id"]))
        return records


    # -- data subjects and retention -------------------------------------------------------

    def _open_tables(self) -> list[TableRows]:
        if self.engine is None:
            raise RuntimeError(f"sink {self.name} is not open")
        return list(self._rows.values())

    def export_subject(self, subject) -> Iterator[dict[str, Any]]:
        """Every row of the subject in every table, in record form."""
        return privacy.export_subject(self.engine, self._open_tables(), subject)

    def delete_subject(self, subject) -> int:
        """Delete the subject's rows from every table (``ingest_errors`` too); returns how many.

        The rollups of the days the subject's events were on are then recomputed from what
        is left, so that no aggregate still counts the person (nor holds their device).
        """
        tables = self._open_tables()
        days = self._subject_days(tables, subject) if self._rollups is not None else None
        removed = privacy.delete_subject(self.engine, tables, subject)
        if days is not None:
            self.recompute_rollups(subject.org, *days, secure=True)
        return removed

    def _subject_days(self, tables: list[TableRows], subject):
        """The first and last day of the subject's rolled-up events, or None."""
        from cortex_sql.rollups import RAW_TABLES

        first = last = None
        with self.engine.connect() as connection:
            for rows in tables:
                if rows.family.table not in RAW_TABLES:
                    continue
                clause = privacy.subject_clause(rows, subject)
                if clause is None:
                    continue
                time = rows.table.c.event_time
                low, high = connection.execute(sa.select(sa.func.min(time), sa.func.max(time)).where(clause)).one()
                if low is None:
                    continue
                low, high = _as_utc(low).date(), _as_utc(high).date()
                first = low if first is None else min(first, low)
                last = high if last is None else max(last, high)
        return None if first is None else (first, last)

    def expire(self, policy, limit: int) -> int:
        """Delete at most ``limit`` rows past the retention of their org and table.

        When rows went, the rollups of their days are recomputed from what is left (so
        that they follow the raw tables, device ids included).
        """
        removed = privacy.expire(self.engine, self._open_tables(), policy, limit)
        if removed and self._rollups is not None:
            self._expire_rollups(policy)
        return removed

    def _expire_rollups(self, policy) -> None:
        from cortex_sql.rollups import RAW_TABLES

        device_days = define_rollup_tables(sa.MetaData(), self.table_prefix, self.schema)["rollup_device_days"]
        for org in policy.orgs:
            cutoffs = [c for c in (policy.cutoff(org, name) for name in RAW_TABLES) if c is not None]
            if not cutoffs:
                continue
            with self.engine.connect() as connection:
                oldest = connection.execute(
                    sa.select(sa.func.min(device_days.c.day)).where(device_days.c.org == org)).scalar_one()
            if oldest is None:
                continue
            oldest = oldest if isinstance(oldest, date) else date.fromisoformat(str(oldest))
            newest_cut = _as_utc(max(cutoffs)).date()
            if oldest <= newest_cut:
                self.recompute_rollups(org, oldest, newest_cut)


class _NotAllNew(Exception):
    """Some records of the batch were stored before; it is written again the careful way."""


def _as_utc(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back (they are UTC); PostgreSQL aware ones."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _is_data_error(exc: BaseException) -> bool:
    """True for failures that retrying the same data cannot fix."""
    if isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError)):
        return True
    if isinstance(exc, (sa.exc.ProgrammingError, sa.exc.InterfaceError)):
        # The driver refused a parameter before the database saw it: psycopg says so with
        # no SQLSTATE ("cannot adapt type"), SQLite with "Error binding parameter".  Or
        # PostgreSQL refused a parameter's type for its column (a bool for a BIGINT): the
        # statements are the sink's own, made from its tables, so only a value does that.
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", "")
        return (
            sqlstate is None
            or sqlstate in _VALUE_TYPE_SQLSTATES
            or "binding parameter" in str(orig)
        )
    if isinstance(exc, sa.exc.DBAPIError):
        return False
    # A value a type's bind processor could not convert, or the driver refused outright.
    return isinstance(exc, (sa.exc.StatementError, ValueError, TypeError, OverflowError))
