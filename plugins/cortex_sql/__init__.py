"""The bundled ``sql`` sink: records in typed SQL tables, exactly once in effect.

Configuration::

    [sinks.warehouse]
    type = "sql"
    url = "postgresql+psycopg://cortex@db/analytics"   # default: SQLite in the data dir
    schema = "cortex"                                   # optional (PostgreSQL)
    table_prefix = ""                                   # optional

See :mod:`cortex_sql.tables` for the table layout.

Durability follows the queue's ``durability`` setting: on SQLite, ``"os"`` (the default)
commits with ``synchronous = NORMAL`` (a stored batch survives ``kill -9`` of any process;
the WAL is fsynced at checkpoints), ``"fsync"`` with ``synchronous = FULL`` (every commit
is fsynced and survives power loss).  See :mod:`cortex_sql.engine`.  Other databases keep
their own settings (PostgreSQL: ``synchronous_commit``).

On SQLite and PostgreSQL (psycopg) batches are written by :mod:`cortex_sql.bulk`, which
bypasses SQLAlchemy's per-row processing; other databases go through SQLAlchemy Core.
"""

from __future__ import annotations

from cortex.hookspecs import hookimpl
from cortex_sql.sink import SqlSink

__all__ = ["SqlSink", "register_sinks"]


@hookimpl
def register_sinks(register) -> None:
    """Register the ``sql`` sink type."""
    register(SqlSink)
