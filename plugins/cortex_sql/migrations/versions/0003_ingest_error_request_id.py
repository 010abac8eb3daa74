"""The request id on ingest error rows.

Each rejected event keeps the id of the request that sent it (``X-Request-Id``), so an
error row can be matched with the request's log line.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from cortex_sql.migrate import migration_options

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``ingest_errors.request_id``."""
    prefix, schema = migration_options()
    op.add_column(prefix + "ingest_errors", sa.Column("request_id", sa.String(128)), schema=schema)


def downgrade() -> None:
    """Drop ``ingest_errors.request_id``."""
    prefix, schema = migration_options()
    with op.batch_alter_table(prefix + "ingest_errors", schema=schema) as batch:
        batch.drop_column("request_id")
