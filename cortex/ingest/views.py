"""The Data Cortex ingest endpoints: ``POST /<org>/1/track`` and ``POST /<org>/1/app_log``.

Answers follow what the real SDKs rely on: exactly ``200 text/plain OK`` on success, 400
only when the bundle itself is broken or no event in it is valid (SDKs drop the bundle),
403 for a key that is unknown, revoked or of another org (SDKs stop sending), 503 with
``Retry-After`` when the queue cannot take it now (SDKs retry).

:func:`answer_bundle` does the work from the WSGI environ alone, without Flask: the
ingest lane (:mod:`cortex.ingest.lane`) serves these POSTs with it before Flask sees them.
The Flask routes stay for what Flask does well and the hot path does not need: ``OPTIONS``
preflights, ``405`` for other methods, and the same answers when the app is called without
the lane in front.
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple
from urllib.parse import parse_qs

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
from cortex.requestlog import RequestTrace, current_trace

blueprint = Blueprint("ingest", __name__)
log = logging.getLogger("cortex")

INGEST_PATH = re.compile(r"^/[^/]+/1/(track|app_log)/?$")
MAX_REASONS_SHOWN = 5
MAX_HEADER_CHARS = 512


class Answer(NamedTuple):
    """An ingest endpoint's answer: status, plain-text body, and headers besides CORS."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


OK = Answer(200, b"OK")


def refusal(trace: RequestTrace, status: int, message: str, **headers: str) -> Answer:
    """A plain-text error answer, its reason noted for the request's log line."""
    trace.reason = message
    return Answer(status, message.encode("utf-8"), tuple(headers.items()))


@blueprint.route("/<org>/1/track", methods=["POST"])
def track(org: str) -> Response:
    """Accept a bundle of interaction events."""
    return _flask_response(org, "track")


@blueprint.route("/<org>/1/app_log", methods=["POST"])
def app_log(org: str) -> Response:
    """Accept a bundle of application log lines (or a bundle that is itself one line)."""
    return _flask_response(org, "app_log")


def _flask_response(org: str, endpoint: str) -> Response:
    state = current_app.extensions["cortex"]
    answer = answer_bundle(state, request.environ, org, endpoint, current_trace())
    return Response(answer.body, status=answer.status, headers=list(answer.headers), content_type="text/plain")


def header_text(environ: dict, name: str, limit: int = MAX_HEADER_CHARS) -> str | None:
    """A request header's value as stored: control characters removed, at most ``limit`` long."""
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return None if value is None else strip_control(value[:limit])


def wsgi_text(value: str) -> str:
    """A path or query as the client sent it: WSGI gives UTF-8 bytes as latin-1 text."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value


def query_value(environ: dict, name: str) -> str | None:
    """The first value of query parameter ``name`` (None when absent)."""
    query = environ.get("QUERY_STRING")
    if not query:
        return None
    if query.startswith(name + "=") and not any(c in query for c in "&%+;"):
        # what SDKs send, ?current_time=<ISO time>, needs no parsing
        return query[len(name) + 1:]
    values = parse_qs(wsgi_text(query), keep_blank_values=True).get(name)
    return values[0] if values else None


def body_limits(state) -> BodyLimits:
    """The body limits of an app's configuration, made once per app."""
    limits = state.extras.get("body_limits")
    if limits is None:
        limits = state.extras["body_limits"] = BodyLimits.from_config(state.config["ingest"])
    return limits


