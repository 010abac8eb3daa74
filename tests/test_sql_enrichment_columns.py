"""The SQL sink's typed columns for enriched values on interactions (migration 0002),
upgraded in place over a database holding data, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command

from cortex.sinks import SinkContext
from cortex_sql import SqlSink, migrate
from test_sql_sink import HEAD


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request, tmp_path):
    """``(url, schema)`` of an empty database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db", None
    return request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema")


def test_upgrade_from_0001_keeps_the_rows_and_adds_typed_columns(database, tmp_path):
    url, schema = database
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            migrate._prepare(connection, "", schema)
            command.upgrade(migrate.alembic_config(connection, "", schema), "0001")
        table = f"{schema}.interactions" if schema else "interactions"
        with engine.begin() as connection:
            connection.execute(sa.text(f"INSERT INTO {table} (id, org, event_type) VALUES ('a1', 'demo', 'purchase')"))
    finally:
        engine.dispose()

    sink = SqlSink("sql", {"url": url, "schema": schema}, SinkContext(tmp_path))
    sink.open()
    try:
        assert migrate.current_revision(sink.engine, "", schema) == HEAD
        sink.write([{
            "id": "b2", "org": "demo", "kind": "interaction", "type": "purchase", "event_type": "purchase",
            "language": "de", "browser": "Chrome", "browser_ver": "120.0.0", "os": "Windows", "os_ver": "10",
            "device_type": "desktop", "amount_usd": 54.2, "usd_rate_date": "2024-06-07",
        }])
        with sink.engine.connect() as connection:
            rows = connection.execute(sa.text(
                f"SELECT id, language, browser, browser_ver, os, os_ver, device_type, amount_usd, usd_rate_date "
                f"FROM {table} ORDER BY id")).all()
        assert [tuple(r[:8]) for r in rows] == [
            ("a1", None, None, None, None, None, None, None),
            ("b2", "de", "Chrome", "120.0.0", "Windows", "10", "desktop", 54.2),
        ]
        assert str(rows[1][8]) == "2024-06-07"
    finally:
        sink.close()
