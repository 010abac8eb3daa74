"""The generic interactions API: ``POST /api/v1/interactions`` (one event) and
``POST /api/v1/interactions/batch`` (a JSON array of events).

The API key comes in a header, ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
(or, for ``navigator.sendBeacon``, which cannot set headers, as the ``api_key`` query
parameter).  The answer is JSON and names every event's fate:

- ``200``: the request was taken; each event is ``accepted`` (durably queued),
  ``duplicate`` (its ``event_id`` was accepted before) or ``rejected`` (with field-level
  reasons; kept in the ingest error log).  At least one event was not rejected.
- ``400``: the body is not a JSON object (single) or array of 1 to 500 objects (batch), or
  every event was rejected.  Sending it again cannot help.
- ``401``: no API key, or one that is unknown or revoked.
- ``413``: the body is larger than ``ingest.max_body_bytes``.
- ``429`` and ``503``: retry the same events after ``Retry-After`` seconds; ``event_id``
  makes the retry safe.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from cortex.ingest.body import BodyError, read_json
from cortex.ingest.interactions import InteractionBatch, build_interactions
from cortex.ingest.pipeline import Timing, now_utc
from cortex.ingest.views import body_limits, header_text
from cortex.queue import QueueUnavailable, Submission

blueprint = Blueprint("interactions", __name__, url_prefix="/api/v1")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, X-API-Key, Content-Type",
    "Access-Control-Expose-Headers": "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset",
    "Access-Control-Max-Age": "86400",
    "X-Content-Type-Options": "nosniff",
}


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (strings escaped by the JSON encoder; never HTML)."""
    return Response(orjson.dumps(body), status=status, headers=headers, content_type="application/json")


def error_response(status: int, message: str, **headers: str) -> Response:
    """The answer that refuses a whole request (``ErrorSchema``)."""
    return json_response(status, {"error": message, "status": status}, headers)


@blueprint.after_request
def add_cors(response: Response) -> Response:
    """CORS on every answer, so that browsers (the tracking snippet) can read it."""
    for name, value in CORS_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@blueprint.route("/interactions", methods=["POST"])
def interaction() -> Response:
    """Accept one event (a JSON object)."""
    return ingest(batch=False)


@blueprint.route("/interactions/batch", methods=["POST"])
def interactions_batch() -> Response:
    """Accept a JSON array of events."""
    return ingest(batch=True)


def api_key_of(req) -> str | None:
    """The API key of a request: ``Authorization: Bearer``, ``X-API-Key`` or ``?api_key=``."""
    auth = req.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = req.headers.get("X-API-Key") or req.args.get("api_key")
    return key.strip() if key and key.strip() else None


def ingest(batch: bool) -> Response:
    """Authenticate, rate-limit, decode, validate and durably queue one request's events."""
    state = current_app.extensions["cortex"]
    settings = state.config["ingest"]
    key = api_key_of(request)
    if key is None:
        return error_response(401, "no API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                              **{"WWW-Authenticate": 'Bearer realm="cortex"'})
    owner = state.keys.owner(key)
    if owner is None:
        return error_response(401, "unknown or revoked API key; check the key configured in the client",
                              **{"WWW-Authenticate": 'Bearer realm="cortex", error="invalid_token"'})
    verdict = state.rate_limits.check(owner, request.remote_addr)
    if not verdict.allowed:
        return error_response(
            429, f"rate limit exceeded: {verdict.limit} requests per window for this key or address; "
                 f"retry after {verdict.headers()['Retry-After']} seconds", **verdict.headers())
    limit_headers = verdict.headers() if verdict.limit else {}

    try:
        body = read_json(request.environ, body_limits(state))
    except BodyError as error:
        return error_response(error.status, str(error), **limit_headers)
    max_events = state.config["interactions"]["max_events_per_batch"]
    if batch:
        if not isinstance(body, list):
            return error_response(400, "the body must be a JSON array of events", **limit_headers)
        if not body or len(body) > max_events:
            return error_response(
                400, f"a batch holds 1 to {max_events} events; this one has {len(body)}", **limit_headers)
        events = body
    else:
        if not isinstance(body, dict):
            return error_response(400, "the body must be one event as a JSON object "
                                       "(send arrays to /api/v1/interactions/batch)", **limit_headers)
        events = [body]

    timing = Timing.parse(
        now_utc(),
        request.args.get("current_time"),
        skew_threshold=settings["clock_skew_threshold"],
        future_tolerance=settings["future_tolerance"],
    )
    context = {
        "client_ip": request.remote_addr,
        "user_agent": header_text(request.environ, "User-Agent"),
        "accept_language": header_text(request.environ, "Accept-Language"),
    }
    strict = settings["strict"] if owner.strict is None else owner.strict
    result = build_interactions(
        events, owner, timing, context, lambda name: state.apps.app_id(owner.org, name), strict=strict
    )
    outcome = result.outcome
    try:
        submission = state.queue.submit(
            Submission(owner.org, owner.app_id, outcome.accepted, outcome.rejected, outcome.shared)
        )
    except QueueUnavailable as error:
        current_app.logger.error("%s", error)
        return error_response(503, "Cortex cannot accept events right now; retry the same events later",
                              **{**limit_headers, "Retry-After": "5"})
    return answer(result, submission.fresh_keys, limit_headers)


def answer(result: InteractionBatch, fresh_keys, headers: dict[str, str]) -> Response:
    """200 with every event's fate, or 400 when every event was rejected."""
    counts = result.settle(fresh_keys)
    body = {**counts, "events": [fate.as_json() for fate in result.fates]}
    status = 400 if counts["rejected"] == len(result.fates) else 200
    if status == 400:
        body["error"] = "no valid event in the request; see each event's errors"
        body["status"] = 400
    return json_response(status, body, headers)

