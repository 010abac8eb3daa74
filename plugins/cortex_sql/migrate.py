"""Create and upgrade the sink's tables with Alembic, run from :meth:`SqlSink.open`.

The migration scripts live in ``cortex_sql/migrations``.  Their version table is
``<table_prefix>cortex_sql_version`` so that it never clashes with a user's own Alembic
history in the same database, and so that several sinks with different prefixes can share
one schema.

Several processes may open the sink at once (every gunicorn worker, ``cortex worker``
processes).  The whole upgrade runs in one transaction under a lock: on PostgreSQL a
transaction-level advisory lock, on SQLite the write lock the sink's engine takes with
``BEGIN IMMEDIATE``.  The process that gets the lock second finds the database current and
does nothing.  Other databases get a few retries instead.
"""

from __future__ import annotations

import hashlib
import time
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "migration_options", "upgrade"]

#: the Alembic version table's name (after the table prefix)
VERSION_TABLE = "cortex_sql_version"

SCRIPT_LOCATION = "cortex_sql:migrations"

#: dialects where :func:`upgrade` takes a lock, so a failure is not worth a retry
_LOCKING_DIALECTS = ("postgresql", "sqlite")


def alembic_config(connection: sa.Connection | None, prefix: str, schema: str | None) -> Config:
    """An Alembic configuration for the sink's migrations, built in code (no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes.update(connection=connection, table_prefix=prefix, schema=schema)
    return config


def migration_options() -> tuple[str, str | None]:
    """``(table_prefix, schema)`` of the running migration; for the migration scripts."""
    from alembic import context

    attributes = context.config.attributes
    return attributes.get("table_prefix", ""), attributes.get("schema")


def _lock_key(prefix: str, schema: str | None) -> int:
    digest = hashlib.sha256(f"cortex_sql:{schema or ''}:{prefix}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _prepare(connection: sa.Connection, prefix: str, schema: str | None) -> None:
    """Take the migration lock and create the schema if needed (PostgreSQL)."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(prefix, schema)}
        )
        if schema:
            connection.execute(sa.schema.CreateSchema(schema, if_not_exists=True))


def upgrade(
    engine: sa.Engine, prefix: str = "", schema: str | None = None, *, attempts: int = 5
) -> None:
    """Bring the sink's tables to the newest revision; a no-op when already current."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as connection:
                _prepare(connection, prefix, schema)
                command.upgrade(alembic_config(connection, prefix, schema), "head")
            return
        except sa.exc.DBAPIError:
            # Without a lock, another process creating the same tables makes this one fail
            # (duplicate table, version row); the next attempt finds its work done.
            if engine.dialect.name in _LOCKING_DIALECTS or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def current_revision(
    engine: sa.Engine, prefix: str = "", schema: str | None = None
) -> str | None:
    """The revision the database is at (None before the first upgrade)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"version_table": prefix + VERSION_TABLE, "version_table_schema": schema},
        )
        return context.get_current_revision()
