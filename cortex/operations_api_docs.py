"""The OpenAPI description of the operational endpoints: health, readiness, metrics and the
browser snippet."""

from __future__ import annotations

from cortex.openapi import ApiDocs, ApiResponse, Operation
from cortex.snippet import SNIPPET_PATH

TAG = "Operations"

READINESS = {
    "type": "object", "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "unready"]},
        "checks": {"type": "object", "description": "each check by name, with `ok` false when it fails",
                   "additionalProperties": {"type": "object"}},
    },
}


def describe_api(docs: ApiDocs) -> None:
    """``/-/health``, ``/-/ready``, ``/metrics`` and the tracking snippet."""
    docs.operation(Operation(
        "get", "/-/health", "getHealth", "Liveness: the process answers", tag=TAG,
        responses={200: ApiResponse("the process serves requests", "application/json", {
            "type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}})},
    ))
    docs.operation(Operation(
        "get", "/-/ready", "getReady", "Readiness: a bundle sent now would be accepted", tag=TAG,
        responses={200: ApiResponse("ready: the queue, the disk and the control database are fine",
                                    "application/json", READINESS),
                   503: ApiResponse("not ready; the checks say why", "application/json", READINESS)},
    ))
    docs.operation(Operation(
        "get", "/metrics", "getMetrics", "Prometheus metrics", tag=TAG,
        description="Served here unless `metrics.bind` gives them a listener of their own, or "
                    "`metrics.enabled` is false (then 404). With `metrics.token` set, only for "
                    "`Authorization: Bearer <token>`.",
        responses={200: ApiResponse("the Prometheus text exposition format", "text/plain"),
                   401: ApiResponse("`metrics.token` is set and the request does not carry it", "text/plain",
                                    headers={"WWW-Authenticate": "Bearer"}),
                   404: ApiResponse("metrics are disabled, or served on `metrics.bind`", "text/plain")},
    ))
    docs.operation(Operation(
        "get", SNIPPET_PATH, "getSnippet", "The browser tracking snippet", tag=TAG,
        description="`trackEvent(name, properties)` for web pages, sending to the generic interactions API.",
        responses={200: ApiResponse("the script", "application/javascript")},
    ))
