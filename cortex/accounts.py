"""Accounts of the people who read the data: users, their roles in orgs, and API tokens.

Users log in with an email and a password; each belongs to orgs with one role per org:

- ``admin``: manages the org's apps, keys and users, and can do all an analyst can;
- ``analyst``: queries and exports the org's data;
- ``viewer``: reads dashboards and summaries.

Passwords are hashed with Argon2id (``argon2-cffi``, its RFC 9106 low-memory profile): a
memory-hard KDF, the first choice of OWASP's password storage guidance, whose encoded hash
carries its own salt and parameters, so that hashes made with older parameters are still
checked and then upgraded at the next login.

Bearer tokens for the API are random (256 bits) and shown once; like ingest keys they are
stored only as SHA-256 digests, a fast digest being enough for a high-entropy secret.  A
token may expire and can be revoked; it acts for its user, with the user's roles at the
time of each request, and stops working when the user is disabled.

The tables live in the control database, next to orgs, apps and keys.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cortex.control import ControlError, metadata, orgs, revoke_by_id_or_prefix

ROLES = ("viewer", "analyst", "admin")
#: a role's rank: a role may do everything a lower-ranked one may
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}

TOKEN_PREFIX = "ctx_"
MIN_PASSWORD_LENGTH = 10
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("org_id", sa.Integer, sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

_hasher = PasswordHasher()
#: checked against when the email is unknown, so that a login takes as long either way
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True)
class Caller:
    """Who is asking: a user and their role in each org (by org slug)."""

    user_id: int
    email: str
    roles: dict[str, str] = field(default_factory=dict)
    #: the token used, if any (None for a web session or the command line)
    token_id: int | None = None

    def role_in(self, org: str) -> str | None:
        """The caller's role in ``org``, or None when they are not a member."""
        return self.roles.get(org)


