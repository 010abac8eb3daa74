"""The one-box setup with PostgreSQL: control database and SQL sink on the local server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from conftest import iso

pytestmark = pytest.mark.postgres


def test_control_database_and_sql_sink_on_postgresql(make_cortex, postgres_url, pg_schema):
    url, schema = postgres_url, pg_schema
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    control_url = f"{url}?options=-csearch_path%3D{schema}"
    cortex = make_cortex(control_db=control_url, sinks={"sql": {"type": "sql", "url": url, "schema": schema}})
    try:
        with engine.connect() as conn:
            tables = set(conn.execute(sa.text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"), {"s": schema}).scalars())
        assert {"orgs", "apps", "api_keys"} <= tables, "the control database lives in PostgreSQL"
        events = [{"type": "economy", "event_datetime": iso(), "spend_amount": "2.5", "spend_currency": "EUR",
                   "event_index": 1}, {"type": "bogus", "event_datetime": iso()}]
        assert cortex.post(cortex.bundle(events)).status_code == 200
        second_key, _ = cortex.state.control.create_key("demo", "default")
        assert cortex.post({**cortex.bundle(events), "api_key": second_key}).status_code == 200  # a retry
        cortex.deliver()
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                f'SELECT spend_amount, spend_currency, device_tag, event_time FROM "{schema}".economy')).all()
            errors = conn.execute(sa.text(f'SELECT reasons FROM "{schema}".ingest_errors')).all()
        assert [(r[0], r[1], r[2]) for r in rows] == [(2.5, "EUR", "device-1")]
        assert rows[0][3].tzinfo is not None
        assert len(errors) == 1 and "type" in errors[0][0]
    finally:
        cortex.state.control.dispose()
        engine.dispose()
