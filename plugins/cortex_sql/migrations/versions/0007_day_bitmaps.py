"""Device numbers and per-day device bitmaps for exact distinct counts.

Frozen definitions as of this revision (see :mod:`cortex_sql.day_bitmaps` for what they
hold).  Both tables start empty and fill as queries need them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from cortex_sql.migrate import migration_options

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``rollup_device_ids`` and ``rollup_bitmaps``."""
    prefix, schema = migration_options()
    op.create_table(
        prefix + "rollup_device_ids",
        sa.Column("id", sa.Integer, sa.Identity(start=1), primary_key=True),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("device", sa.String(128), nullable=False),
        sa.UniqueConstraint("org", "device", name=f"uq_{prefix}rollup_device_ids_org_device"),
        schema=schema,
    )
    op.create_table(
        prefix + "rollup_bitmaps",
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("slice", sa.String(16), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("bitmap", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("org", "day", "app", "slice", "value", name=f"pk_{prefix}rollup_bitmaps"),
        schema=schema,
    )


def downgrade() -> None:
    """Drop both tables."""
    prefix, schema = migration_options()
    for name in ("rollup_bitmaps", "rollup_device_ids"):
        op.drop_table(prefix + name, schema=schema)
