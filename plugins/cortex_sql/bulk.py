"""Bulk inserts without SQLAlchemy's per-row work, for SQLite (pysqlite) and PostgreSQL
(psycopg 3).

``connection.execute(insert, list_of_dicts)`` processes every row in Python: a dict of all
the table's columns (most of them NULL) and every value through its type's bind processor
(on SQLite an ISO string becomes a datetime and then a string again).  That was most of the
cost of a write.  :class:`BulkWriter` instead turns a batch into plain tuples for the DBAPI
cursor's ``executemany``:

- Records are grouped by table and by *layout*: the columns the record has, i.e. its keys
  that are columns of its table, plus the computed type column and ``clock_skew_seconds``.
  Records of one SDK share a layout, so a batch makes a handful of groups.  Each group is
  one ``INSERT INTO t (c1, c2, ...) VALUES (...) ON CONFLICT (id) DO NOTHING``, built once
  per table and column tuple and kept.  A column a record does not have is left out of its
  INSERT and stays NULL, as before; a key whose value is None is inserted as NULL.
- Values are converted once, only where the column type needs it, into what SQLAlchemy's
  types would have sent, so the stored data (and what SQLAlchemy reads back) is unchanged:

  ===========  =========================================  ==================================
  column       SQLite                                     PostgreSQL
  ===========  =========================================  ==================================
  timestamp    UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``    aware ``datetime``
  date         text ``YYYY-MM-DD``                        ``date``
  float        ``float(value)``                           ``float(value)``
  JSON         JSON text (orjson)                         JSON text, ``CAST(%s AS JSON)``
  ===========  =========================================  ==================================

  A canonical record time (``2024-06-01T13:45:30.123Z``) becomes SQLite's text by slicing,
  once :meth:`datetime.fromisoformat` has found it a real date and time; any other form
  (offsets, microseconds, ``datetime`` objects) goes through the general parser of
  :mod:`cortex_sql.rows`.  Rejected records' strings are fitted to their columns as
  :class:`~cortex_sql.rows.TableRows` does it.
- On PostgreSQL a group is sent in executemany calls of :data:`PG_CHUNK_ROWS` rows.

:meth:`BulkWriter.group` raises :class:`~cortex.sinks.PermanentError` naming the record for
a value it cannot convert, before anything is written.  A value that the driver or the
database refuses fails the whole statement; the sink classifies that error as it always has.
Records with the same id in one batch but different layouts go to different statements, so
which of them is stored is not the batch order (the dispatcher re-sends identical records).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from operator import itemgetter
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from marshmallow import ValidationError

from cortex.sinks import PermanentError
from cortex_sql.engine import dumps_json
from cortex_sql.rows import TableRows, _date, _utc_datetime
from cortex_sql.tables import UtcDateTime, family_of

__all__ = ["BulkWriter", "pg_datetime", "sqlite_date", "sqlite_datetime"]

#: (dialect, driver) pairs :class:`BulkWriter` is made and tested for
SUPPORTED = frozenset({("sqlite", "pysqlite"), ("postgresql", "psycopg")})

#: layouts (and statements) kept per table; only odd, varied records ever fill this
MAX_LAYOUTS = 256

#: rows per executemany on PostgreSQL.  psycopg pipelines an executemany (sends every row
#: before it reads the results); over TCP, a long pipeline now and then stalls for 200 ms
#: (two of psycopg's 100 ms waits, TCP flow control on a new connection), and 1,000-row
#: calls stalled in about one batch of ten in a benchmark on localhost.  100-row calls
#: never did, and cost about 5% of throughput.
PG_CHUNK_ROWS = 100

#: the driver's parameter style -> its placeholder (also the rollup writer's)
PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}

_fromisoformat = datetime.fromisoformat

if sys.version_info >= (3, 11):
    _check_iso = _fromisoformat
else:  # no "Z" before 3.11

    def _check_iso(value: str) -> datetime:
        return _fromisoformat(value[:-1] + "+00:00")

Converter = Callable[[Any], Any]


# --- value conversion -------------------------------------------------------------------------


def _sqlite_text(moment: datetime) -> str:
    """SQLAlchemy's SQLite storage format of a (UTC) datetime."""
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (
        moment.year, moment.month, moment.day,
        moment.hour, moment.minute, moment.second, moment.microsecond,
    )


