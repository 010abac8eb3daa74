"""Tables of the per-day device bitmaps, and keeping them true to the rollups.

Exact distinct counts over many days (monthly actives, paying devices of a month,
retention) would read every row of the daily active sets, ``rollup_device_days``.
The query API reads compressed bitmaps of device numbers instead (roaring bitmaps,
:mod:`cortex.analytics.bitmaps` builds and reads them):

``rollup_device_ids``
    a number for each device of an org (``id``, 32 bits), the position of its bit.
``rollup_bitmaps``
    per org, day, app, ``slice`` and ``value``, the set of device numbers of that
    day's active devices in that slice: ``slice = ""`` all of them, ``os`` … ``source``
    those with that value, ``type`` those with an event of that type, ``paying``,
    ``new`` (first day in the app) and ``install`` (first install in the app); rows of
    ``app = ""`` hold ``cohort`` (first install in any app) and ``day``, an empty mark
    that the day was built.

Bitmaps are built when a query first needs a day that is over, and stored; today's are
built for each query and never stored.  They are dropped again when a day's rollups
change: :func:`invalidate_days` when a batch adds records of a past day (a device's
first day or install moving earlier changes later days too, so the app's later days
go as well), :func:`forget_org` when rollups are recomputed.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Iterable

import sqlalchemy as sa

__all__ = ["BITMAP_TABLES", "define_bitmap_tables", "forget_org", "invalidate_days", "lock_for_building"]

BITMAP_TABLES = ("rollup_device_ids", "rollup_bitmaps")
_DEVICE_DAYS = "rollup_device_days"


def define_bitmap_tables(metadata: sa.MetaData, prefix: str = "", schema: str | None = None) -> dict[str, sa.Table]:
    """Define the device number and bitmap tables in ``metadata``; returns them by unprefixed name."""
    device_ids = sa.Table(
        prefix + "rollup_device_ids", metadata,
        # SQLite: INTEGER PRIMARY KEY (the rowid); PostgreSQL: an identity column
        sa.Column("id", sa.Integer, sa.Identity(start=1), primary_key=True),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("device", sa.String(128), nullable=False),
        sa.UniqueConstraint("org", "device", name=f"uq_{prefix}rollup_device_ids_org_device"),
        schema=schema,
    )
    bitmaps = sa.Table(
        prefix + "rollup_bitmaps", metadata,
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("slice", sa.String(16), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("bitmap", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("org", "day", "app", "slice", "value", name=f"pk_{prefix}rollup_bitmaps"),
        schema=schema,
    )
    return {"rollup_device_ids": device_ids, "rollup_bitmaps": bitmaps}


@lru_cache(maxsize=64)
def _tables_beside(device_days_name: str, schema: str | None) -> dict[str, sa.Table]:
    prefix = device_days_name[: -len(_DEVICE_DAYS)]
    return define_bitmap_tables(sa.MetaData(), prefix, schema)


def tables_beside(device_days: sa.Table) -> dict[str, sa.Table]:
    """The bitmap tables that go with a ``rollup_device_days`` table (same prefix and schema)."""
    return _tables_beside(device_days.name, device_days.schema)


def invalidate_days(connection: sa.Connection, device_days: sa.Table, touched: Iterable[tuple]) -> None:
    """Drop the stored bitmaps a batch made stale, in the batch's transaction.

    ``touched``: the ``(org, app, day)`` the batch added records to; ``device_days``:
    the ``rollup_device_days`` table written (it names the prefix and schema).  Today's
    bitmaps are never stored, so a batch of today costs nothing; for a past day the
    app's bitmaps of that day and later ones go (and the org's ``app = ""`` rows), as a
    device's first day and install may have moved earlier.  One statement per batch.
    """
    today = datetime.now(timezone.utc).date()
    earliest: dict[tuple[str, str], date] = {}
    for org, app, day in touched:
        if day.__class__ is not date:  # SQLite's rollups may hand the day over as ISO text
            day = date.fromisoformat(str(day)[:10])
        if day < today and earliest.get((org, app), day) >= day:
            earliest[(org, app)] = day
    if not earliest:
        return
    bitmaps = tables_beside(device_days)["rollup_bitmaps"]
    _lock(connection, bitmaps, {org for org, _ in earliest}, shared=True)
    connection.execute(
        bitmaps.delete().where(bitmaps.c.org == sa.bindparam("b_org"), bitmaps.c.day >= sa.bindparam("b_day"),
                               bitmaps.c.app.in_([sa.bindparam("b_app"), ""])),
        [{"b_org": org, "b_app": app, "b_day": day} for (org, app), day in earliest.items()],
    )


def forget_org(connection: sa.Connection, device_days: sa.Table, org: str) -> None:
    """After ``org``'s rollups were recomputed: drop its stored bitmaps, and the numbers of
    devices no longer in its daily active sets (a deleted data subject's device)."""
    tables = tables_beside(device_days)
    bitmaps, device_ids = tables["rollup_bitmaps"], tables["rollup_device_ids"]
    _lock(connection, bitmaps, {org}, shared=True)
    connection.execute(bitmaps.delete().where(bitmaps.c.org == org))
    still_active = sa.exists().where(device_days.c.org == device_ids.c.org, device_days.c.device == device_ids.c.device)
    connection.execute(device_ids.delete().where(device_ids.c.org == org, ~still_active))


def lock_for_building(connection: sa.Connection, bitmaps: sa.Table, org: str) -> None:
    """Hold off, until the end of the transaction, the sink's writes that would drop ``org``'s
    bitmaps: on PostgreSQL an advisory lock, on SQLite the database's write lock (``BEGIN
    IMMEDIATE``: the rows read are then the newest, and no batch commits until the end).

    A query builds a day's bitmaps from rows it read and then stores them.  Without the
    lock a batch of that day could commit in between, its delete finding nothing to drop
    yet, and the bitmaps stored would miss its devices.  With it, the batch either
    commits first (and the rows read hold its devices) or deletes the bitmaps after they
    are stored.
    """
    if connection.dialect.name == "sqlite":
        if not connection.connection.dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        return
    _lock(connection, bitmaps, {org}, shared=False)


def _lock(connection: sa.Connection, bitmaps: sa.Table, orgs: set[str], shared: bool) -> None:
    """Transaction-level advisory locks, one per org: shared for writers, exclusive for builders."""
    if connection.dialect.name != "postgresql":
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    names = [f"cortex {bitmaps.schema or ''}.{bitmaps.name} {org}" for org in sorted(orgs)]
    connection.execute(sa.text(f"SELECT {function}(hashtext(name)) FROM unnest(CAST(:names AS text[])) AS name"),
                       {"names": names})
