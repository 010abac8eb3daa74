"""Data-subject requests over HTTP, for an org's admins.

``POST /api/v1/privacy/export`` and ``POST /api/v1/privacy/delete`` take a JSON object:
``org`` and at least one identifier of the person (``user_tag``, ``device_tag``,
``facebook_tag``, ``twitter_tag``, ``google_tag``, ``game_center_tag``; each a string or a
list of strings); ``delete`` also takes ``tombstone`` (default true).  The caller sends
``Authorization: Bearer <token>``, checked by :func:`authorize_org_admin`.

Export answers ``application/x-ndjson``, one record a line.  Delete answers JSON with
what was removed per sink: 200 when every sink did its part, 202 when the dispatcher has
not finished yet (it will), 500 when a sink failed or cannot delete.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, jsonify, request

from cortex.analytics.auth import INVALID_TOKEN, bearer_token
from cortex.config import reveal
from cortex.ingest.body import BodyError, read_json
from cortex.ingest.views import body_limits
from cortex.subjects import IDENTITY_KINDS, Subject

__all__ = ["authorize_org_admin", "blueprint"]

blueprint = Blueprint("privacy", __name__)


def authorize_org_admin(state, org: str, authorization: str | None) -> tuple[int, str] | None:
    """None when the ``Authorization`` header grants admin rights on ``org``; else the
    refusal's ``(status, message)``.

    The bearer token is either an account's token (``cortex tokens create``) whose user is
    an admin of ``org``, or equal to ``privacy.admin_tokens.<org>`` (a secret reference in
    the configuration).  The refusals tell no more than the analytics API's: 401 without
    a token; 403 with one message for any token that is neither (unknown, expired, revoked,
    a disabled user's, or no admin token configured); 404 ``no such org`` for a user who
    is not a member of ``org``, whether it exists or not; 403 naming the role for a member
    who is not an admin.
    """
    if not (authorization or "").strip():
        return 401, "send the org admin's token: Authorization: Bearer <token>"
    from cortex.analytics.setup import accounts_of

    token = bearer_token(authorization)
    caller = accounts_of(state).caller_for_token(token) if token else None
    if caller is not None:
        held = caller.role_in(org)
        if held is None:
            return 404, "no such org"
        if held != "admin":
            return 403, f"this needs the admin role in {org}; you are {held}"
        return None
    expected = (state.config["privacy"].get("admin_tokens") or {}).get(org)
    if expected is not None and token and hmac.compare_digest(str(reveal(expected)).encode(), token.encode()):
        return None
    return 403, INVALID_TOKEN


def _error(status: int, message: str, **headers: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    response.headers.update(headers)
    return response


def _request_subject(state) -> tuple[Subject | None, dict[str, Any], Response | None]:
    """The subject of the request body, after authorisation; or the error answer."""
    try:
        # the same bounded reading as the ingest endpoints: capped, decompressed with a bound,
        # depth- and size-checked, before anyone is authorised (the org is in the body)
        body = read_json(request.environ, body_limits(state))
    except BodyError as error:
        return None, {}, _error(error.status, str(error))
    if not isinstance(body, dict):
        return None, {}, _error(400, "send a JSON object with org and the person's identifiers")
    org = body.get("org")
    if not isinstance(org, str) or not org:
        return None, body, _error(400, "org is required")
    refused = authorize_org_admin(state, org, request.headers.get("Authorization"))
    if refused is not None:
        status, why = refused
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        elif why == INVALID_TOKEN:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return None, body, _error(status, why, **headers)
    given = {}
    for kind in IDENTITY_KINDS:
        value = body.get(kind)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            return None, body, _error(400, f"{kind} must be a string or a list of strings")
        given[kind] = [str(v) for v in values]
    try:
        return Subject.build(state, org, given), body, None
    except ValueError as error:
        return None, body, _error(400, f"{error} ({', '.join(IDENTITY_KINDS)})")


@blueprint.post("/api/v1/privacy/export")
def export_view() -> Response:
    """Every stored record of a person, as JSON Lines."""
    from cortex.privacy import SubjectExport

    state = current_app.extensions["cortex"]
    subject, _, error = _request_subject(state)
    if error is not None:
        return error
    export = SubjectExport(state, subject)

    def lines():
        for record in export:
            yield orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS, default=str)

    return Response(lines(), content_type="application/x-ndjson")


@blueprint.post("/api/v1/privacy/delete")
def delete_view() -> Response:
    """Delete every stored record of a person from every sink that can."""
    from cortex.privacy import erase_subject

    state = current_app.extensions["cortex"]
    subject, body, error = _request_subject(state)
    if error is not None:
        return error
    tombstone = body.get("tombstone", True)
    if not isinstance(tombstone, bool):
        return _error(400, "tombstone must be true or false")
    # answer within the server's request timeout; the dispatcher finishes what is left
    wait = min(float(state.config["privacy"]["wait_seconds"]), state.config["server"]["timeout"] / 2)
    result = erase_subject(state, subject, tombstone, wait)
    statuses = {outcome["status"] for outcome in result["sinks"].values()}
    status = 500 if statuses & {"failed", "unsupported"} else 202 if "pending" in statuses else 200
    response = jsonify(result)
    response.status_code = status
    return response
