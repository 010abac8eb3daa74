"""The Data Cortex ingest endpoints: ``POST /<org>/1/track`` and ``POST /<org>/1/app_log``.

Answers follow what the real SDKs rely on: exactly ``200 text/plain OK`` on success, 400
only when the bundle itself is broken or no event in it is valid (SDKs drop the bundle),
403 for a key that is unknown, revoked or of another org (SDKs stop sending), 503 with
``Retry-After`` when the queue cannot take it now (SDKs retry).
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, request

from cortex.ingest.body import BodyError, BodyLimits, read_json
from cortex.ingest.fields import strip_control
from cortex.ingest.pipeline import (
    BundleError,
    Outcome,
    Timing,
    build_records,
    check_bundle_shape,
    now_utc,
    reject_all,
)
from cortex.metrics import record_clock_skew, record_events, rejection_reasons
from cortex.queue import QueueUnavailable, Submission
from cortex.requestlog import note_events, note_refusal, note_secret, request_id

blueprint = Blueprint("ingest", __name__)

INGEST_PATH = re.compile(r"^/[^/]+/1/(track|app_log)/?$")
MAX_REASONS_SHOWN = 5
MAX_HEADER_CHARS = 512


def text_response(status: int, message: str, **headers: str) -> Response:
    """A plain-text answer, as the SDKs expect (exactly ``Content-Type: text/plain``)."""
    if status >= 400:
        note_refusal(message)
    return Response(message.encode("utf-8"), status=status, headers=headers, content_type="text/plain")


def ok_response() -> Response:
    """``200 text/plain OK`` with the CORS headers already set (the hot path's answer)."""
    response = Response(b"OK", status=200, headers=OK_HEADERS)
    response.cors_done = True
    return response


@blueprint.route("/<org>/1/track", methods=["POST"])
def track(org: str) -> Response:
    """Accept a bundle of interaction events."""
    return ingest(org, "track")


@blueprint.route("/<org>/1/app_log", methods=["POST"])
def app_log(org: str) -> Response:
    """Accept a bundle of application log lines (or a bundle that is itself one line)."""
    return ingest(org, "app_log")


def header_text(name: str, limit: int = MAX_HEADER_CHARS) -> str | None:
    """A request header's value as stored: control characters removed, at most ``limit`` long."""
    value = request.headers.get(name)
    return None if value is None else strip_control(value[:limit])


def body_limits(state) -> BodyLimits:
    """The body limits of an app's configuration, made once per app."""
    limits = state.extras.get("body_limits")
    if limits is None:
        limits = state.extras["body_limits"] = BodyLimits.from_config(state.config["ingest"])
    return limits


def ingest(org: str, endpoint: str) -> Response:
    """Decode, authenticate, validate and durably queue one bundle."""
    state = current_app.extensions["cortex"]
    settings = state.config["ingest"]
    backpressure = state.extras["backpressure"]
    refusal = backpressure.refusal()
    if refusal is not None:
        note_refusal(refusal)
        return _busy(backpressure.retry_after)
    try:
        body = read_json(request, body_limits(state))
        bundle, events = check_bundle_shape(body, endpoint, settings["max_events_per_bundle"])
    except BodyError as error:
        return text_response(error.status, str(error))
    except BundleError as error:
        return text_response(400, str(error))

    note_secret(bundle["api_key"])
    owner = state.keys.owner(bundle["api_key"])
    if owner is None:
        return text_response(403, "unknown or revoked API key; check the key configured in the app")
    if owner.org != org:
        return text_response(403, f"this API key is not valid for org {ascii(org[:64])}; check the URL and the key")
    verdict = state.rate_limits.check(owner, request.remote_addr, describe=False)
    if not verdict.allowed:
        # every Data Cortex SDK resends the same events after a 429: nothing is lost
        return text_response(429, "rate limit exceeded; retry later", **verdict.headers())

    timing = Timing.parse(
        now_utc(),
        request.args.get("current_time"),
        skew_threshold=settings["clock_skew_threshold"],
        future_tolerance=settings["future_tolerance"],
    )
    metered = state.extras["metrics_enabled"]
    if metered and timing.measured_skew is not None:
        record_clock_skew(timing.measured_skew)
    context = {
        "client_ip": request.remote_addr,
        "user_agent": header_text("User-Agent"),
        "accept_language": header_text("Accept-Language"),
    }
    try:
        outcome = build_records(bundle, events, endpoint, owner, timing, context)
    except BundleError as error:
        refused = reject_all(bundle, events, endpoint, owner, timing, error.reasons)
        return _refuse(state, owner, refused, str(error), "invalid_bundle")

    strict = settings["strict"] if owner.strict is None else owner.strict
    if outcome.rejected and strict:
        reasons = {"_bundle": ["Refused with its bundle: the app is in strict mode and another event was invalid."]}
        own = {record["position"]: record["reasons"] for _, record in outcome.rejected}
        refused = reject_all(bundle, events, endpoint, owner, timing, reasons)
        for _, record in refused.rejected:
            record["reasons"] = own.get(record["position"], reasons)
        return _refuse(state, owner, refused, "strict mode: " + _describe(outcome))
    if not outcome.accepted:
        return _refuse(state, owner, outcome, "no valid event in the bundle: " + _describe(outcome))
    if outcome.rejected:
        _tag_rejected(outcome)
    submission = Submission(owner.org, owner.app_id, outcome.accepted, outcome.rejected, outcome.shared,
                            key_group=outcome.key_group)
    try:
        state.queue.submit(submission)
    except QueueUnavailable as error:
        return _unavailable(state, error)
    _count(state, submission)
    return ok_response()


def _tag_rejected(outcome: Outcome) -> None:
    """Put the request id on the refused events (the ingest error log's rows)."""
    rid = request_id()
    for _, record in outcome.rejected:
        record["request_id"] = rid


def _count(state, submission: Submission, reason: str | None = None) -> None:
    """Count the request's events in the metrics (in bulk) and for its log line."""
    note_events(submission.org, submission.accepted_count, submission.duplicate_count, submission.rejected_count)
    if state.extras["metrics_enabled"]:
        rejected = rejection_reasons(submission.stored_rejected, reason) if submission.rejected_count else None
        record_events(submission.org, submission.accepted_count, submission.duplicate_count, rejected)


def _refuse(state, owner, outcome: Outcome, message: str, reason: str | None = None) -> Response:
    """Log the bundle's events in the ingest error log and answer 400."""
    _tag_rejected(outcome)
    submission = Submission(owner.org, owner.app_id, [], outcome.rejected, key_group=outcome.key_group)
    try:
        state.queue.submit(submission)
    except QueueUnavailable as error:
        return _unavailable(state, error)
    _count(state, submission, reason)
    return text_response(400, message)


def _unavailable(state, error: QueueUnavailable) -> Response:
    """503 with ``Retry-After``: SDKs resend the same events later, so nothing is lost."""
    current_app.logger.error("%s", error)
    return _busy(state.extras["backpressure"].retry_after)


def _busy(retry_after: str) -> Response:
    return text_response(503, "Cortex cannot accept events right now; retry later", **{"Retry-After": retry_after})


def _describe(outcome: Outcome) -> str:
    parts = []
    for _, record in outcome.rejected[:MAX_REASONS_SHOWN]:
        reasons = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in record["reasons"].items())
        parts.append(f"event {record['position']}: {reasons}")
    more = len(outcome.rejected) - MAX_REASONS_SHOWN
    if more > 0:
        parts.append(f"and {more} more")
    return " | ".join(parts)


def add_cors_headers(response: Response) -> Response:
    """CORS on every ingest answer, errors and preflights included: without it browser SDKs
    cannot read the answer and resend the same events forever."""
    if getattr(response, "cors_done", False):
        return response
    headers = response.headers
    # errors raised before routing (404, 405) have no blueprint; their path tells
    if request.blueprint == "ingest" or (request.url_rule is None and INGEST_PATH.match(request.path)):
        headers.extend(CORS_HEADERS)
        requested = request.headers.get("Access-Control-Request-Headers")
        headers["Access-Control-Allow-Headers"] = requested or "Content-Type"
    headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, OPTIONS"),
    ("Access-Control-Max-Age", "86400"),
)
OK_HEADERS = [
    ("Content-Type", "text/plain"),
    *CORS_HEADERS,
    ("Access-Control-Allow-Headers", "Content-Type"),
    ("X-Content-Type-Options", "nosniff"),
]