def hash_token(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes back; they were stored in UTC.
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`, else a :class:`ControlError`."""
    if role not in ROLE_RANK:
        raise ControlError(f"role {role!r} does not exist; use one of: {', '.join(ROLES)}")
    return role


class AccountStore:
    """Reads and changes users, memberships and tokens in the control database."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def create_schema(self) -> None:
        """Create the account tables that do not exist yet."""
        metadata.create_all(self.engine, tables=[users, memberships, api_tokens])

    # users -------------------------------------------------------------------------------
    def create_user(self, email: str, password: str) -> dict:
        """Create a user; the email is their login name (kept in lower case)."""
        email = email.strip().lower()
        if not EMAIL.match(email):
            raise ControlError(f"{email!r} is not an email address")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ControlError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
        with self.engine.begin() as conn:
            if conn.execute(sa.select(users.c.id).where(users.c.email == email)).first():
                raise ControlError(f"user {email} exists already")
            user_id = conn.execute(
                users.insert().values(email=email, password_hash=_hasher.hash(password), created_at=_now())
            ).inserted_primary_key[0]
        return {"id": user_id, "email": email}

    def _user_id(self, conn, email: str) -> int:
        row = conn.execute(sa.select(users.c.id).where(users.c.email == email.strip().lower())).first()
        if row is None:
            raise ControlError(f"no user {email} (see: cortex users list)")
        return row[0]

    def set_role(self, email: str, org: str, role: str | None) -> None:
        """Give a user a role in an org, or take their membership away (``role=None``)."""
        if role is not None:
            check_role(role)
        with self.engine.begin() as conn:
            user_id = self._user_id(conn, email)
            org_row = conn.execute(sa.select(orgs.c.id).where(orgs.c.slug == org)).first()
            if org_row is None:
                raise ControlError(f"no org named {org!r} (see: cortex orgs list)")
            where = (memberships.c.user_id == user_id) & (memberships.c.org_id == org_row[0])
            conn.execute(memberships.delete().where(where))
            if role is not None:
                conn.execute(memberships.insert().values(user_id=user_id, org_id=org_row[0], role=role))

    def set_disabled(self, email: str, disabled: bool = True) -> None:
        """Disable a user (their sessions and tokens stop working at once) or enable them."""
        with self.engine.begin() as conn:
            user_id = self._user_id(conn, email)
            conn.execute(
                users.update().where(users.c.id == user_id).values(disabled_at=_now() if disabled else None)
            )

    def set_password(self, email: str, password: str) -> None:
        """Replace a user's password."""
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ControlError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
        with self.engine.begin() as conn:
            user_id = self._user_id(conn, email)
            conn.execute(users.update().where(users.c.id == user_id).values(password_hash=_hasher.hash(password)))

    def list_users(self, org: str | None = None) -> list[dict]:
        """Users with their roles (``{"org": role}``), of one org or all."""
        query = (
            sa.select(users.c.id, users.c.email, users.c.created_at, users.c.disabled_at,
                      orgs.c.slug, memberships.c.role)
            .select_from(users.outerjoin(memberships).outerjoin(orgs, orgs.c.id == memberships.c.org_id))
            .order_by(users.c.email, orgs.c.slug)
        )
        found: dict[int, dict] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                user = found.setdefault(row.id, {
                    "id": row.id, "email": row.email, "created_at": _aware(row.created_at),
                    "disabled_at": _aware(row.disabled_at), "roles": {},
                })
                if row.slug is not None:
                    user["roles"][row.slug] = row.role
        listed = list(found.values())
        if org is not None:
            listed = [user for user in listed if org in user["roles"]]
        return listed

    def _roles(self, conn, user_id: int) -> dict[str, str]:
        query = (
            sa.select(orgs.c.slug, memberships.c.role)
            .select_from(memberships.join(orgs, orgs.c.id == memberships.c.org_id))
            .where(memberships.c.user_id == user_id)
        )
        return {slug: role for slug, role in conn.execute(query)}

    def authenticate(self, email: str, password: str) -> Caller | None:
        """The caller for a correct email and password of an enabled user, else None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(users.c.id, users.c.email, users.c.password_hash, users.c.disabled_at)
                .where(users.c.email == email.strip().lower())
            ).first()
        if row is None:
            _verify(_DUMMY_HASH, password)
            return None
        if not _verify(row.password_hash, password) or row.disabled_at is not None:
            return None
        if _hasher.check_needs_rehash(row.password_hash):
            with self.engine.begin() as conn:
                conn.execute(users.update().where(users.c.id == row.id).values(password_hash=_hasher.hash(password)))
        return self.caller(row.id)

    def caller(self, user_id: int, token_id: int | None = None) -> Caller | None:
        """The caller for an enabled user, with their current roles; None if disabled or gone."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(users.c.id, users.c.email).where(users.c.id == user_id, users.c.disabled_at.is_(None))
            ).first()
            if row is None:
                return None
            return Caller(row.id, row.email, self._roles(conn, row.id), token_id)

    # tokens ------------------------------------------------------------------------------
    def create_token(self, email_or_user_id: str | int, label: str | None = None,
                     expires_in: timedelta | None = None) -> tuple[str, dict]:
        """A new bearer token for a user; returns the token (shown once) and its record."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        prefix = token[: len(TOKEN_PREFIX) + 8]
        expires_at = _now() + expires_in if expires_in is not None else None
        with self.engine.begin() as conn:
            if isinstance(email_or_user_id, int):
                user_id = email_or_user_id
            else:
                user_id = self._user_id(conn, email_or_user_id)
            token_id = conn.execute(
                api_tokens.insert().values(
                    user_id=user_id, prefix=prefix, token_hash=hash_token(token), label=label,
                    created_at=_now(), expires_at=expires_at,
                )
            ).inserted_primary_key[0]
        return token, {"id": token_id, "prefix": prefix, "label": label, "expires_at": expires_at}

    def list_tokens(self, user_id: int | None = None) -> list[dict]:
        """Token records (never the tokens), of one user or all, newest first."""
        query = (
            sa.select(api_tokens.c.id, users.c.email, api_tokens.c.prefix, api_tokens.c.label,
                      api_tokens.c.created_at, api_tokens.c.expires_at, api_tokens.c.revoked_at)
            .select_from(api_tokens.join(users))
            .order_by(api_tokens.c.id.desc())
        )
        if user_id is not None:
            query = query.where(api_tokens.c.user_id == user_id)
        with self.engine.connect() as conn:
            return [
                {key: _aware(value) if isinstance(value, datetime) else value for key, value in row._mapping.items()}
                for row in conn.execute(query)
            ]

    def revoke_token(self, token_id_or_prefix: str | int, user_id: int | None = None) -> dict:
        """Revoke a token by id or prefix; with ``user_id``, only that user's own tokens."""
        restrict = api_tokens.c.user_id == user_id if user_id is not None else None
        with self.engine.begin() as conn:
            return revoke_by_id_or_prefix(
                conn, api_tokens, str(token_id_or_prefix), "token", "cortex tokens list", restrict
            )

    def caller_for_token(self, token: str) -> Caller | None:
        """The caller a live token acts for; None for unknown, expired or revoked tokens."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_tokens.c.id, api_tokens.c.user_id, api_tokens.c.expires_at)
                .where(api_tokens.c.token_hash == hash_token(token), api_tokens.c.revoked_at.is_(None))
            ).first()
        if row is None:
            return None
        expires_at = _aware(row.expires_at)
        if expires_at is not None and expires_at <= _now():
            return None
        return self.caller(row.user_id, token_id=row.id)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
