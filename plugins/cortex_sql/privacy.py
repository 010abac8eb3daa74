"""Data-subject requests and retention on the ``sql`` sink's tables.

A person's rows are found by the columns :data:`cortex.subjects.IDENTITY_FIELDS` names
(``user_tag``, ``device_tag``, the social tags, ``user_id`` of the interactions API,
``from_tag`` of messages) and, in ``ingest_errors``, by the same fields of the event and the
bundle as they were sent (JSON).  On SQLite a deletion zeroes the freed bytes
(``secure_delete``) and truncates the WAL afterwards, so that no copy of the rows stays in
the files; PostgreSQL frees the space of deleted rows at its next (auto)vacuum.

Retention deletes by ``event_time`` (``received_at`` in ``ingest_errors``), the column the
``(org, time)`` index of every table starts with, one bounded ``DELETE`` per statement.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import sqlalchemy as sa

from cortex.subjects import Subject
from cortex_sql.rows import TableRows

__all__ = ["delete_subject", "expire", "export_subject", "time_column"]

#: ids deleted per statement
_ID_CHUNK = 500


def subject_clause(rows: TableRows, subject: Subject) -> sa.ColumnElement[bool] | None:
    """The WHERE clause selecting the subject's rows of one table (None: it cannot have any)."""
    table = rows.table
    conditions = []
    for name, values in subject.field_values().items():
        if name in table.c:
            conditions.append(table.c[name].in_(sorted(values)))
        if rows.family.kind == "rejected":
            # as sent: a tag may be a number there, hence the cast to text
            for column in ("payload", "bundle"):
                conditions.append(sa.cast(table.c[column][name].as_string(), sa.String).in_(sorted(values)))
    if not conditions:
        return None
    return sa.and_(table.c.org == subject.org, sa.or_(*conditions))


def export_subject(engine: sa.Engine, tables: Iterable[TableRows], subject: Subject) -> Iterator[dict[str, Any]]:
    """The subject's rows of every table, in record form."""
    with engine.connect() as connection:
        for rows in tables:
            clause = subject_clause(rows, subject)
            if clause is None:
                continue
            for row in connection.execute(sa.select(rows.table).where(clause)).mappings():
                yield rows.record(row)


def delete_subject(engine: sa.Engine, tables: Iterable[TableRows], subject: Subject) -> int:
    """Delete the subject's rows of every table in one transaction; returns how many.

    The rows are found first, outside the transaction (no table has an index on the
    identifiers: finding them reads whole tables), then deleted by id, so that the write
    lock is held only for the deletion itself.  The caller is the sink's only writer.
    """
    tables = list(tables)
    doomed: list[tuple[TableRows, list[str]]] = []
    with engine.connect() as connection:
        for rows in tables:
            clause = subject_clause(rows, subject)
            if clause is not None:
                ids = list(connection.scalars(sa.select(rows.table.c.id).where(clause)))
                if ids:
                    doomed.append((rows, ids))
    if not doomed:
        return 0
    sqlite = engine.dialect.name == "sqlite"
    removed = 0
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        if sqlite:
            raw.execute("PRAGMA secure_delete = ON")
        try:
            with connection.begin():
                for rows, ids in doomed:
                    for start in range(0, len(ids), _ID_CHUNK):
                        chunk = ids[start:start + _ID_CHUNK]
                        statement = rows.table.delete().where(rows.table.c.id.in_(chunk))
                        removed += connection.execute(statement).rowcount
        finally:
            if sqlite:
                raw.execute("PRAGMA secure_delete = OFF")
        if sqlite:
            # the WAL still holds the pages as they were before: copy back and empty it
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return removed


def time_column(rows: TableRows) -> sa.Column:
    """The column retention compares with its cutoff."""
    return rows.table.c.received_at if rows.family.kind == "rejected" else rows.table.c.event_time


def expire(engine: sa.Engine, tables: Iterable[TableRows], policy: Any, limit: int) -> int:
    """Delete at most ``limit`` rows older than the policy allows, a short transaction each."""
    remaining = limit
    tables = list(tables)
    for org in policy.orgs:
        for rows in tables:
            cutoff = policy.cutoff(org, rows.family.table)
            if cutoff is None:
                continue
            table = rows.table
            doomed = (
                sa.select(table.c.id)
                .where(table.c.org == org, time_column(rows) < cutoff)
                .limit(remaining)
            )
            with engine.begin() as connection:
                remaining -= connection.execute(table.delete().where(table.c.id.in_(doomed))).rowcount
            if remaining <= 0:
                return limit
    return limit - remaining
