"""Initial tables: one per event family, plus interactions and ingest errors.

This is the frozen history of :mod:`cortex_sql.tables` as of this revision: a later change to
the ingest schemas needs a new revision, never an edit here (the test suite compares a
migrated database with the table definitions).

Revision ID: 0001
Revises:
Create Date: 2024-06-01
"""

import sqlalchemy as sa
from alembic import op

from cortex_sql.migrate import migration_options

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamp():
    return sa.DateTime(timezone=True)


def _strings(*names_and_lengths):
    return [sa.Column(name, sa.String(length)) for name, length in names_and_lengths]


def _identity():
    return [
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("app", sa.String(64)),
        sa.Column("app_id", sa.Integer),
    ]


def _times():
    return [
        sa.Column("received_at", _timestamp()),
        sa.Column("event_datetime", _timestamp()),
        sa.Column("event_time", _timestamp()),
        sa.Column("clock_skew_seconds", sa.Double),
    ]


def _event_head():
    return [sa.Column("event_index", sa.BigInteger), *_strings(("group_tag", 32))]


def _taxonomy():
    names = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
    return [
        *_strings(*((name, 32) for name in names)),
        *(sa.Column(f"float{i}", sa.Double) for i in range(1, 5)),
    ]


_SOCIAL = (
    ("user_tag", 62), ("facebook_tag", 62), ("twitter_tag", 62), ("google_tag", 62),
    ("game_center_tag", 62),
)


def _bundle(*already):
    fields = (
        ("app_ver", 16), ("server_ver", 16), ("config_ver", 16), *_SOCIAL, ("device_tag", 62),
        ("device_type", 16), ("device_family", 32), ("os", 16), ("os_ver", 16),
        ("browser", 16), ("browser_ver", 16), ("marketplace", 16), ("country", 2),
        ("geo_ip_address", 64), ("language", 16), ("group_tag", 32),
    )
    return _strings(*(field for field in fields if field[0] not in already))


def _enrichment():
    return _strings(("region", 64), ("city", 128))


def _tail():
    return [sa.Column("extra", sa.JSON), sa.Column("warnings", sa.JSON)]


def _typed():
    return [sa.Column("type", sa.String(32))]


def _columns():
    """Every table's columns, by table name without the prefix."""
    return {
        "events": [
            *_identity(), *_typed(), *_times(), *_event_head(), *_taxonomy(),
            *_strings(("online_status", 16)), *_bundle("group_tag"), *_enrichment(), *_tail(),
        ],
        "economy": [
            *_identity(), *_times(), *_event_head(), *_taxonomy(),
            *_strings(("online_status", 16)), sa.Column("spend_amount", sa.Double),
            *_strings(("spend_currency", 16), ("spend_type", 32)), *_bundle("group_tag"),
            *_enrichment(), sa.Column("spend_amount_usd", sa.Double),
            sa.Column("usd_rate_date", sa.Date), *_tail(),
        ],
        "links": [
            *_identity(), *_times(), *_event_head(), *_strings(*_SOCIAL),
            *_bundle("group_tag", *(name for name, _ in _SOCIAL)), *_enrichment(), *_tail(),
        ],
        "messages": [
            *_identity(), *_typed(), *_times(), *_event_head(), *_taxonomy(),
            *_strings(("network", 16), ("channel", 32), ("from_tag", 62)),
            sa.Column("to_list", sa.JSON), *_strings(("to_tag", 62)), *_bundle("group_tag"),
            *_enrichment(), *_tail(),
        ],
        "experiments": [
            *_identity(), *_times(), *_event_head(),
            *_strings(("experiment_name", 32), ("variant_name", 32)),
            *_bundle("group_tag"), *_enrichment(), *_tail(),
        ],
        "app_logs": [
            *_identity(), *_times(), sa.Column("log_line", sa.Text),
            *_strings(("log_level", 16), ("hostname", 64), ("filename", 256),
                      ("remote_address", 64)),
            sa.Column("response_bytes", sa.BigInteger), sa.Column("response_ms", sa.Double),
            *_bundle(), *_enrichment(), *_tail(),
        ],
        "interactions": [
            *_identity(), *_strings(("event_type", 64)), sa.Column("timestamp", _timestamp()),
            *_times(),
            *_strings(("event_id", 128), ("user_id", 128), ("business_id", 128),
                      ("product_id", 128), ("source", 256)),
            sa.Column("event_properties", sa.JSON), sa.Column("device_info", sa.JSON),
            *_strings(("country", 2)), *_enrichment(), *_tail(),
        ],
        "ingest_errors": [
            *_identity(), *_strings(("type", 64), ("endpoint", 64)),
            sa.Column("received_at", _timestamp()), sa.Column("reasons", sa.JSON),
            sa.Column("payload", sa.JSON), sa.Column("bundle", sa.JSON),
        ],
    }


def upgrade() -> None:
    """Create every table with its (org, time) index."""
    prefix, schema = migration_options()
    for table, columns in _columns().items():
        name = prefix + table
        op.create_table(name, *columns, schema=schema)
        time_column = "received_at" if table == "ingest_errors" else "event_time"
        op.create_index(
            f"ix_{name}_org_{time_column}", name, ["org", time_column], schema=schema
        )


def downgrade() -> None:
    """Drop every table (and with it the data)."""
    prefix, schema = migration_options()
    for table in reversed(list(_columns())):
        op.drop_table(prefix + table, schema=schema)
