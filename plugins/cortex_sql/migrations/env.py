"""Alembic environment of the ``sql`` sink.

Run by :func:`cortex_sql.migrate.upgrade` with the open connection, the table prefix and
the schema in ``config.attributes``.  Offline mode (``alembic upgrade --sql``) works with a
``sqlalchemy.url`` main option and the same attributes, for DBAs who apply DDL by hand.
"""

from alembic import context

from cortex_sql.migrate import VERSION_TABLE

config = context.config
prefix = config.attributes.get("table_prefix", "")
schema = config.attributes.get("schema")
options = dict(version_table=prefix + VERSION_TABLE, version_table_schema=schema)

if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **options)
    with context.begin_transaction():
        context.run_migrations()
else:
    context.configure(connection=config.attributes["connection"], **options)
    with context.begin_transaction():
        context.run_migrations()
