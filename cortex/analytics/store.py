"""The analytics store: the SQL sink's database, opened for reading.

The query API reads the tables the ``sql`` sink writes (their layout is the sink's,
:mod:`cortex_sql.tables`).  Which sink: ``[analytics] sink = "NAME"``, or, when that is
empty, the only configured sink of type ``sql``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import sqlalchemy as sa

from cortex.config import ConfigError, reveal


def analytics_sink(config: dict) -> tuple[str, dict[str, Any]]:
    """The name and options of the SQL sink the query API reads, by the documented rule."""
    wanted = config.get("analytics", {}).get("sink") or ""
    sql_sinks = {name: table for name, table in config["sinks"].items() if table["type"] == "sql"}
    if wanted:
        if wanted not in sql_sinks:
            raise ConfigError(
                f"analytics.sink = {wanted!r} names no sink of type \"sql\""
                f" (SQL sinks: {', '.join(sql_sinks) or 'none'})"
            )
        return wanted, sql_sinks[wanted]
    if len(sql_sinks) == 1:
        return next(iter(sql_sinks.items()))
    if not sql_sinks:
        raise ConfigError('the query API needs a sink of type "sql"; configure one under [sinks.NAME]')
    raise ConfigError(
        f"there are several SQL sinks ({', '.join(sql_sinks)}); say which one the query API"
        ' reads with [analytics] sink = "NAME"'
    )


class AnalyticsStore:
    """Read access to one SQL sink's tables; the engine is made on first use (after fork)."""

    def __init__(self, config: dict):
        self.sink_name, options = analytics_sink(config)
        self.url = sa.make_url(reveal(options.get("url")) or f"sqlite:///{config['data_dir']}/events.db")
        self.prefix = str(options.get("table_prefix") or "")
        self.schema = options.get("schema") or None
        self.durability = config["queue"]["durability"]
        #: whether the sink keeps the rollup tables (its ``rollups`` option; SQLite and PostgreSQL)
        self.rollups = bool(options.get("rollups", True)) and self.url.get_backend_name() in ("sqlite", "postgresql")
        self._engine: sa.Engine | None = None
        self._tables: dict[str, sa.Table] | None = None
        self._lock = threading.Lock()

    @property
    def dialect(self) -> str:
        """The database's dialect name (``sqlite``, ``postgresql``, ...)."""
        return self.url.get_backend_name()

    def _open(self) -> None:
        from cortex_sql import migrate
        from cortex_sql.engine import create_engine as create_sink_engine
        from cortex_sql.day_bitmaps import define_bitmap_tables
        from cortex_sql.rollups import define_rollup_tables
        from cortex_sql.tables import build_tables

        # The tables exist once the sink has opened; a query may come first, so bring the
        # schema up the way the sink does (a no-op when it is current).
        writer = create_sink_engine(self.url, durability=self.durability)
        try:
            if migrate.current_revision(writer, self.prefix, self.schema) is None:
                migrate.upgrade(writer, self.prefix, self.schema)
        finally:
            writer.dispose()
        options: dict[str, Any] = {"json_deserializer": json.loads}
        if self.dialect == "sqlite":
            options["connect_args"] = {"timeout": 30}
        else:
            options["pool_pre_ping"] = True
        if self.dialect == "postgresql":
            # PostgreSQL's JIT compiles a query whose estimated cost is high; for these
            # queries (tens of milliseconds) compiling took longer than running: 0.1–1 s
            options["connect_args"] = {"options": "-c jit=off"}
        self._engine = sa.create_engine(self.url, **options)
        metadata = sa.MetaData()
        self._tables = build_tables(metadata, self.prefix, self.schema)
        self._tables.update(define_rollup_tables(metadata, self.prefix, self.schema))
        self._tables.update(define_bitmap_tables(metadata, self.prefix, self.schema))

    def _ready(self) -> None:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._open()

    @property
    def engine(self) -> sa.Engine:
        """The engine (made on first use)."""
        self._ready()
        return self._engine

    def table(self, name: str) -> sa.Table:
        """A sink table by its unprefixed name; for :class:`cortex.analytics.scope.Scope` only."""
        self._ready()
        return self._tables[name]

    def dispose(self) -> None:
        """Close pooled connections."""
        if self._engine is not None:
            self._engine.dispose()