#: canonical timestamp -> its SQLite text; the records of a batch repeat their times (a
#: bundle's received_at, events sent together), so most conversions are a lookup
_SQLITE_TEXTS: dict[str, str] = {}
_MAX_SQLITE_TEXTS = 8192


def sqlite_datetime(value: Any) -> str:
    """A timestamp as SQLAlchemy's SQLite ``DateTime`` stores it: UTC text, microseconds.

    ``2024-06-01T13:45:30.123Z`` → ``2024-06-01 13:45:30.123000``.  Raises ``ValueError``
    (or ``ValidationError``) for a value that is not a date and time.
    """
    if value.__class__ is str:
        text = _SQLITE_TEXTS.get(value)
        if text is not None:
            return text
        if (
            len(value) == 24
            and value[4:20:3] == "--T::."  # 2024-06-01T13:45:30.123Z
            and value[23] == "Z"
            and value[11:13] < "24"  # no 24:00, which a newer fromisoformat might take
        ):
            _check_iso(value)  # a real date and time (digits where digits go), or ValueError
            text = value[:23].replace("T", " ") + "000"
            if len(_SQLITE_TEXTS) >= _MAX_SQLITE_TEXTS:
                _SQLITE_TEXTS.clear()
            _SQLITE_TEXTS[value] = text
            return text
    return _sqlite_text(_utc_datetime(value))


def pg_datetime(value: Any) -> datetime:
    """A timestamp as an aware datetime, for a ``timestamptz`` column.

    Raises like :func:`sqlite_datetime`.
    """
    if value.__class__ is str and value[-1:] == "Z":
        try:
            return _fromisoformat(value[:-1] + "+00:00")  # "Z" only from Python 3.11
        except ValueError:
            pass  # the general parser decides (and words the error)
    return _utc_datetime(value)


def sqlite_date(value: Any) -> str:
    """A date as SQLAlchemy's SQLite ``Date`` stores it: ``YYYY-MM-DD``."""
    return _date(value).isoformat()


def _fitter(length: int | None) -> Converter:
    """Rejected records keep whatever was sent: any value made a string that fits."""

    def fit(value: Any) -> str:
        if not isinstance(value, str):
            value = json.dumps(value, default=str)
        value = value.replace("\x00", "")
        return value[:length] if length else value

    return fit


def _clock_skew(sent: Any, corrected: Any) -> float | None:
    """``event_datetime - event_time`` in seconds, None when equal (as TableRows does)."""
    if sent is None or corrected is None or sent == corrected:
        return None
    return (_utc_datetime(sent) - _utc_datetime(corrected)).total_seconds() or None


# --- layouts ----------------------------------------------------------------------------------


class _Layout:
    """How records with one tuple of keys become rows of one INSERT statement."""

    __slots__ = ("statement", "row")

    def __init__(self, statement: str, row: Callable[[dict[str, Any]], tuple]):
        self.statement = statement
        self.row = row


#: the value a column takes when the record has None (or no such key) there
_TYPE_FALLBACK = "record.get('type')"
_SKEW_FALLBACK = "clock_skew(record['event_datetime'], record['event_time'])"


