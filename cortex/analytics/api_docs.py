"""The OpenAPI description of the query API, the caller's tokens and the org members list
(:mod:`cortex.analytics.views`), built from the marshmallow schemas the views load with."""

from __future__ import annotations

from cortex.analytics import schemas as S
from cortex.analytics.catalog import QUERIES
from cortex.openapi import ApiDocs, ApiResponse, Operation, RequestBody

TAG = "Analytics API"
ACCOUNTS_TAG = "Accounts"
SECURITY = ("UserToken",)

ERRORS = {
    400: ApiResponse("Invalid arguments; `reasons` names each one and what is wrong.", "application/json",
                     "AnalyticsError"),
    401: ApiResponse("No credentials at all: no bearer token and no login session.",
                     "application/json", "AnalyticsError", headers={"WWW-Authenticate": "Bearer"}),
    403: ApiResponse("The bearer token is not valid: unknown, malformed, expired, revoked, or its user is "
                     "disabled (one answer for all, with `WWW-Authenticate: Bearer error=\"invalid_token\"`); "
                     "or the caller's role in the org is too low (the message names the role needed).",
                     "application/json", "AnalyticsError"),
    404: ApiResponse("Not one of the caller's orgs (or ids): the same answer whether it exists or not.",
                     "application/json", "AnalyticsError"),
    503: ApiResponse("The query API has no SQL sink to read (`analytics.sink`).", "application/json",
                     "AnalyticsError"),
}


def _errors(*codes: int) -> dict:
    return {code: ERRORS[code] for code in codes}


def _query(path: str, operation_id: str, summary: str, role: str, arguments, answer) -> Operation:
    return Operation(
        "get", path, operation_id, summary, description=f"Needs the {role} role (or higher) in the org.",
        tag=TAG, security=SECURITY, parameters=({"in": "query", "schema": arguments},),
        responses={200: ApiResponse("The answer.", "application/json", answer), **_errors(400, 401, 403, 404, 503)},
    )


def describe_api(docs: ApiDocs) -> None:
    """Every endpoint under ``/api/v1/analytics``, ``/api/v1/tokens``, ``/api/v1/me`` and
    ``/api/v1/orgs/{org}/members``."""
    docs.security_scheme("UserToken", {
        "type": "http", "scheme": "bearer",
        "description": "a user's token (`cortex tokens create EMAIL`, or `POST /api/v1/tokens`)",
    })
    docs.component("AnalyticsError", {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "reasons": {"type": "object"}},
    })
    docs.operation(_query("/api/v1/analytics/events", "analyticsEvents",
                          "Events of a business in a date range (optionally of some types): totals and a series",
                          "viewer", S.FilterSchema, S.EventsAnswerSchema))
    for name, query in QUERIES.items():
        operation_id = "analytics" + "".join(part.title() for part in name.split("-"))
        docs.operation(_query(f"/api/v1/analytics/{name}", operation_id, query.summary, query.role,
                              query.arguments, query.answer))
    docs.operation(_query("/api/v1/analytics/raw-events", "analyticsRawEvents",
                          "Raw events, newest first, a page at a time (cursor pagination)",
                          "analyst", S.ListingSchema, S.PageSchema))
    docs.operation(Operation(
        "get", "/api/v1/analytics/raw-events/{event_id}", "analyticsRawEvent", "One event with every stored column",
        description="Needs the analyst role (or higher) in the org.", tag=TAG, security=SECURITY,
        parameters=(
            {"in": "path", "name": "event_id", "required": True,
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"}},
            {"in": "query", "name": "business_id", "required": True, "schema": {"type": "string"}},
        ),
        responses={200: ApiResponse("The event.", "application/json", {"type": "object"}),
                   **_errors(400, 401, 403, 404, 503)},
    ))
    docs.operation(_query("/api/v1/analytics/errors", "analyticsErrors",
                          "The ingest error log: what the org's clients sent that was refused, and why",
                          "analyst", S.ListingSchema, S.PageSchema))
    export = _query("/api/v1/analytics/export", "analyticsExport",
                    "Raw events (`query=events`) or a query's result as CSV or JSON Lines, streamed",
                    "analyst", S.ExportSchema, {"type": "string"})
    docs.operation(Operation(
        export.method, export.path, export.operation_id, export.summary, export.description, export.tag,
        export.parameters, None,
        {**export.responses, 200: ApiResponse("CSV (`format=csv`) or JSON Lines (`format=jsonl`).", "text/csv")},
        export.security,
    ))
    docs.operation(Operation(
        "get", "/api/v1/me", "me", "The caller: email and role per org", tag=ACCOUNTS_TAG, security=SECURITY,
        responses={200: ApiResponse("The caller.", "application/json", {
            "type": "object", "properties": {"email": {"type": "string"}, "roles": {"type": "object"}}}),
            **_errors(401, 403)},
    ))
    docs.component("Token", S.TokenSchema)
    docs.operation(Operation(
        "get", "/api/v1/tokens", "listTokens", "The caller's tokens (never the tokens themselves)",
        tag=ACCOUNTS_TAG, security=SECURITY,
        responses={200: ApiResponse("The tokens.", "application/json", {
            "type": "object", "properties": {"items": {"type": "array", "items": {"type": "object"}}}}),
            **_errors(401, 403)},
    ))
    docs.operation(Operation(
        "post", "/api/v1/tokens", "createToken", "A new token for the caller, shown once in the answer",
        tag=ACCOUNTS_TAG, security=SECURITY, request_body=RequestBody(S.TokenRequestSchema, required=False),
        responses={201: ApiResponse("The token.", "application/json", "Token"), **_errors(400, 401, 403)},
    ))
    docs.operation(Operation(
        "delete", "/api/v1/tokens/{token_id}", "revokeToken", "Revoke one of the caller's tokens",
        tag=ACCOUNTS_TAG, security=SECURITY,
        parameters=({"in": "path", "name": "token_id", "required": True, "schema": {"type": "integer", "minimum": 0}},),
        responses={200: ApiResponse("Revoked.", "application/json", {"type": "object"}), **_errors(401, 403, 404)},
    ))
    docs.operation(Operation(
        "get", "/api/v1/orgs/{org}/members", "orgMembers", "The org's users and their roles",
        description="Needs the admin role in the org.", tag=ACCOUNTS_TAG, security=SECURITY,
        parameters=({"in": "path", "name": "org", "required": True,
                     "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}},),
        responses={200: ApiResponse("The members.", "application/json", {"type": "object"}),
                   **_errors(401, 403, 404)},
    ))
