"""Rollup tables: per-day aggregates kept up to date as events are written.

Frozen definitions as of this revision (see :mod:`cortex_sql.rollups` for what they hold).
A database that held events before this revision has empty rollups for them: rebuild them
with ``cortex rollups rebuild --org ORG --from DAY --to DAY``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from cortex_sql.migrate import migration_options

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _dimension(name: str, length: int) -> sa.Column:
    return sa.Column(name, sa.String(length), nullable=False, server_default="")


def upgrade() -> None:
    """Create the three rollup tables."""
    prefix, schema = migration_options()
    op.create_table(
        prefix + "rollup_events",
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        _dimension("app", 64), _dimension("type", 64), _dimension("kingdom", 32),
        _dimension("dimension", 16), _dimension("value", 256),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("revenue_usd", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("org", "day", "app", "type", "kingdom", "dimension", "value",
                                name=f"pk_{prefix}rollup_events"),
        schema=schema,
    )
    op.create_table(
        prefix + "rollup_device_days",
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        _dimension("app", 64),
        sa.Column("device", sa.String(128), nullable=False),
        _dimension("os", 16), _dimension("device_type", 16), _dimension("country", 2), _dimension("app_ver", 16),
        _dimension("source", 256),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("revenue_usd", sa.Double, nullable=False),
        sa.Column("types", sa.Integer, nullable=False),
        sa.Column("is_first", sa.SmallInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("org", "day", "app", "device", name=f"pk_{prefix}rollup_device_days"),
        schema=schema,
    )
    op.create_index(f"ix_{prefix}rollup_device_days_org_device", prefix + "rollup_device_days",
                    ["org", "device", "day"], schema=schema)
    op.create_index(f"ix_{prefix}rollup_device_days_org_day_device", prefix + "rollup_device_days",
                    ["org", "day", "device"], schema=schema)
    op.create_table(
        prefix + "rollup_devices",
        sa.Column("org", sa.String(64), nullable=False),
        _dimension("app", 64),
        sa.Column("device", sa.String(128), nullable=False),
        sa.Column("first_day", sa.Date, nullable=False),
        sa.Column("install_day", sa.Date, nullable=True),
        sa.PrimaryKeyConstraint("org", "app", "device", name=f"pk_{prefix}rollup_devices"),
        schema=schema,
    )
    op.create_index(f"ix_{prefix}rollup_devices_org_install_day", prefix + "rollup_devices",
                    ["org", "install_day"], schema=schema)


def downgrade() -> None:
    """Drop the rollup tables."""
    prefix, schema = migration_options()
    for name in ("rollup_devices", "rollup_device_days", "rollup_events"):
        op.drop_table(prefix + name, schema=schema)
