"""Who is calling the API: a bearer token, or the web login's session.

``Authorization: Bearer ctx_...`` is checked on every request (revocation and expiry take
effect at once).  Without it, the signed session cookie of the web login is used; a request
that changes something on a session must then also carry the session's CSRF token in
``X-CSRF-Token``, so that another site cannot make the browser do it.

The answers a caller without valid credentials gets:

* no credentials at all (no ``Authorization`` header, no login session): ``401`` with
  ``WWW-Authenticate: Bearer``, which tells a client to log in or send a token;
* a presented token that is not valid (unknown, malformed, expired, revoked, or its user is
  disabled): ``403`` with one body for every reason (:data:`INVALID_TOKEN`), so the answer
  does not tell which, and ``WWW-Authenticate: Bearer error="invalid_token"``.
"""

from __future__ import annotations

from flask import current_app, g, request, session
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms.validators import ValidationError as CSRFValidationError

from cortex.accounts import AccountStore, Caller

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: the one message of every refused token, whatever the reason
INVALID_TOKEN = ("the bearer token is not valid (unknown, expired or revoked, or its user is disabled); "
                 "create a new one: cortex tokens create EMAIL")


class Unauthenticated(Exception):
    """No credentials at all; answered 401 with ``WWW-Authenticate: Bearer``."""


class InvalidToken(Exception):
    """Credentials were sent and are not valid; answered 403 with :data:`INVALID_TOKEN`."""

    def __init__(self) -> None:
        super().__init__(INVALID_TOKEN)


class SessionRefused(Exception):
    """A login session's changing request without its CSRF token; answered 403."""


def accounts() -> AccountStore:
    """The account store of the current app."""
    from cortex.analytics.setup import accounts_of

    return accounts_of(current_app.extensions["cortex"])


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for another scheme or
    an empty token."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def bearer_caller(store: AccountStore, header: str) -> Caller:
    """The caller an ``Authorization`` header's bearer token acts for, or :class:`InvalidToken`
    (another scheme, an empty, unknown, expired or revoked token, a disabled user)."""
    token = bearer_token(header)
    caller = store.caller_for_token(token) if token else None
    if caller is None:
        raise InvalidToken()
    return caller


def current_caller() -> Caller:
    """The caller of this request; :class:`Unauthenticated`, :class:`InvalidToken` or
    :class:`SessionRefused` when there is none."""
    if "caller" in g:
        return g.caller
    header = request.headers.get("Authorization", "")
    if header.strip():
        caller = bearer_caller(accounts(), header)
    else:
        user_id = session.get("user_id")
        caller = accounts().caller(user_id) if isinstance(user_id, int) else None
        if caller is None:
            raise Unauthenticated("log in first: send Authorization: Bearer <token> (cortex tokens create)")
        if request.method not in SAFE_METHODS:
            try:
                validate_csrf(request.headers.get("X-CSRF-Token"))
            except (CSRFError, CSRFValidationError):
                raise SessionRefused("a request made with the login session needs its X-CSRF-Token header "
                                     "(the csrf_token of the dashboard page)") from None
    g.caller = caller
    return caller
