"""Raw events and the ingest error log, page by page (cursor pagination) or streamed whole."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Iterator

import orjson
import sqlalchemy as sa

from cortex.analytics.scope import Scope, not_found
from cortex.analytics.stream import COLUMNS, TRACK_TABLES, event_stream


class BadCursor(ValueError):
    """A cursor this server did not make (or made for another listing)."""


def encode_cursor(moment: datetime, row_id: str) -> str:
    """An opaque cursor for the position after ``(moment, row_id)``."""
    return base64.urlsafe_b64encode(orjson.dumps([moment.isoformat(), row_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(time, id)`` a cursor holds; :class:`BadCursor` for anything else."""
    try:
        moment, row_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(moment), str(row_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadCursor("the cursor is not one this API gave out; start again without ?cursor=") from None


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A row with times as ISO 8601 UTC strings and absent values left out.

    Keys become plain ``str`` (SQLAlchemy names a reserved word such as ``user`` with a
    ``str`` subclass, which orjson refuses).
    """
    out = {}
    for key, value in row.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat().replace("+00:00", "Z")
        elif hasattr(value, "isoformat"):
            value = value.isoformat()
        out[str(key)] = value
    return out


def _page(scope: Scope, query, time_column, id_column, filters: dict[str, Any]) -> dict[str, Any]:
    if filters.get("cursor"):
        moment, row_id = decode_cursor(filters["cursor"])
        query = query.where(sa.or_(time_column < moment, sa.and_(time_column == moment, id_column < row_id)))
    limit = filters["limit"]
    query = query.order_by(time_column.desc(), id_column.desc()).limit(limit + 1)
    with scope.connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(last[time_column.name], last[id_column.name])
    return {"items": [jsonable(row) for row in rows], "next_cursor": next_cursor}


def list_events(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """One page of events, newest first, in the stream's common columns."""
    stream = event_stream(scope, filters)
    return _page(scope, sa.select(stream), stream.c.time, stream.c.id, filters)


def get_event(scope: Scope, event_id: str) -> dict[str, Any]:
    """Every stored column of one event of the scope's org; 404 for any other id."""
    with scope.connect() as conn:
        for name in (*TRACK_TABLES, "interactions"):
            table = scope.table(name)
            row = conn.execute(sa.select(table).where(table.c.id == event_id)).mappings().first()
            if row is not None:
                return {"table": name, **jsonable(dict(row))}
    raise not_found("no such event")


def list_errors(scope: Scope, filters: dict[str, Any]) -> dict[str, Any]:
    """One page of the ingest error log (events refused, with reasons), newest first."""
    table = scope.table("ingest_errors")
    query = sa.select(table).where(table.c.received_at >= filters["start"], table.c.received_at < filters["end"])
    if filters.get("app"):
        query = query.where(table.c.app.in_(filters["app"]))
    return _page(scope, query, table.c.received_at, table.c.id, filters)


def iter_events(scope: Scope, filters: dict[str, Any], batch: int = 2000) -> Iterator[dict[str, Any]]:
    """Every matching event, oldest first, read in batches (constant memory for any size)."""
    stream = event_stream(scope, filters)
    query = sa.select(stream).order_by(stream.c.time, stream.c.id)
    with scope.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
        for row in result.mappings():
            yield jsonable(dict(row))


def count_events(scope: Scope, filters: dict[str, Any]) -> int:
    """How many events match (for an export's progress bar)."""
    stream = event_stream(scope, filters)
    with scope.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(stream)).scalar_one()


EXPORT_COLUMNS = COLUMNS
