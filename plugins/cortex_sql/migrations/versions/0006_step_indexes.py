"""Indexes for reading one kind of event in a time range: funnel steps, experiment conversions.

``(org, type, event_time, device_tag)`` and ``(org, kingdom, type, event_time, device_tag)`` on
``events``, ``(org, type, event_time, device_tag)`` on ``messages`` and
``(org, event_type, event_time, user_id)`` on ``interactions``.  Before them a funnel step
read every event of the range; the device column at the end lets the index alone say which
devices did the step and when.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-24
"""

from alembic import op

from cortex_sql.migrate import migration_options

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

#: table -> the indexed columns after ``org`` (as in ``cortex_sql.tables.STEP_INDEXES`` now)
INDEXES = {
    "events": (("type", "event_time", "device_tag"), ("kingdom", "type", "event_time", "device_tag")),
    "messages": (("type", "event_time", "device_tag"),),
    "interactions": (("event_type", "event_time", "user_id"),),
}


def _name(prefix: str, table: str, columns: tuple[str, ...]) -> str:
    return f"ix_{prefix}{table}_org_{'_'.join(columns[:-1])}"


def upgrade() -> None:
    """Create the step indexes."""
    prefix, schema = migration_options()
    for table, indexes in INDEXES.items():
        for columns in indexes:
            op.create_index(_name(prefix, table, columns), prefix + table, ["org", *columns], schema=schema)


def downgrade() -> None:
    """Drop the step indexes."""
    prefix, schema = migration_options()
    for table, indexes in INDEXES.items():
        for columns in indexes:
            op.drop_index(_name(prefix, table, columns), prefix + table, schema=schema)