def answer_bundle(state, environ: dict, org: str, endpoint: str, trace: RequestTrace) -> Answer:
    """Decode, authenticate, validate and durably queue one bundle (``endpoint``: ``track``
    or ``app_log``) posted to ``org``; what happened goes on ``trace``."""
    settings = state.config["ingest"]
    backpressure = state.extras["backpressure"]
    if backpressure.refusal() is not None:
        return _busy(trace, backpressure.retry_after)
    try:
        body = read_json(environ, body_limits(state))
        bundle, events = check_bundle_shape(body, endpoint, settings["max_events_per_bundle"])
    except BodyError as error:
        return refusal(trace, error.status, str(error))
    except BundleError as error:
        return refusal(trace, 400, str(error))

    trace.secret = bundle["api_key"]
    owner = state.keys.owner(bundle["api_key"])
    if owner is None:
        return refusal(trace, 403, "unknown or revoked API key; check the key configured in the app")
    if owner.org != org:
        return refusal(trace, 403, f"this API key is not valid for org {ascii(org[:64])}; check the URL and the key")
    client_ip = environ.get("REMOTE_ADDR")
    verdict = state.rate_limits.check(owner, client_ip, describe=False)
    if not verdict.allowed:
        # every Data Cortex SDK resends the same events after a 429: nothing is lost
        return refusal(trace, 429, "rate limit exceeded; retry later", **verdict.headers())

    timing = Timing.parse(
        now_utc(),
        query_value(environ, "current_time"),
        skew_threshold=settings["clock_skew_threshold"],
        future_tolerance=settings["future_tolerance"],
    )
    metered = state.extras["metrics_enabled"]
    if metered and timing.measured_skew is not None:
        record_clock_skew(timing.measured_skew)
    context = {
        "client_ip": client_ip,
        "user_agent": header_text(environ, "User-Agent"),
        "accept_language": header_text(environ, "Accept-Language"),
    }
    try:
        outcome = build_records(bundle, events, endpoint, owner, timing, context)
    except BundleError as error:
        refused = reject_all(bundle, events, endpoint, owner, timing, error.reasons)
        return _refuse(state, trace, owner, refused, str(error), "invalid_bundle")

    strict = settings["strict"] if owner.strict is None else owner.strict
    if outcome.rejected and strict:
        reasons = {"_bundle": ["Refused with its bundle: the app is in strict mode and another event was invalid."]}
        own = {record["position"]: record["reasons"] for _, record in outcome.rejected}
        refused = reject_all(bundle, events, endpoint, owner, timing, reasons)
        for _, record in refused.rejected:
            record["reasons"] = own.get(record["position"], reasons)
        return _refuse(state, trace, owner, refused, "strict mode: " + _describe(outcome))
    if not outcome.accepted:
        return _refuse(state, trace, owner, outcome, "no valid event in the bundle: " + _describe(outcome))
    if outcome.rejected:
        _tag_rejected(outcome, trace)
    submission = Submission(owner.org, owner.app_id, outcome.accepted, outcome.rejected, outcome.shared,
                            key_group=outcome.key_group)
    try:
        state.queue.submit(submission)
    except QueueUnavailable as error:
        return _unavailable(state, trace, error)
    _count(state, trace, submission)
    return OK


def _tag_rejected(outcome: Outcome, trace: RequestTrace) -> None:
    """Put the request id on the refused events (the ingest error log's rows)."""
    for _, record in outcome.rejected:
        record["request_id"] = trace.request_id


def _count(state, trace: RequestTrace, submission: Submission, reason: str | None = None) -> None:
    """Count the request's events in the metrics (in bulk) and for its log line."""
    trace.note_events(submission.org, submission.accepted_count, submission.duplicate_count,
                      submission.rejected_count)
    if state.extras["metrics_enabled"]:
        rejected = rejection_reasons(submission.stored_rejected, reason) if submission.rejected_count else None
        record_events(submission.org, submission.accepted_count, submission.duplicate_count, rejected)


def _refuse(state, trace: RequestTrace, owner, outcome: Outcome, message: str, reason: str | None = None) -> Answer:
    """Log the bundle's events in the ingest error log and answer 400."""
    _tag_rejected(outcome, trace)
    submission = Submission(owner.org, owner.app_id, [], outcome.rejected, key_group=outcome.key_group)
    try:
        state.queue.submit(submission)
    except QueueUnavailable as error:
        return _unavailable(state, trace, error)
    _count(state, trace, submission, reason)
    return refusal(trace, 400, message)


def _unavailable(state, trace: RequestTrace, error: QueueUnavailable) -> Answer:
    """503 with ``Retry-After``: SDKs resend the same events later, so nothing is lost."""
    log.error("%s", error)
    return _busy(trace, state.extras["backpressure"].retry_after)


def _busy(trace: RequestTrace, retry_after: str) -> Answer:
    return refusal(trace, 503, "Cortex cannot accept events right now; retry later", **{"Retry-After": retry_after})


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
    headers = response.headers
    # errors raised before routing (404, 405) have no blueprint; their path tells
    if request.blueprint == "ingest" or (request.url_rule is None and INGEST_PATH.match(request.path)):
        headers.extend(CORS_HEADERS)
        headers["Access-Control-Allow-Headers"] = allowed_headers(request.environ)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def allowed_headers(environ: dict) -> str:
    """``Access-Control-Allow-Headers``: what the preflight asked for, else ``Content-Type``."""
    return environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS") or "Content-Type"


CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, OPTIONS"),
    ("Access-Control-Max-Age", "86400"),
)
