"""The OpenAPI description of the generic interactions API, from
:mod:`cortex.ingest.interactions_schemas`."""

from __future__ import annotations

import copy

from cortex.ingest.interaction_fields import Identifier, JsonObject
from cortex.ingest.interactions_schemas import (
    MAX_BATCH_EVENTS,
    ErrorSchema,
    IngestResultSchema,
    InteractionSchema,
)
from cortex.openapi import ApiDocs, ApiResponse, Operation, RequestBody

TAG = "Generic interactions API"

RETRY = {"Retry-After": "seconds to wait before sending the same events again"}


def _map_fields(docs: ApiDocs) -> None:
    docs.marshmallow.map_to_openapi_type(Identifier, "string", None)
    docs.marshmallow.map_to_openapi_type(JsonObject, "object", None)


def describe_api(docs: ApiDocs) -> None:
    """``POST /api/v1/interactions`` and ``POST /api/v1/interactions/batch``."""
    _map_fields(docs)
    interaction = docs.component("Interaction", InteractionSchema, description="One interaction event.")
    for prop in interaction["properties"].values():
        # the fields match whole values; a JSON Schema pattern matches anywhere unless anchored
        if "pattern" in prop and not prop["pattern"].startswith("^"):
            prop["pattern"] = f"^(?:{prop['pattern']})$"
    docs.component("IngestResult", IngestResultSchema, description="Every event's fate, and the counts.")
    docs.component("InteractionError", ErrorSchema, description="An answer that refuses the whole request.")
    docs.component("InteractionBatch", {
        "type": "array", "minItems": 1, "maxItems": MAX_BATCH_EVENTS,
        "items": {"$ref": "#/components/schemas/Interaction"},
        "description": f"1 to interactions.max_events_per_batch ({MAX_BATCH_EVENTS}) events",
    })
    result = copy.deepcopy(docs.schema_of("IngestResult"))
    error = docs.schema_of("InteractionError")
    docs.component("IngestResultRefused", {
        **result,
        "properties": {**result["properties"], **copy.deepcopy(error["properties"])},
        "required": sorted({*result.get("required", ()), *error.get("required", ())}),
    }, description="Every event was rejected: the counts, every event's errors, and the error.")
    refused_or_all_rejected = {"oneOf": [{"$ref": "#/components/schemas/InteractionError"},
                                         {"$ref": "#/components/schemas/IngestResultRefused"}]}
    responses = {
        200: ApiResponse("The request was taken: each event is accepted, duplicate (its event_id was "
                         "accepted before) or rejected with field-level reasons.", "application/json",
                         "IngestResult"),
        400: ApiResponse("The body is not what the endpoint takes, or every event was rejected (then the "
                         "answer lists each event's errors). Sending it again cannot help.",
                         "application/json", refused_or_all_rejected),
        401: ApiResponse("No API key, or an unknown or revoked one.", "application/json", "InteractionError",
                         headers={"WWW-Authenticate": "Bearer"}),
        413: ApiResponse("The body is over the body limits (see the top of this document).",
                         "application/json", "InteractionError"),
        415: ApiResponse("The Content-Encoding is neither gzip nor deflate.", "application/json", "InteractionError"),
        429: ApiResponse("Over the key's or the address's rate limit; retry the same events later.",
                         "application/json", "InteractionError", headers=RETRY),
        503: ApiResponse("Cortex cannot durably accept events now; retry the same events later: "
                         "event_id makes the retry safe.", "application/json", "InteractionError", headers=RETRY),
    }
    key_in_query = ({
        "name": "api_key", "in": "query", "required": False, "schema": {"type": "string"},
        "description": "the API key, for clients that cannot set headers (navigator.sendBeacon)",
    },)
    for path, operation_id, summary, body in (
        ("/api/v1/interactions", "postInteraction", "Send one interaction event", "Interaction"),
        ("/api/v1/interactions/batch", "postInteractionBatch", "Send a batch of interaction events",
         "InteractionBatch"),
    ):
        docs.operation(Operation(
            "post", path, operation_id, summary, tag=TAG, security=docs.API_KEY_SECURITY,
            description="The API key decides the org; a business_id naming an app of another org is "
                        "rejected. Events go through the same dedupe, queue, enrichers and sinks as Data "
                        "Cortex events.",
            parameters=key_in_query,
            request_body=RequestBody(body),
            responses=responses,
        ))
