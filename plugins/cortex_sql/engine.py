"""The SQLAlchemy engine of the ``sql`` sink, set up for many writers.

SQLite gets WAL journal mode (readers never block the writer), a busy timeout (writers wait
for each other instead of failing) and ``BEGIN IMMEDIATE`` transactions: a transaction takes
the write lock when it starts, so two writers queue on the busy timeout rather than
deadlocking on a lock upgrade, and DDL runs inside the transaction like everything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event

__all__ = ["create_engine", "dumps_json"]


def dumps_json(value: Any) -> str:
    """JSON text for a JSON column: orjson's speed, ``json``'s range (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, default=str)


def _on_sqlite_connect(busy_timeout_ms: int):
    def on_connect(dbapi_connection, connection_record) -> None:
        # Let SQLAlchemy's "begin" event, not pysqlite, decide where transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    return on_connect


def _on_sqlite_begin(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(
    url: str | sa.URL, *, pool_size: int | None = None, busy_timeout_ms: int = 10_000
) -> sa.Engine:
    """An engine for ``url``; a SQLite file's directory is created if missing."""
    url = sa.make_url(url)
    # json.loads for reading: orjson would turn integers beyond 64 bits into floats.
    options: dict[str, Any] = {"json_serializer": dumps_json, "json_deserializer": json.loads}
    if pool_size:
        options["pool_size"] = int(pool_size)
    if url.get_backend_name() != "sqlite":
        engine = sa.create_engine(url, pool_pre_ping=True, **options)
        return engine
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, **options)
    event.listen(engine, "connect", _on_sqlite_connect(busy_timeout_ms))
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine
