"""The OpenAPI description of the Data Cortex ingest endpoints, from :mod:`cortex.ingest.schemas`.

The field definitions are the marshmallow schemas themselves; this module only adds what
they cannot say: how events sit in a bundle (a list of event objects told apart by their
``type``), the answers, and the API key that travels in the body.
"""

from __future__ import annotations

from typing import Any

from cortex.ingest.schemas import EVENT_TYPES, SCHEMAS
from cortex.openapi import ApiDocs, ApiResponse, Operation, RequestBody

TAG = "Data Cortex ingest API"

#: what unknown fields become; documented on every bundle and event object
UNKNOWN_FIELDS = {
    "description": "Unknown fields are kept with the event when they are strings, numbers, booleans "
                   "or null (at most 50 per object, strings cut to 1024 characters); arrays and "
                   "objects are dropped, with a warning.",
}

ORG_PARAMETER = {
    "name": "org", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^[^/]+$", "maxLength": 64},
    "description": "the org's slug; the bundle's API key must belong to an app of this org",
    "example": "demo",
}
CURRENT_TIME_PARAMETER = {
    "name": "current_time", "in": "query", "required": False,
    "schema": {"type": "string", "maxLength": 64},
    "description": "the client's clock when it sent the bundle (ISO 8601, raw or percent-encoded); "
                   "event times are corrected by the difference from the server's clock when it "
                   "exceeds ingest.clock_skew_threshold. A value that is not a time is a warning.",
    "example": "2024-06-01T13:45:30.123Z",
}

INGEST_RESPONSES = {
    200: ApiResponse("The bundle's valid events are durably queued (also when some events were invalid "
                     "or all were duplicates). Exactly `OK`: SDKs drop the bundle.",
                     schema={"type": "string", "enum": ["OK"]}),
    400: ApiResponse("The bundle is broken (not JSON, not UTF-8, NaN or Infinity, nested too deep, no "
                     "api_key, events not a list of 1..100, an invalid bundle field), no event in it is "
                     "valid, or the app is in strict mode and one event is invalid. The text says which; "
                     "invalid events are kept in the ingest error log. SDKs drop the bundle."),
    403: ApiResponse("The API key is unknown, revoked, or of another org than the URL's. Most SDKs "
                     "stop sending: check the key the app is configured with."),
    413: ApiResponse("The body is over ingest.max_body_bytes as sent, or decompresses beyond "
                     "ingest.max_decoded_bytes or ingest.max_compression_ratio. Send fewer events."),
    415: ApiResponse("The Content-Encoding is neither gzip nor deflate; send the body uncompressed, "
                     "or compressed with one of those."),
    429: ApiResponse("The API key or client is over its rate limit; retry after Retry-After seconds "
                     "with the same events.", headers={"Retry-After": "seconds to wait"}),
    503: ApiResponse("Cortex cannot durably accept events right now (queue full, disk full); retry "
                     "after Retry-After seconds with the same events: nothing is lost.",
                     headers={"Retry-After": "seconds to wait"}),
}

BODY_DESCRIPTION = (
    "The bundle as JSON, whatever the Content-Type says: browser SDKs send text/plain. "
    "Transfer-Encoding: chunked without Content-Length is fine, and so is Content-Encoding: "
    "gzip or deflate. The API key travels in the body (`api_key`)."
)


def _component_name(event_type: str) -> str:
    return SCHEMAS[event_type].__name__.removesuffix("Schema")


def _object_schema(docs: ApiDocs, schema_class) -> dict[str, Any]:
    """The JSON Schema apispec makes of a marshmallow schema, unknown fields allowed."""
    json_schema = docs.marshmallow.converter.schema2jsonschema(schema_class)
    json_schema["additionalProperties"] = dict(UNKNOWN_FIELDS)
    return json_schema


def describe_api(docs: ApiDocs) -> None:
    """The Data Cortex ingest endpoints and their bundle and event schemas."""
    bundle = _object_schema(docs, SCHEMAS["bundle"])
    mapping = {}
    for event_type in EVENT_TYPES:
        name = _component_name(event_type)
        event = _object_schema(docs, SCHEMAS[event_type])
        event["properties"]["type"] = {"type": "string", "enum": [event_type]}
        docs.component(name, event, description=f"A `{event_type}` event.")
        mapping[event_type] = f"#/components/schemas/{name}"
    device_tag = {**bundle["properties"]["device_tag"], "minLength": 1}
    docs.component("TrackBundle", {
        "type": "object",
        "properties": {**bundle["properties"], "device_tag": device_tag, "events": {
            "type": "array", "minItems": 1, "maxItems": 100,
            "description": "1 to ingest.max_events_per_bundle (100) events; an invalid event is logged "
                           "and its valid neighbours are accepted",
            "items": {"oneOf": [{"$ref": ref} for ref in mapping.values()],
                      "discriminator": {"propertyName": "type", "mapping": mapping}},
        }},
        "required": sorted({*bundle.get("required", ()), "device_tag", "events"}),
        "additionalProperties": dict(UNKNOWN_FIELDS),
    }, description="A bundle of events from one device: the bundle's fields apply to all its events.")

    line = _object_schema(docs, SCHEMAS["log"])
    docs.component("LogLine", line, description="One application log line.")
    docs.component("AppLogBundle", {
        "type": "object",
        "properties": {**bundle["properties"], **line["properties"], "events": {
            "type": "array", "minItems": 1, "maxItems": 100,
            "items": {"$ref": "#/components/schemas/LogLine"},
            "description": "the log lines; without this list, the bundle itself is one line",
        }},
        "required": sorted(bundle.get("required", ())),
        "anyOf": [{"required": ["events"]}, {"required": ["log_line"]}],
        "additionalProperties": dict(UNKNOWN_FIELDS),
    }, description="A bundle of application log lines, or a bundle that is itself one line.")

    for endpoint, component, summary in (
        ("track", "TrackBundle", "Send a bundle of interaction events"),
        ("app_log", "AppLogBundle", "Send a bundle of application log lines"),
    ):
        path = f"/{{org}}/1/{endpoint}"
        docs.operation(Operation(
            "post", path, f"post_{endpoint}", summary, tag=TAG,
            description="One invalid event never costs its valid neighbours: they are accepted, and it is "
                        "kept with its reasons in the ingest error log. A retried bundle is idempotent: "
                        "events already accepted are recognised and not stored twice, and the answer is "
                        "still 200.",
            parameters=(ORG_PARAMETER, CURRENT_TIME_PARAMETER),
            request_body=RequestBody(component, description=BODY_DESCRIPTION,
                                     other_content={"text/plain": {"type": "string",
                                                                   "description": "the bundle's JSON text"}}),
            responses=INGEST_RESPONSES,
        ))
        docs.operation(Operation(
            "options", path, f"preflight_{endpoint}", "CORS preflight", tag=TAG,
            description="Browsers ask before posting cross-origin; every ingest answer carries the "
                        "CORS headers, errors included.",
            parameters=(ORG_PARAMETER,),
            responses={200: ApiResponse("Access-Control-Allow-Origin: * and the allowed methods and headers",
                                        content_type=None,
                                        headers={"Access-Control-Allow-Origin": "always *",
                                                 "Access-Control-Allow-Methods": "POST, OPTIONS"})},
        ))
