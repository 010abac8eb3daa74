"""SQL expressions that differ between SQLite and PostgreSQL: buckets, days and epochs.

On SQLite the sink stores times as UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``); on
PostgreSQL as ``timestamptz``, read here in UTC whatever the session's time zone.
"""

from __future__ import annotations

import sqlalchemy as sa

_SQLITE_BUCKETS = {
    "hour": lambda t: sa.func.strftime("%Y-%m-%dT%H:00:00Z", t),
    "day": lambda t: sa.func.strftime("%Y-%m-%d", t),
    # the Monday of the week: the next Sunday (or this one), then six days back
    "week": lambda t: sa.func.date(t, "weekday 0", "-6 days"),
    "month": lambda t: sa.func.strftime("%Y-%m-01", t),
}

_PG_FORMATS = {"hour": 'YYYY-MM-DD"T"HH24:00:00"Z"', "day": "YYYY-MM-DD", "week": "YYYY-MM-DD", "month": "YYYY-MM-DD"}


def utc(dialect: str, moment):
    """``moment`` as a UTC timestamp without zone (PostgreSQL) or as it is (SQLite)."""
    if dialect == "postgresql":
        return sa.func.timezone("UTC", moment)
    return moment


def bucket(dialect: str, moment, size: str):
    """The label of the ``size`` bucket ``moment`` falls in (hour: ``2024-06-01T13:00:00Z``, else a date)."""
    if dialect == "sqlite":
        return _SQLITE_BUCKETS[size](moment)
    return sa.func.to_char(sa.func.date_trunc(size, utc(dialect, moment)), _PG_FORMATS[size])


def day_number(dialect: str, moment):
    """Whole UTC days since 1970-01-01: day arithmetic the same way on every database."""
    if dialect == "sqlite":
        return sa.cast(sa.func.julianday(sa.func.date(moment)) - 2440587.5, sa.Integer)
    return sa.cast(sa.func.floor(sa.extract("epoch", moment) / 86400), sa.Integer)


def plus_seconds(dialect: str, moment, seconds: int):
    """``moment`` plus whole ``seconds``, as a value of the same kind as the stored times, so
    that it compares with them exactly (no floating-point epoch, no per-row conversion)."""
    if dialect == "sqlite":
        # the sink stores 'YYYY-MM-DD HH:MM:SS.ffffff': shift the whole seconds, keep the
        # microseconds as they are (SQLite's date functions would round them to milliseconds)
        shifted = sa.func.strftime("%Y-%m-%d %H:%M:%S", sa.func.substr(moment, 1, 19), f"+{int(seconds)} seconds")
        return shifted.op("||")(sa.func.substr(moment, 20))
    return moment + sa.func.make_interval(0, 0, 0, 0, 0, 0, int(seconds))


def day_bucket(dialect: str, day, size: str):
    """The label of the ``size`` bucket (day, week or month) a DATE column's day falls in.

    A day is its own bucket: grouping by the column itself lets an index give the order.
    """
    if size == "day":
        return day
    if dialect == "sqlite":
        return _SQLITE_BUCKETS[size](day)
    return sa.func.to_char(sa.func.date_trunc(size, sa.cast(day, sa.DateTime)), _PG_FORMATS[size])


def bytewise(dialect: str, value):
    """``value`` compared bytewise (``COLLATE "C"`` on PostgreSQL) when it is grouped,
    sorted or joined on: ids need no language collation, and it is several times faster."""
    if dialect == "postgresql":
        return value.collate("C")
    return value


def count_distinct(dialect: str, value):
    """``count(DISTINCT value)``; on PostgreSQL compared bytewise (``COLLATE "C"``), which
    gives the same count for the ids counted here and sorts several times faster than a
    language collation."""
    return sa.func.count(sa.distinct(bytewise(dialect, value)))
