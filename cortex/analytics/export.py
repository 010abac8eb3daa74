"""Exports: raw events or any query's result as CSV or JSON Lines, produced row by row.

Raw events are read from the database in batches and written out as they come, so an
export of any size runs in constant memory, over HTTP (a streamed response) and in
``cortex export`` alike.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Iterator, Mapping

import orjson
from marshmallow import ValidationError

from cortex.analytics import listing
from cortex.analytics.catalog import QUERIES
from cortex.analytics.schemas import FilterSchema
from cortex.analytics.scope import Scope
from cortex.analytics.stream import COLUMNS

#: rows of CSV collected before a chunk is handed on
CSV_CHUNK_ROWS = 500


def export_names() -> list[str]:
    """What can be exported: ``events`` and every query's name."""
    return ["events", *QUERIES]


def export_rows(scope: Scope, name: str, arguments: Mapping[str, Any]) -> tuple[Iterator[dict], list[str] | None]:
    """The rows of an export and their columns (None: taken from the first rows).

    ``arguments`` are the query-string arguments (as for the query itself).
    """
    if name == "events":
        filters = FilterSchema().load(arguments)
        return listing.iter_events(scope, filters), list(COLUMNS)
    query = QUERIES.get(name)
    if query is None:
        raise ValidationError(f"Unknown query; use one of: {', '.join(export_names())}.", "query")
    filters = query.arguments().load(arguments)
    return iter(list(query.rows(query.run(scope, filters)))), None


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def csv_lines(rows: Iterable[dict], columns: list[str] | None = None) -> Iterator[str]:
    """CSV text in chunks: a header, then one line per row (nested values as JSON)."""
    buffer = io.StringIO()
    writer = None
    pending = 0
    for row in rows:
        if writer is None:
            columns = columns or list(row)
            writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
        writer.writerow({key: _cell(value) for key, value in row.items()})
        pending += 1
        if pending >= CSV_CHUNK_ROWS:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    if writer is None and columns:
        csv.writer(buffer, lineterminator="\n").writerow(columns)
    if buffer.tell():
        yield buffer.getvalue()


def jsonl_lines(rows: Iterable[dict]) -> Iterator[bytes]:
    """JSON Lines: one JSON object per row."""
    for row in rows:
        yield orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
