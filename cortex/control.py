"""The control database: orgs, their apps and the apps' API keys.

Keys are random strings shown once at creation and stored only as SHA-256 digests (they are
high-entropy, so a fast digest is enough); a key can be revoked, and an app can have several.
SQLite in the data directory by default, any SQLAlchemy database by URL.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("slug", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("org_id", sa.Integer, sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    # None: the server's default (ingest.strict)
    sa.Column("strict", sa.Boolean, nullable=True),
    # rate limits in flask-limiter notation ("100/second;5000/hour"); None: the server's
    # default (rate_limits.per_key / per_ip); "" : no limit for this app
    sa.Column("rate_limit_per_key", sa.String(200), nullable=True),
    sa.Column("rate_limit_per_ip", sa.String(200), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("org_id", "name"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False),
    sa.Column("prefix", sa.String(12), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ControlError(Exception):
    """An operation on orgs, apps or keys cannot be done; the message says why."""


@dataclass(frozen=True)
class KeyOwner:
    """Who an API key belongs to, as the ingest path needs it."""

    key_id: int
    org: str
    app: str
    app_id: int
    strict: bool | None
    #: the app's own rate limits (None: the server default)
    rate_limit_per_key: str | None = None
    rate_limit_per_ip: str | None = None


def hash_key(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ControlStore:
    """Reads and changes orgs, apps and keys in the control database."""

    def __init__(self, url: str):
        self.url = url
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    def create_schema(self) -> None:
        """Create the tables that do not exist yet, and add the nullable columns a table
        made by an older Cortex lacks."""
        metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        # the control schema only ever gains nullable columns: adding them is its migration
        inspector = sa.inspect(self.engine)
        for table in metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                kind = column.type.compile(dialect=self.engine.dialect)
                try:
                    with self.engine.begin() as conn:
                        conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                except sa.exc.DBAPIError:
                    # another process (a gunicorn worker starting at the same time) added it
                    columns = sa.inspect(self.engine).get_columns(table.name)
                    if column.name not in {c["name"] for c in columns}:
                        raise

    def dispose(self) -> None:
        """Close pooled connections (after a fork, or at exit)."""
        self.engine.dispose()

    # orgs ------------------------------------------------------------------------------
    def create_org(self, slug: str, name: str | None = None) -> dict:
        """Create an org; its slug is the ``<org>`` of the ingest URLs."""
        if not SLUG.match(slug):
            raise ControlError(
                f"org name {slug!r} is not usable in URLs: use 1-64 lowercase letters, "
                "digits, '-' or '_', starting with a letter or digit"
            )
        with self.engine.begin() as conn:
            if conn.execute(sa.select(orgs.c.id).where(orgs.c.slug == slug)).first():
                raise ControlError(f"org {slug!r} exists already")
            org_id = conn.execute(
                orgs.insert().values(slug=slug, name=name or slug, created_at=_now())
            ).inserted_primary_key[0]
        return {"id": org_id, "slug": slug, "name": name or slug}

    def list_orgs(self) -> list[dict]:
        """Every org with its number of apps."""
        query = (
            sa.select(orgs.c.id, orgs.c.slug, orgs.c.name, orgs.c.created_at, sa.func.count(apps.c.id).label("apps"))
            .select_from(orgs.outerjoin(apps))
            .group_by(orgs.c.id)
            .order_by(orgs.c.slug)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def _org_id(self, conn, slug: str) -> int:
        row = conn.execute(sa.select(orgs.c.id).where(orgs.c.slug == slug)).first()
        if row is None:
            raise ControlError(f"no org named {slug!r} (see: cortex orgs list)")
        return row[0]

    # apps ------------------------------------------------------------------------------
    def create_app(self, org: str, name: str, strict: bool | None = None) -> dict:
        """Create an app in an org."""
        if not SLUG.match(name):
            raise ControlError(
                f"app name {name!r}: use 1-64 lowercase letters, digits, '-' or '_'"
            )
        with self.engine.begin() as conn:
            org_id = self._org_id(conn, org)
            exists = conn.execute(
                sa.select(apps.c.id).where(apps.c.org_id == org_id, apps.c.name == name)
            ).first()
            if exists:
                raise ControlError(f"app {name!r} exists already in org {org!r}")
            app_id = conn.execute(
                apps.insert().values(org_id=org_id, name=name, strict=strict, created_at=_now())
            ).inserted_primary_key[0]
        return {"id": app_id, "org": org, "name": name, "strict": strict}

    def set_app_strict(self, org: str, name: str, strict: bool | None) -> None:
        """Turn strict mode on or off for one app (None: follow the server default)."""
        with self.engine.begin() as conn:
            app_id = self._app_id(conn, org, name)
            conn.execute(apps.update().where(apps.c.id == app_id).values(strict=strict))

    def set_app_rate_limits(self, org: str, name: str, per_key: str | None = ..., per_ip: str | None = ...) -> None:
        """Set an app's own rate limits (flask-limiter notation; None: the server default,
        "": no limit).  A limit left as ``...`` is not changed."""
        values = {}
        if per_key is not ...:
            values["rate_limit_per_key"] = per_key
        if per_ip is not ...:
            values["rate_limit_per_ip"] = per_ip
        if not values:
            return
        with self.engine.begin() as conn:
            app_id = self._app_id(conn, org, name)
            conn.execute(apps.update().where(apps.c.id == app_id).values(**values))

    def org_apps(self, org: str) -> dict[str, int]:
        """app name -> app id, for every app of ``org`` (empty for an unknown org)."""
        query = sa.select(apps.c.name, apps.c.id).select_from(apps.join(orgs)).where(orgs.c.slug == org)
        with self.engine.connect() as conn:
            return {row[0]: row[1] for row in conn.execute(query)}

    def list_apps(self, org: str | None = None) -> list[dict]:
        """Apps, of one org or all, with their number of live keys."""
        live = sa.func.count(api_keys.c.id).filter(api_keys.c.revoked_at.is_(None))
        query = (
            sa.select(apps.c.id, orgs.c.slug.label("org"), apps.c.name, apps.c.strict,
                      apps.c.rate_limit_per_key, apps.c.rate_limit_per_ip, apps.c.created_at, live.label("keys"))
            .select_from(apps.join(orgs).outerjoin(api_keys))
            .group_by(apps.c.id, orgs.c.slug)
            .order_by(orgs.c.slug, apps.c.name)
        )
        if org:
            query = query.where(orgs.c.slug == org)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def _app_id(self, conn, org: str, name: str) -> int:
        org_id = self._org_id(conn, org)
        row = conn.execute(
            sa.select(apps.c.id).where(apps.c.org_id == org_id, apps.c.name == name)
        ).first()
        if row is None:
            raise ControlError(f"no app named {name!r} in org {org!r} (see: cortex apps list)")
        return row[0]

    # keys ------------------------------------------------------------------------------
    def create_key(self, org: str, app: str, label: str | None = None) -> tuple[str, dict]:
        """Make a new API key for an app; returns the key (shown once) and its record."""
        key = secrets.token_hex(16)
        with self.engine.begin() as conn:
            app_id = self._app_id(conn, org, app)
            key_id = conn.execute(
                api_keys.insert().values(
                    app_id=app_id, prefix=key[:8], key_hash=hash_key(key), label=label, created_at=_now()
                )
            ).inserted_primary_key[0]
        return key, {"id": key_id, "org": org, "app": app, "prefix": key[:8], "label": label}

    def list_keys(self, org: str | None = None, app: str | None = None) -> list[dict]:
        """Key records (never the keys themselves), newest first."""
        query = (
            sa.select(
                api_keys.c.id, orgs.c.slug.label("org"), apps.c.name.label("app"), api_keys.c.prefix,
                api_keys.c.label, api_keys.c.created_at, api_keys.c.revoked_at,
            )
            .select_from(api_keys.join(apps).join(orgs))
            .order_by(api_keys.c.id.desc())
        )
        if org:
            query = query.where(orgs.c.slug == org)
        if app:
            query = query.where(apps.c.name == app)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def revoke_key(self, key_id_or_prefix: str) -> dict:
        """Revoke a key given its id or its prefix; ingest refuses it within seconds."""
        with self.engine.begin() as conn:
            return revoke_by_id_or_prefix(conn, api_keys, key_id_or_prefix, "API key", "cortex keys list")

    def lookup_key(self, key: str) -> KeyOwner | None:
        """The owner of a live key, or None for an unknown or revoked key."""
        query = (
            sa.select(api_keys.c.id, orgs.c.slug, apps.c.name, apps.c.id, apps.c.strict,
                      apps.c.rate_limit_per_key, apps.c.rate_limit_per_ip)
            .select_from(api_keys.join(apps).join(orgs))
            .where(api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None))
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return KeyOwner(*row) if row else None

    def app_names(self) -> dict[int, tuple[str, str]]:
        """app id -> (org slug, app name), for replay and status."""
        query = sa.select(apps.c.id, orgs.c.slug, apps.c.name).select_from(apps.join(orgs))
        with self.engine.connect() as conn:
            return {row[0]: (row[1], row[2]) for row in conn.execute(query)}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def revoke_by_id_or_prefix(
    conn: sa.Connection, table: sa.Table, id_or_prefix: str, noun: str, listing: str,
    restrict: Any = None,
) -> dict:
    """Set ``revoked_at`` on the one row of ``table`` (API keys, account tokens) whose id or
    prefix is ``id_or_prefix``, within ``restrict`` (an extra condition) if given.

    Raises :class:`ControlError` naming ``noun`` and the ``listing`` command when no row or
    several rows match.  Revoking a revoked row changes nothing.
    """
    if id_or_prefix.isdigit():
        # a prefix may be all digits too
        condition = sa.or_(table.c.id == int(id_or_prefix), table.c.prefix == id_or_prefix)
    else:
        condition = table.c.prefix == id_or_prefix
    if restrict is not None:
        condition = sa.and_(condition, restrict)
    rows = conn.execute(sa.select(table.c.id, table.c.revoked_at).where(condition)).all()
    if not rows:
        raise ControlError(f"no {noun} with id or prefix {id_or_prefix!r} (see: {listing})")
    if len(rows) > 1:
        raise ControlError(f"prefix {id_or_prefix!r} matches {len(rows)} {noun.split()[-1]}s; give the id")
    row_id, revoked_at = rows[0]
    if revoked_at is None:
        conn.execute(table.update().where(table.c.id == row_id).values(revoked_at=_now()))
    return {"id": row_id, "revoked": True}