def _row_maker(
    plain: list[str], computed: list[tuple[str | None, Converter | None, str | None]]
) -> Callable[[dict[str, Any]], tuple]:
    """The function from a record to its row's values, doing only what the layout needs.

    The row is the values of the record keys ``plain`` as they are, then one value per
    ``computed`` entry ``(key, converter, fallback)``: the record's value at ``key`` (or
    None when ``key`` is None), the ``fallback`` expression's value when that is None, and
    then, unless None, through the ``converter``.

    The function is generated as source, as :func:`collections.namedtuple` does: a loop
    over the converters per row would cost as much as the conversions.  Only the table's
    own column names go into the source, through :func:`repr`.
    """
    if not computed:
        if len(plain) > 1:
            return itemgetter(*plain)
        (key,) = plain
        return lambda record: (record[key],)
    namespace: dict[str, Any] = {"clock_skew": _clock_skew}
    if len(plain) > 1:
        namespace["plain"] = itemgetter(*plain)
        head = "plain(record) + "
    elif plain:
        head = f"(record[{plain[0]!r}],) + "
    else:
        head = ""
    lines = ["def row(record):"]
    values = []
    for index, (key, convert, fallback) in enumerate(computed):
        value = f"v{index}"
        if key is None:
            lines.append(f"    {value} = {fallback}")
        else:
            lines.append(f"    {value} = record[{key!r}]")
            if fallback is not None:
                lines.append(f"    if {value} is None:")
                lines.append(f"        {value} = {fallback}")
        if convert is None:
            values.append(value)
        else:
            namespace[f"convert{index}"] = convert
            values.append(f"None if {value} is None else convert{index}({value})")
    lines.append(f"    return {head}({', '.join(values)},)")
    exec("\n".join(lines), namespace)  # noqa: S102 - see the docstring
    return namespace["row"]


class _TablePlan:
    """The INSERT statements and layouts of one table."""

    def __init__(self, rows: TableRows, dialect: sa.Dialect):
        table, family = rows.table, rows.family
        preparer = dialect.identifier_preparer
        postgres = dialect.name == "postgresql"
        placeholder = PLACEHOLDERS[dialect.paramstyle]
        # The preparer doubles a "%" in identifiers where the paramstyle needs it (psycopg).
        self.table_sql = preparer.format_table(table)
        self.id_sql = preparer.quote("id")
        self.names = tuple(column.name for column in table.c)
        self.type_column = family.type_column
        self.has_skew = "clock_skew_seconds" in self.names
        self.quoted: dict[str, str] = {}
        self.placeholders: dict[str, str] = {}
        self.converters: dict[str, Converter] = {}
        for column in table.c:
            name, type_ = column.name, column.type
            self.quoted[name] = preparer.quote(name)
            self.placeholders[name] = placeholder
            if isinstance(type_, UtcDateTime):
                self.converters[name] = pg_datetime if postgres else sqlite_datetime
            elif type(type_) is sa.Date:
                self.converters[name] = _date if postgres else sqlite_date
            elif isinstance(type_, sa.Float):
                # SQLAlchemy's SQLite Float does float(value); on PostgreSQL the same
                # conversion turns a value the column cannot take into a PermanentError
                # naming the record, and a bool into 1.0 as on SQLite.
                self.converters[name] = float
            elif isinstance(type_, sa.JSON):
                self.converters[name] = dumps_json
                if postgres:
                    self.placeholders[name] = f"CAST({placeholder} AS JSON)"
            elif family.kind == "rejected" and isinstance(type_, sa.String):
                self.converters[name] = _fitter(type_.length)
        self.layouts: dict[tuple[str, ...], _Layout] = {}
        self._statements: dict[tuple[str, ...], str] = {}

    def statement(self, columns: tuple[str, ...]) -> str:
        """``INSERT ... ON CONFLICT (id) DO NOTHING`` of ``columns``, built once."""
        text = self._statements.get(columns)
        if text is None:
            if len(self._statements) >= MAX_LAYOUTS:
                self._statements.clear()
            text = (
                f"INSERT INTO {self.table_sql} ({', '.join(self.quoted[c] for c in columns)})"
                f" VALUES ({', '.join(self.placeholders[c] for c in columns)})"
                f" ON CONFLICT ({self.id_sql}) DO NOTHING"
            )
            self._statements[columns] = text
        return text

    def layout(self, keys: tuple[str, ...]) -> _Layout:
        """The layout of records with ``keys`` (in this order), made and kept on first use.

        Its columns: the table's columns among ``keys`` (those taken as they are first,
        then those converted, each in table order); the type column, from the record's
        ``type`` where the record has None or no such key; ``clock_skew_seconds``, computed
        where the record has both times and None or no such key.
        """
        present = set(keys)
        if "id" not in present:
            raise ValueError("the record has no id")
        type_column = self.type_column
        skew = self.has_skew and "event_datetime" in present and "event_time" in present
        plain: list[str] = []
        computed: list[tuple[str, tuple[str | None, Converter | None, str | None]]] = []
        for name in self.names:
            convert = self.converters.get(name)
            if name == type_column and type_column != "type" and (
                name in present or "type" in present
            ):
                key = name if name in present else "type"
                computed.append((name, (key, convert, _TYPE_FALLBACK)))
            elif name == "clock_skew_seconds" and skew:
                key = name if name in present else None
                computed.append((name, (key, convert, _SKEW_FALLBACK)))
            elif name not in present:
                continue
            elif convert is not None:
                computed.append((name, (name, convert, None)))
            else:
                plain.append(name)
        columns = (*plain, *(name for name, _ in computed))
        row = _row_maker(plain, [spec for _, spec in computed])
        layout = _Layout(self.statement(columns), row)
        if len(self.layouts) >= MAX_LAYOUTS:
            self.layouts.clear()
        self.layouts[keys] = layout
        return layout


