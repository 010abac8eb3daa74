"""Wiring the accounts, the query API and the web login into a Cortex app."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from cortex.accounts import AccountStore
from cortex.analytics.store import AnalyticsStore
from cortex.config import reveal

SECRET_FILE = "web_secret_key"


def accounts_of(state) -> AccountStore:
    """The account store of a Cortex state (on the control database's engine)."""
    store = state.extras.get("accounts")
    if store is None:
        store = state.extras["accounts"] = AccountStore(state.control.engine)
    return store


def analytics_store_of(state) -> AnalyticsStore:
    """The analytics store of a Cortex state; :class:`ConfigError` when no SQL sink fits."""
    store = state.extras.get("analytics_store")
    if store is None:
        store = state.extras["analytics_store"] = AnalyticsStore(state.config)
    return store


def secret_key(config: dict) -> str:
    """``web.secret_key``, or the data directory's own random key, made once."""
    configured = reveal(config["web"]["secret_key"])
    if configured:
        return configured
    path = Path(config["data_dir"]) / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it this instant
            key = path.read_text().strip()
            if key:
                return key
            import time

            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty; delete it and restart") from None
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without their cost on requests that have no cookie.

    Flask builds the cookie's signing serializer on every request, session cookie or not;
    ingest requests never have one, and that was a tenth of their work.  The serializer is
    made once per secret key here, and only when a request does carry a session cookie.
    """

    _serializer = None
    _serializer_keys = None

    def get_signing_serializer(self, app: Flask):
        """The serializer of the app's current secret key (and fallbacks), made once."""
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        if keys != self._serializer_keys:
            self._serializer = super().get_signing_serializer(app)
            self._serializer_keys = keys
        return self._serializer

    def open_session(self, app: Flask, request):
        """An empty session at once when the request has no session cookie."""
        if app.secret_key and (
            "HTTP_COOKIE" not in request.environ or self.get_cookie_name(app) not in request.cookies
        ):
            return self.session_class()
        return super().open_session(app, request)


def install(app: Flask, state) -> None:
    """Register the query API and the web login on ``app``."""
    from cortex.analytics.views import blueprint as api_blueprint
    from cortex.analytics.web import blueprint as web_blueprint

    web = state.config["web"]
    app.secret_key = secret_key(state.config)
    app.session_interface = CookieSessions()
    app.config.update(
        SESSION_COOKIE_NAME="cortex_session",
        SESSION_COOKIE_SECURE=bool(web["secure_cookies"]),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=float(web["session_hours"])),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
    )
    app.register_blueprint(api_blueprint)
    app.register_blueprint(web_blueprint)
