"""Typed columns for what the enrichers add to interactions: language, browser, OS and
device type (from the User-Agent or ``device_info``) and the USD value of purchases.

Track tables had these columns from the start (they are Data Cortex bundle fields, and
``economy`` has ``spend_amount_usd`` and ``usd_rate_date``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from cortex_sql.migrate import migration_options

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (
    ("language", sa.String(16)),
    ("browser", sa.String(16)),
    ("browser_ver", sa.String(16)),
    ("os", sa.String(16)),
    ("os_ver", sa.String(16)),
    ("device_type", sa.String(16)),
    ("amount_usd", sa.Double()),
    ("usd_rate_date", sa.Date()),
)


def upgrade() -> None:
    """Add the columns to ``interactions``."""
    prefix, schema = migration_options()
    with op.batch_alter_table(prefix + "interactions", schema=schema) as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_))


def downgrade() -> None:
    """Drop them again."""
    prefix, schema = migration_options()
    with op.batch_alter_table(prefix + "interactions", schema=schema) as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