class BulkWriter:
    """Writes batches of records to the sink's tables with one executemany per layout."""

    def __init__(self, dialect: sa.Dialect, tables: Iterable[TableRows]):
        self._plans = {rows.family.table: _TablePlan(rows, dialect) for rows in tables}
        #: rows per executemany call (None: all of a group in one)
        self.chunk_rows = PG_CHUNK_ROWS if dialect.name == "postgresql" else None

    @staticmethod
    def supports(dialect: sa.Dialect) -> bool:
        """True for the databases and drivers this class is built and tested for."""
        return (dialect.name, dialect.driver) in SUPPORTED and dialect.paramstyle in PLACEHOLDERS

    def group(self, records: Iterable[dict[str, Any]]) -> dict[str, list[tuple]]:
        """The rows of ``records`` by INSERT statement, in the order statements first occur.

        Raises :class:`PermanentError` for a record no table is made for, or with a value
        that cannot be converted.
        """
        groups: dict[str, list[tuple]] = {}
        plans = self._plans
        record: Any = None
        try:
            for record in records:
                family = family_of(record.get("kind"), record.get("type"))
                if family is None:
                    raise PermanentError(
                        f"no table for records of kind {record.get('kind')!r}"
                        f" and type {record.get('type')!r}"
                    )
                plan = plans[family.table]
                keys = tuple(record)
                layout = plan.layouts.get(keys)
                if layout is None:
                    layout = plan.layout(keys)
                row = layout.row(record)
                bucket = groups.get(layout.statement)
                if bucket is None:
                    groups[layout.statement] = [row]
                else:
                    bucket.append(row)
        except (ValidationError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            name = record.get("id") if isinstance(record, dict) else record
            raise PermanentError(f"record {name!r}: {exc}") from exc
        return groups

    def insert(self, connection: sa.Connection, groups: dict[str, list[tuple]]) -> int:
        """Run every group's statement with its rows, in the caller's transaction; returns
        the number of rows added (ids stored before add none)."""
        chunk = self.chunk_rows
        added = 0
        for statement, rows in groups.items():
            if chunk is None or len(rows) <= chunk:
                added += connection.exec_driver_sql(statement, rows).rowcount
                continue
            for start in range(0, len(rows), chunk):
                added += connection.exec_driver_sql(statement, rows[start : start + chunk]).rowcount
        return added
