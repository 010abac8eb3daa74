"""The bundled ``sql`` sink: records in typed SQL tables, exactly once in effect.

Configuration::

    [sinks.warehouse]
    type = "sql"
    url = "postgresql+psycopg://cortex@db/analytics"   # default: SQLite in the data dir
    schema = "cortex"                                   # optional (PostgreSQL)
    table_prefix = ""                                   # optional

See :mod:`cortex_sql.tables` for the table layout.
"""

from __future__ import annotations

from cortex.hookspecs import hookimpl
from cortex_sql.sink import SqlSink

__all__ = ["SqlSink", "register_sinks"]


@hookimpl
def register_sinks(register) -> None:
    """Register the ``sql`` sink type."""
    register(SqlSink)
