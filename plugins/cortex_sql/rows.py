"""Conversion between sink records and the rows of one table.

Records are flat dicts (see :mod:`cortex.sinks`); a row holds every column of its table,
None where the record has no such field.  Keys the table has no column for (``kind``,
``context``, ...) are left out; ISO 8601 timestamps become aware datetimes.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Any

import sqlalchemy as sa

from cortex.ingest.fields import format_timestamp, parse_timestamp
from cortex_sql.tables import Family, UtcDateTime

__all__ = ["TableRows"]


def _record_time(moment: datetime) -> str:
    """A stored datetime in the records' canonical form (microseconds kept when present)."""
    if moment.microsecond % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return format_timestamp(moment)


def _utc_datetime(value: Any) -> datetime:
    """An ISO 8601 string (or a datetime) as an aware UTC datetime."""
    if value.__class__ is str:
        return parse_timestamp(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    raise ValueError(f"not a date and time: {value!r}")


def _date(value: Any) -> date:
    """An ISO 8601 date string (or a date) as a date."""
    if value.__class__ is str:
        return date.fromisoformat(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    raise ValueError(f"not a date: {value!r}")


class TableRows:
    """Turns records into rows of one table, and rows back into records."""

    def __init__(self, family: Family, table: sa.Table):
        self.family = family
        self.table = table
        self.columns = frozenset(table.c.keys())
        self._empty = dict.fromkeys(table.c.keys())
        self._timestamps = tuple(c.name for c in table.c if isinstance(c.type, UtcDateTime))
        self._dates = tuple(c.name for c in table.c if type(c.type) is sa.Date)
        self._skew = "clock_skew_seconds" in self.columns
        #: rejected records hold whatever was sent: their strings are made to fit instead
        self._fit = (
            {c.name: c.type.length for c in table.c if isinstance(c.type, sa.String)}
            if family.kind == "rejected"
            else None
        )

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        """The row for ``record``; raises ``ValueError`` for an unreadable time or date."""
        row = self._empty.copy()
        columns = self.columns
        for key, value in record.items():
            if key in columns:
                row[key] = value
        for name in self._timestamps:
            if row[name] is not None:
                row[name] = _utc_datetime(row[name])
        for name in self._dates:
            if row[name] is not None:
                row[name] = _date(row[name])
        if self.family.type_column and row[self.family.type_column] is None:
            row[self.family.type_column] = record.get("type")
        if self._skew and row["clock_skew_seconds"] is None:
            sent, corrected = row["event_datetime"], row["event_time"]
            if sent is not None and corrected is not None and sent != corrected:
                row["clock_skew_seconds"] = (sent - corrected).total_seconds()
        if self._fit is not None:
            self._fit_strings(row)
        return row

    def _fit_strings(self, row: dict[str, Any]) -> None:
        for name, length in self._fit.items():
            value = row[name]
            if value is None:
                continue
            if not isinstance(value, str):
                value = json.dumps(value, default=str)
            value = value.replace("\x00", "")
            row[name] = value[:length] if length else value

    def record(self, row: sa.RowMapping | dict[str, Any]) -> dict[str, Any]:
        """The record form of a stored row: absent fields absent, times as ISO strings."""
        record: dict[str, Any] = {"kind": self.family.kind}
        for key, value in row.items():
            if value is None:
                continue
            if isinstance(value, datetime):
                value = _record_time(value)
            elif isinstance(value, date):
                value = value.isoformat()
            record[key] = value
        if self.family.type_column:
            record.setdefault("type", record.get(self.family.type_column))
        else:
            record["type"] = self.family.fixed_type
        return record
