"""The web login: a login form, a session cookie, and a bare dashboard.

The session cookie is signed with ``web.secret_key``, ``HttpOnly``, ``SameSite=Lax`` and
``Secure`` (unless ``web.secure_cookies`` is off).  Every form carries a CSRF token
(Flask-WTF's, bound to the session) that the POST handlers check; logging in starts a new
session so that a session id planted before the login is worth nothing.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, redirect, render_template_string, request, session, url_for
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from wtforms.validators import ValidationError as CSRFValidationError

from cortex.analytics.auth import accounts
from cortex.analytics.planner import answer
from cortex.analytics.schemas import FilterSchema
from cortex.analytics.scope import scope_for
from cortex.analytics.setup import analytics_store_of

blueprint = Blueprint("web", __name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Cortex{% if title %} · {{ title }}{% endif %}</title>
<style>body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse}td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}
.error{color:#b00}</style></head><body>{{ body|safe }}</body></html>"""

LOGIN = """<h1>Log in to Cortex</h1>
{% if error %}<p class="error">{{ error }}</p>{% endif %}
<form method="post" action="{{ url_for('web.login') }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token }}">
<p><label>Email <input type="email" name="email" required autofocus></label></p>
<p><label>Password <input type="password" name="password" required></label></p>
<p><button type="submit">Log in</button></p></form>"""

DASHBOARD = """<h1>Cortex</h1>
<form method="post" action="{{ url_for('web.logout') }}"><input type="hidden" name="csrf_token" value="{{ csrf_token }}">
{{ email }} <button type="submit">Log out</button></form>
<h2>Last 30 days</h2>
<table><tr><th>Org</th><th>Role</th><th>Events</th><th>Users</th><th>Revenue (USD)</th></tr>
{% for row in rows %}<tr><td>{{ row.org }}</td><td>{{ row.role }}</td><td>{{ row.total }}</td>
<td>{{ row.unique_users }}</td><td>{{ '%.2f'|format(row.revenue_usd) }}</td></tr>{% endfor %}</table>
<p>The API: <code>GET /api/v1/analytics/events?business_id=ORG</code> with a bearer token
(<code>cortex tokens create EMAIL</code>).</p>"""


def _page(title: str, template: str, status: int = 200, **values) -> Response:
    body = render_template_string(template, csrf_token=generate_csrf(), **values)
    response = Response(render_template_string(PAGE, title=title, body=body), status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "default-src 'self'; style-src 'unsafe-inline'"
    return response


def _csrf_ok() -> bool:
    try:
        validate_csrf(request.form.get("csrf_token"))
        return True
    except (CSRFError, CSRFValidationError):
        return False


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    """The login form; a correct email and password start a session."""
    if request.method == "GET":
        return _page("Log in", LOGIN)
    if not _csrf_ok():
        return _page("Log in", LOGIN, 400, error="The form expired; please try again.")
    caller = accounts().authenticate(request.form.get("email", ""), request.form.get("password", ""))
    if caller is None:
        return _page("Log in", LOGIN, 401, error="Wrong email or password, or the account is disabled.")
    session.clear()
    session.permanent = True
    session["user_id"] = caller.user_id
    return redirect(url_for("web.dashboard"))


@blueprint.post("/logout")
def logout():
    """End the session (the form's CSRF token is checked)."""
    if not _csrf_ok():
        return _page("Log in", LOGIN, 400, error="The form expired; please try again.")
    session.clear()
    return redirect(url_for("web.login"))


@blueprint.get("/dashboard")
def dashboard():
    """The caller's orgs with their last 30 days' events, users and revenue."""
    user_id = session.get("user_id")
    caller = accounts().caller(user_id) if isinstance(user_id, int) else None
    if caller is None:
        session.pop("user_id", None)
        return redirect(url_for("web.login"))
    store = analytics_store_of(current_app.extensions["cortex"])
    rows = []
    for org, role in sorted(caller.roles.items()):
        scope = scope_for(caller, org, store, "viewer")
        rows.append({"org": org, "role": role, **answer("events", scope, FilterSchema().load({}))})
    return _page("Dashboard", DASHBOARD, email=caller.email, rows=rows)
