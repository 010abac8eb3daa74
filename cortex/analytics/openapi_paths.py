"""The query API's paths for an OpenAPI document (apispec with its marshmallow plugin).

:func:`register_paths` adds every endpoint of ``/api/v1/analytics``, ``/api/v1/tokens``,
``/api/v1/me`` and ``/api/v1/orgs/{org}/members`` to an ``apispec.APISpec``, with the
query-string arguments of its request schema and the answer schema; the schemas are the
ones :mod:`cortex.analytics.schemas` loads and documents the requests with.
"""

from __future__ import annotations

from typing import Any

from cortex.analytics import schemas as S
from cortex.analytics.catalog import QUERIES

BEARER = "bearerToken"
ERRORS = {
    "400": "invalid arguments (the reasons per argument)",
    "401": "no token, or one that is unknown, expired or revoked",
    "403": "the caller's role in the org is too low",
    "404": "not the caller's org (or no such org): the same answer either way",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"description": ERRORS[code], "content": {"application/json": {"schema": "AnalyticsError"}}}
            for code in codes}


def _get(summary: str, role: str, arguments: type, answer: type | str, content_type: str = "application/json") -> dict:
    return {"get": {
        "summary": summary,
        "description": f"Needs the {role} role (or higher) in the org.",
        "tags": ["analytics"],
        "security": [{BEARER: []}],
        "parameters": [{"in": "query", "schema": arguments}],
        "responses": {"200": {"description": "the answer", "content": {content_type: {"schema": answer}}},
                      **_errors("400", "401", "403", "404")},
    }}


def register_paths(spec) -> None:
    """Add the analytics API's schemas, security scheme and paths to ``spec`` (an APISpec)."""
    spec.components.security_scheme(BEARER, {"type": "http", "scheme": "bearer",
                                             "description": "a token from `cortex tokens create` or POST /api/v1/tokens"})
    spec.components.schema("AnalyticsError", schema=S.ErrorAnswerSchema)
    spec.path(path="/api/v1/analytics/events", operations=_get(
        "Events of a business in a date range (optionally of one type): totals and a series",
        "viewer", S.FilterSchema, S.EventsAnswerSchema))
    for name, query in QUERIES.items():
        spec.path(path=f"/api/v1/analytics/{name}",
                  operations=_get(query.summary, query.role, query.arguments, query.answer))
    spec.path(path="/api/v1/analytics/raw-events", operations=_get(
        "Raw events, newest first, a page at a time (cursor pagination)", "analyst", S.ListingSchema, S.PageSchema))
    spec.path(path="/api/v1/analytics/raw-events/{event_id}", operations={"get": {
        "summary": "One event with every stored column", "tags": ["analytics"], "security": [{BEARER: []}],
        "parameters": [{"in": "path", "name": "event_id", "required": True, "schema": {"type": "string"}},
                       {"in": "query", "name": "business_id", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the event"}, **_errors("401", "403", "404")},
    }})
    spec.path(path="/api/v1/analytics/errors", operations=_get(
        "The ingest error log: what the org's clients sent that was refused, and why",
        "analyst", S.ListingSchema, S.PageSchema))
    export = _get("Raw events (query=events) or a query's result as CSV or JSON Lines, streamed",
                  "analyst", S.ExportSchema, {"type": "string"}, "text/csv")
    export["get"]["responses"]["200"]["content"]["application/x-ndjson"] = {"schema": {"type": "string"}}
    spec.path(path="/api/v1/analytics/export", operations=export)
    spec.path(path="/api/v1/me", operations={"get": {
        "summary": "The caller: email and role per org", "tags": ["accounts"], "security": [{BEARER: []}],
        "responses": {"200": {"description": "the caller"}, **_errors("401")}}})
    spec.path(path="/api/v1/tokens", operations={
        "get": {"summary": "The caller's tokens (never the tokens themselves)", "tags": ["accounts"],
                "security": [{BEARER: []}],
                "responses": {"200": {"description": "the tokens"}, **_errors("401")}},
        "post": {"summary": "A new token for the caller, shown once", "tags": ["accounts"], "security": [{BEARER: []}],
                 "requestBody": {"content": {"application/json": {"schema": S.TokenRequestSchema}}},
                 "responses": {"201": {"description": "the token",
                                       "content": {"application/json": {"schema": S.TokenSchema}}},
                               **_errors("400", "401")}},
    })
    spec.path(path="/api/v1/tokens/{token_id}", operations={"delete": {
        "summary": "Revoke one of the caller's tokens", "tags": ["accounts"], "security": [{BEARER: []}],
        "parameters": [{"in": "path", "name": "token_id", "required": True, "schema": {"type": "integer"}}],
        "responses": {"200": {"description": "revoked"}, **_errors("401", "404")}}})
    spec.path(path="/api/v1/orgs/{org}/members", operations={"get": {
        "summary": "The org's users and roles", "description": "Needs the admin role in the org.",
        "tags": ["accounts"], "security": [{BEARER: []}],
        "parameters": [{"in": "path", "name": "org", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the members"}, **_errors("401", "403", "404")}}})
