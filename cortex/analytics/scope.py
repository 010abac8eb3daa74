"""The one scoping layer: what a caller may read, limited to one org.

Query code never sees the sink's tables.  It asks a :class:`Scope` for them and gets
subqueries that already hold only the scope's org (``SELECT * FROM t WHERE org = :org``;
SQLite and PostgreSQL flatten them, so the ``(org, time)`` indexes are used).  A scope is
made only by :func:`scope_for`, which checks the caller's role in the org first, so there
is no code path that reads across orgs.

What a refused caller learns: an org they are not a member of, and one that does not
exist, both answer 404 with the same message; a member whose role is too low gets 403.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from cortex.accounts import ROLE_RANK, Caller
from cortex.analytics.store import AnalyticsStore


#: the tables queries fill as they go: device numbers and day bitmaps (:mod:`cortex.analytics.bitmaps`)
FILLED_BY_QUERIES = ("rollup_device_ids", "rollup_bitmaps")


class AccessDenied(Exception):
    """The caller may not do this; ``status`` is 403 or 404, ``message`` is safe to show."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(what: str = "no such org") -> AccessDenied:
    """The 404 every caller gets for what is not theirs, whether it exists or not."""
    return AccessDenied(404, what)


@dataclass(frozen=True)
class Scope:
    """Read access to one org's rows in the analytics store."""

    store: AnalyticsStore
    org: str
    role: str

    def table(self, name: str, alias: str | None = None) -> sa.Subquery:
        """The sink table ``name`` (unprefixed) holding only this org's rows (named ``alias``
        in the statement, when one table is read twice)."""
        table = self.store.table(name)
        return sa.select(table).where(table.c.org == self.org).subquery(alias or name)

    def filled_table(self, name: str) -> sa.Table:
        """A table the queries themselves fill (:data:`FILLED_BY_QUERIES`: the day bitmaps),
        to write to; every statement on it must name :attr:`org` (:mod:`cortex.analytics.bitmaps` does)."""
        if name not in FILLED_BY_QUERIES:
            raise ValueError(f"{name} is not filled by queries")
        return self.store.table(name)

    @property
    def dialect(self) -> str:
        """The analytics database's dialect name."""
        return self.store.dialect

    def connect(self) -> sa.Connection:
        """A connection to run this scope's selects on."""
        return self.store.engine.connect()


def scope_for(caller: Caller, org: str | None, store: AnalyticsStore, role: str) -> Scope:
    """The scope of ``org`` for ``caller``, who needs at least ``role`` there.

    Raises :class:`AccessDenied`: 404 when the caller is not a member of ``org`` (or it does
    not exist), 403 when their role there is below ``role``.
    """
    if not org:
        raise AccessDenied(400, "say which org to read: ?business_id=ORG (or ?org=ORG)")
    held = caller.role_in(org)
    if held is None:
        raise not_found()
    if ROLE_RANK[held] < ROLE_RANK[role]:
        raise AccessDenied(403, f"this needs the {role} role in {org}; you are {held}")
    return Scope(store, org, held)


def operator_scope(org: str, store: AnalyticsStore) -> Scope:
    """The scope of one org for the command line (whoever runs it can read the databases)."""
    return Scope(store, org, "admin")
