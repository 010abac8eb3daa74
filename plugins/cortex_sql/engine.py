"""The SQLAlchemy engine of the ``sql`` sink, set up for many writers.

SQLite gets WAL journal mode (readers never block the writer), a busy timeout (writers wait
for each other instead of failing) and ``BEGIN IMMEDIATE`` transactions: a transaction takes
the write lock when it starts, so two writers queue on the busy timeout rather than
deadlocking on a lock upgrade, and DDL runs inside the transaction like everything else.

SQLite's ``synchronous`` setting follows the queue's durability (``SinkContext.durability``),
so that the sink promises what the queue promises, no more and no less:

- ``"os"``: ``synchronous = NORMAL``.  In WAL mode a commit is written to the WAL file
  (into the operating system's page cache) without an fsync; the WAL is fsynced only at
  checkpoints.  A committed batch survives ``kill -9`` of any process, as the queue's own
  entries do; a power loss or operating-system crash can lose the last commits (the
  database stays consistent), a risk the queue's ``"os"`` mode takes for its entries too.
  It saves an fsync per committed batch.
- ``"fsync"``: ``synchronous = FULL``: every commit fsyncs the WAL, and survives power loss.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event

__all__ = ["SYNCHRONOUS", "create_engine", "dumps_json"]

#: SQLite's ``synchronous`` setting for each queue durability (anything else: ``FULL``)
SYNCHRONOUS = {"os": "NORMAL", "fsync": "FULL"}


#: SQLite settings of every sink connection.  The defaults (a 2 MiB page cache, a
#: checkpoint every 1,000 WAL pages) made the dispatcher re-read index pages on most
#: commits and copy the hot pages at the end of every index back into the database file
#: many times over; these keep the pages a batch touches in memory and checkpoint rarely.
SQLITE_TUNING = (
    "cache_size = -32768",  # KiB: up to 32 MiB of pages per connection
    "mmap_size = 268435456",  # reads straight from the OS page cache, no copy
    "wal_autocheckpoint = 16384",  # pages: about 64 MiB of WAL between checkpoints
)


def dumps_json(value: Any) -> str:
    """JSON text for a JSON column: orjson's speed, ``json``'s range (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, default=str)


def _on_sqlite_connect(busy_timeout_ms: int, synchronous: str):
    def on_connect(dbapi_connection, connection_record) -> None:
        # Let SQLAlchemy's "begin" event, not pysqlite, decide where transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            _set_wal(cursor, busy_timeout_ms / 1000)
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            for pragma in SQLITE_TUNING:
                cursor.execute(f"PRAGMA {pragma}")
        finally:
            cursor.close()

    return on_connect


def _set_wal(cursor: sqlite3.Cursor, timeout: float) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds a lock.

    Switching a new database to WAL can fail with "database is locked" at once, without
    waiting for the busy timeout, when another process opens it at the same moment (every
    worker opens the sink when it starts).  The mode is kept in the file, so the retry
    usually finds the database in WAL mode already.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _on_sqlite_begin(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(
    url: str | sa.URL,
    *,
    pool_size: int | None = None,
    busy_timeout_ms: int = 10_000,
    durability: str = "fsync",
) -> sa.Engine:
    """An engine for ``url``; a SQLite file's directory is created if missing.

    ``durability`` (``"os"`` or ``"fsync"``) sets SQLite's ``synchronous`` pragma (see the
    module documentation); other databases keep their own settings.
    """
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
    synchronous = SYNCHRONOUS.get(durability, "FULL")
    event.listen(engine, "connect", _on_sqlite_connect(busy_timeout_ms, synchronous))
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine
