"""The JSON API for business owners: ``/api/v1/analytics/...``, tokens and members.

Every analytics answer comes from a :class:`~cortex.analytics.scope.Scope`, made by
:func:`~cortex.analytics.scope.scope_for` from the caller and the org asked for
(``?business_id=`` or ``?org=``) before any argument is looked at.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from marshmallow import ValidationError

from cortex.accounts import ROLE_RANK
from cortex.analytics import export, listing
from cortex.analytics import schemas as S
from cortex.analytics.auth import InvalidToken, SessionRefused, Unauthenticated, accounts, current_caller
from cortex.analytics.catalog import QUERIES
from cortex.analytics.planner import answer
from cortex.analytics.scope import AccessDenied, Scope, not_found, scope_for
from cortex.analytics.setup import analytics_store_of
from cortex.config import ConfigError
from cortex.control import ControlError

blueprint = Blueprint("analytics_api", __name__, url_prefix="/api/v1")


def _error(status: int, message: str, **more: Any) -> Response:
    response = jsonify({"error": message, **more})
    response.status_code = status
    return response


@blueprint.errorhandler(Unauthenticated)
def _unauthenticated(error: Unauthenticated):
    response = _error(401, str(error))
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


@blueprint.errorhandler(InvalidToken)
def _invalid_token(error: InvalidToken):
    response = _error(403, str(error))
    response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


@blueprint.errorhandler(SessionRefused)
def _session_refused(error: SessionRefused):
    return _error(403, str(error))


@blueprint.errorhandler(AccessDenied)
def _denied(error: AccessDenied):
    return _error(error.status, error.message)


@blueprint.errorhandler(ValidationError)
def _invalid(error: ValidationError):
    return _error(400, "invalid arguments; see reasons", reasons=error.normalized_messages())


@blueprint.errorhandler(listing.BadCursor)
def _bad_cursor(error: listing.BadCursor):
    return _error(400, str(error))


@blueprint.errorhandler(ConfigError)
def _not_configured(error: ConfigError):
    return _error(503, f"the query API is not configured: {error}")


@blueprint.after_request
def _no_store(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _org_and_app(caller) -> tuple[str | None, str | None]:
    """The org asked for, and the app when ``business_id`` named one.

    ``org`` names an org.  ``business_id`` names an org the caller belongs to or, as in the
    generic interactions API (where ``business_id`` is an app of the key's org), an app of
    exactly one of the caller's orgs; only the caller's own orgs are looked in, so the
    answer about anybody else's is the same 404 as for a name that exists nowhere.
    """
    org = request.args.get("org")
    business = request.args.get("business_id")
    if org or not business or caller.role_in(business) is not None:
        return org or business, None
    control = current_app.extensions["cortex"].control
    owners = [name for name in caller.roles if any(app["name"] == business for app in control.list_apps(name))]
    if len(owners) == 1:
        return owners[0], business
    return business, None


def _scope(role: str) -> Scope:
    """The caller's scope for the org asked for; checked before anything else is read."""
    caller = current_caller()
    org, app = _org_and_app(caller)
    scope = scope_for(caller, org, analytics_store_of(current_app.extensions["cortex"]), role)
    g.business_app = app
    return scope


def _arguments(schema: type, scope: Scope) -> dict[str, Any]:
    arguments = schema().load(request.args)
    arguments["business_id"] = request.args.get("business_id") or scope.org
    if g.get("business_app"):
        arguments["app"] = [g.business_app]
    return arguments


def _range(arguments: dict[str, Any]) -> dict[str, str]:
    return {"start_date": arguments["start"].isoformat().replace("+00:00", "Z"),
            "end_date": arguments["end"].isoformat().replace("+00:00", "Z")}


# -- the caller and their tokens -------------------------------------------------------------
@blueprint.get("/me")
def me():
    """The caller: email and role per org."""
    caller = current_caller()
    return jsonify({"email": caller.email, "roles": caller.roles})


@blueprint.get("/tokens")
def tokens_list():
    """The caller's own tokens (never the tokens themselves)."""
    caller = current_caller()
    return jsonify({"items": S.TokenSchema(many=True).dump(accounts().list_tokens(caller.user_id))})


@blueprint.post("/tokens")
def tokens_create():
    """A new token for the caller; the answer holds it, once."""
    caller = current_caller()
    body = S.TokenRequestSchema().load(request.get_json(silent=True) or {})
    days = body.get("expires_in_days")
    token, record = accounts().create_token(caller.user_id, body.get("label"),
                                            timedelta(days=days) if days else None)
    response = jsonify(S.TokenSchema().dump({**record, "token": token}))
    response.status_code = 201
    return response


@blueprint.delete("/tokens/<int:token_id>")
def tokens_revoke(token_id: int):
    """Revoke one of the caller's own tokens; any other id is 404."""
    caller = current_caller()
    try:
        accounts().revoke_token(token_id, user_id=caller.user_id)
    except ControlError:
        raise not_found("no such token") from None
    return jsonify({"id": token_id, "revoked": True})


@blueprint.get("/orgs/<org>/members")
def members(org: str):
    """The org's users and their roles (admins only)."""
    caller = current_caller()
    held = caller.role_in(org)
    if held is None:
        raise not_found()
    if ROLE_RANK[held] < ROLE_RANK["admin"]:
        raise AccessDenied(403, f"this needs the admin role in {org}; you are {held}")
    rows = accounts().list_users(org)
    return jsonify({"items": [{"email": u["email"], "role": u["roles"][org],
                               "disabled": u["disabled_at"] is not None} for u in rows]})


# -- analytics -------------------------------------------------------------------------------
@blueprint.get("/analytics/events")
def analytics_events():
    """Events of one business in a date range, optionally of one type: totals and a series.

    ``GET /api/v1/analytics/events?business_id=biz&start_date=2024-06-01&end_date=2024-06-30&event_type=purchase``
    """
    scope = _scope("viewer")
    arguments = _arguments(S.FilterSchema, scope)
    result = answer("events", scope, arguments)
    return jsonify({"business_id": arguments["business_id"], "org": scope.org,
                    "event_type": arguments.get("event_type"), **_range(arguments),
                    "bucket": arguments["bucket"], **result})


def _query_view(name: str):
    query = QUERIES[name]

    def view():
        scope = _scope(query.role)
        arguments = _arguments(query.arguments, scope)
        return jsonify({"business_id": arguments["business_id"], "org": scope.org, **_range(arguments),
                        **query.run(scope, arguments)})

    view.__name__ = f"query_{name.replace('-', '_')}"
    view.__doc__ = query.summary
    return view


for _name in QUERIES:
    blueprint.add_url_rule(f"/analytics/{_name}", view_func=_query_view(_name), methods=["GET"])


def _page_arguments(scope: Scope) -> dict:
    """A listing's arguments, its ``limit`` capped at ``analytics.max_page_size``."""
    arguments = _arguments(S.ListingSchema, scope)
    arguments["limit"] = min(arguments["limit"], current_app.extensions["cortex"].config["analytics"]["max_page_size"])
    return arguments


@blueprint.get("/analytics/raw-events")
def raw_events():
    """A page of raw events, newest first; follow ``next_cursor`` for the next page."""
    scope = _scope("analyst")
    arguments = _page_arguments(scope)
    return jsonify(listing.list_events(scope, arguments))


@blueprint.get("/analytics/raw-events/<event_id>")
def raw_event(event_id: str):
    """One event with every stored column; 404 unless it is the org's."""
    scope = _scope("analyst")
    return jsonify(listing.get_event(scope, event_id))


@blueprint.get("/analytics/errors")
def ingest_errors():
    """A page of the ingest error log: what the org's clients sent that was refused, and why."""
    scope = _scope("analyst")
    arguments = _page_arguments(scope)
    return jsonify(listing.list_errors(scope, arguments))


@blueprint.get("/analytics/export")
def export_view():
    """Raw events (``query=events``) or a query's result as CSV or JSON Lines, streamed."""
    scope = _scope("analyst")
    arguments = _arguments(S.ExportSchema, scope)
    query_arguments = request.args.copy()
    if g.get("business_app"):
        query_arguments["app"] = g.business_app
    rows, columns = export.export_rows(scope, arguments["query"], query_arguments)
    fmt = arguments["format"]
    body = export.csv_lines(rows, columns) if fmt == "csv" else export.jsonl_lines(rows)
    filename = f"{scope.org}-{arguments['query']}.{fmt}"
    return Response(
        stream_with_context(body),
        mimetype="text/csv" if fmt == "csv" else "application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
