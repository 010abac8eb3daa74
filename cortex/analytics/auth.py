"""Who is calling the API: a bearer token, or the web login's session.

``Authorization: Bearer ctx_...`` is checked on every request (revocation and expiry take
effect at once).  Without it, the signed session cookie of the web login is used; a request
that changes something on a session must then also carry the session's CSRF token in
``X-CSRF-Token``, so that another site cannot make the browser do it.

Missing, malformed, unknown, expired and revoked credentials all get the same ``401``
(RFC 6750's ``invalid_token``): the answer does not tell which.
"""

from __future__ import annotations

from flask import current_app, g, request, session
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms.validators import ValidationError as CSRFValidationError

from cortex.accounts import AccountStore, Caller

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Unauthenticated(Exception):
    """No valid credentials; answered 401 with ``WWW-Authenticate: Bearer``."""


def accounts() -> AccountStore:
    """The account store of the current app."""
    from cortex.analytics.setup import accounts_of

    return accounts_of(current_app.extensions["cortex"])


def current_caller() -> Caller:
    """The caller of this request, or :class:`Unauthenticated`."""
    if "caller" in g:
        return g.caller
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        caller = accounts().caller_for_token(token.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            raise Unauthenticated("the bearer token is not valid (unknown, expired or revoked)")
    else:
        user_id = session.get("user_id")
        caller = accounts().caller(user_id) if isinstance(user_id, int) else None
        if caller is None:
            raise Unauthenticated("log in first: send Authorization: Bearer <token> (cortex tokens create)")
        if request.method not in SAFE_METHODS:
            try:
                validate_csrf(request.headers.get("X-CSRF-Token"))
            except (CSRFError, CSRFValidationError):
                raise Unauthenticated("a request made with the login session needs its X-CSRF-Token header") from None
    g.caller = caller
    return caller
