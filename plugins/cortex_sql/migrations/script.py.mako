"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
from cortex_sql.migrate import migration_options

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    prefix, schema = migration_options()
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    prefix, schema = migration_options()
    ${downgrades if downgrades else "pass"}
