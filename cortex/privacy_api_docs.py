"""The OpenAPI description of the data-subject endpoints of :mod:`cortex.privacy_api`."""

from __future__ import annotations

from cortex.openapi import ApiDocs, ApiResponse, Operation, RequestBody
from cortex.subjects import IDENTITY_KINDS

TAG = "Data-subject requests"
SECURITY = ("OrgAdminToken",)

IDENTIFIER = {
    "oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1}}],
    "description": "one identifier, or several",
}

JSON_ERRORS = {
    400: ApiResponse("The body is not a JSON object with `org` and at least one identifier, or a value "
                     "has the wrong type; the message says which.", "application/json", "Error"),
    401: ApiResponse("No bearer token: send `Authorization: Bearer <token>`.", "application/json", "Error",
                     headers={"WWW-Authenticate": "Bearer"}),
    403: ApiResponse("The token is neither a valid account token nor the org's configured admin token "
                     "(`privacy.admin_tokens`); one answer whatever the reason. Or the token's user is a "
                     "member of the org without the admin role (the message names the role needed).",
                     "application/json", "Error"),
    404: ApiResponse("The token's user is not a member of the org: the same answer as for an org that does "
                     "not exist.", "application/json", "Error"),
    413: ApiResponse("The body is over the body limits (see the top of this document).", "application/json", "Error"),
    415: ApiResponse("The Content-Encoding is neither gzip nor deflate.", "application/json", "Error"),
}


def describe_api(docs: ApiDocs) -> None:
    """``POST /api/v1/privacy/export`` and ``POST /api/v1/privacy/delete``."""
    docs.security_scheme("OrgAdminToken", {
        "type": "http", "scheme": "bearer",
        "description": "an org admin's token (`privacy.admin_tokens.<org>`), as `Authorization: Bearer <token>`",
    })
    identifiers = {kind: dict(IDENTIFIER) for kind in IDENTITY_KINDS}
    subject = {
        "type": "object",
        "properties": {"org": {"type": "string", "minLength": 1, "description": "the org whose data it is"},
                       **identifiers},
        "required": ["org"],
        "anyOf": [{"required": [kind]} for kind in IDENTITY_KINDS],
    }
    docs.component("SubjectRequest", subject, description="A person, named by any of their identifiers in one org.")
    docs.component("SubjectDeleteRequest", {
        **subject,
        "properties": {**subject["properties"], "tombstone": {
            "type": "boolean", "default": True,
            "description": "also keep the person's events from being stored again when they arrive later"}},
    }, description="A person to delete, and whether to keep a tombstone.")
    docs.component("ErasureResult", {
        "type": "object",
        "required": ["org", "tombstone", "sinks", "queue"],
        "properties": {
            "org": {"type": "string"},
            "tombstone": {"type": "boolean"},
            "sinks": {"type": "object", "description": "per sink: what it removed", "additionalProperties": {
                "type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string", "enum": ["done", "failed", "pending", "unsupported"]},
                    "removed": {"type": "integer", "nullable": True},
                    "error": {"type": "string", "nullable": True}}}},
            "queue": {"type": "object", "additionalProperties": {"type": "integer"},
                      "description": "rows removed from the ingest error log and the dead letters"},
        },
    }, description="What a deletion removed where.")
    docs.operation(Operation(
        "post", "/api/v1/privacy/export", "exportSubject", "Export every stored record of a person",
        tag=TAG, security=SECURITY,
        description="Every record of the person that a sink holds, one JSON object per line.",
        request_body=RequestBody("SubjectRequest"),
        responses={200: ApiResponse("the person's records as JSON Lines", "application/x-ndjson"), **JSON_ERRORS},
    ))
    docs.operation(Operation(
        "post", "/api/v1/privacy/delete", "deleteSubject", "Delete every stored record of a person",
        tag=TAG, security=SECURITY,
        description="Deletes the person's records from every sink that can delete, and from the queue's logs.",
        request_body=RequestBody("SubjectDeleteRequest"),
        responses={
            200: ApiResponse("every sink did its part", "application/json", "ErasureResult"),
            202: ApiResponse("a sink has not finished yet; the dispatcher will", "application/json", "ErasureResult"),
            **JSON_ERRORS,
            500: ApiResponse("a sink failed, or cannot delete: its copies remain. The answer says which; retry "
                             "after fixing the sink", "application/json", "ErasureResult"),
        },
    ))
