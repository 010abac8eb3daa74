"""The marshmallow schemas of the generic interactions API: the one definition of its fields.

``POST /api/v1/interactions`` takes one :data:`InteractionSchema` object and
``POST /api/v1/interactions/batch`` a JSON array of 1 to :data:`MAX_BATCH_EVENTS` of them.
The hot path validates with a validator compiled from :data:`InteractionSchema`
(:mod:`cortex.ingest.compiled`), which gives the same results as ``Schema.load``.  The
answer schemas (:data:`IngestResultSchema`) document what the endpoints send back.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from cortex.ingest.fields import Text, Timestamp
from cortex.ingest.interaction_fields import Identifier, JsonObject

#: the event types every client may use without defining them; any other name matching
#: :data:`EVENT_TYPE_PATTERN` is a custom event type
STANDARD_EVENT_TYPES = ("click", "page_view", "purchase", "form_submit", "feedback")

#: custom event type names: a letter, then letters, digits, ``_``, ``.``, ``:`` or ``-``
EVENT_TYPE_PATTERN = r"[A-Za-z][A-Za-z0-9_.:-]{0,63}"

#: ``business_id`` names an app of the API key's org, so it follows the app name rule
BUSINESS_ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"

MAX_BATCH_EVENTS = 500

#: limits of ``event_properties``
PROPERTIES_MAX_DEPTH = 5
PROPERTIES_MAX_KEYS = 100
PROPERTIES_MAX_BYTES = 16_384
#: limits of ``device_info``
DEVICE_INFO_MAX_DEPTH = 2
DEVICE_INFO_MAX_KEYS = 20
DEVICE_INFO_MAX_BYTES = 2_048

INTERACTION_FIELDS = {
    "event_type": Identifier(
        64,
        pattern=EVENT_TYPE_PATTERN,
        pattern_help=" (" + ", ".join(STANDARD_EVENT_TYPES) + " or a custom name)",
        required=True,
        metadata={"description": "click, page_view, purchase, form_submit, feedback, or a custom name"},
    ),
    "timestamp": Timestamp(
        metadata={"type": "string", "format": "date-time",
                  "description": "ISO 8601, UTC unless an offset is given; default: the receive time"},
    ),
    "event_id": Identifier(
        128,
        metadata={"description": "unique per event and org; retries with the same event_id are "
                                 "recognised. Made by the server when absent (a UUIDv7) and returned"},
    ),
    "user_id": Identifier(128, metadata={"description": "an anonymised or hashed consumer or session id"}),
    "business_id": Identifier(
        64,
        pattern=BUSINESS_ID_PATTERN,
        metadata={"description": "the name of an app of the API key's org; default: the key's own app"},
    ),
    "product_id": Identifier(128),
    "source": Text(256, metadata={"description": "traffic origin: campaign, referral, ..."}),
    "event_properties": JsonObject(
        max_depth=PROPERTIES_MAX_DEPTH,
        max_keys=PROPERTIES_MAX_KEYS,
        max_bytes=PROPERTIES_MAX_BYTES,
    ),
    "device_info": JsonObject(
        max_depth=DEVICE_INFO_MAX_DEPTH,
        max_keys=DEVICE_INFO_MAX_KEYS,
        max_bytes=DEVICE_INFO_MAX_BYTES,
        known={"browser": Text(64), "os": Text(64), "device_model": Text(64)},
    ),
}

#: one event of the generic interactions API
InteractionSchema: type[Schema] = Schema.from_dict(dict(INTERACTION_FIELDS), name="InteractionSchema")


class EventFateSchema(Schema):
    """What became of one event of a request."""

    index = fields.Integer(required=True, metadata={"description": "position in the request (0 for a single event)"})
    event_id = fields.String(allow_none=True, metadata={"description": "as sent, or made by the server"})
    status = fields.String(required=True, validate=validate.OneOf(["accepted", "duplicate", "rejected"]))
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "rejected events only: field name -> reasons"},
    )
    warnings = fields.List(fields.String(), metadata={"description": "what was coerced or cleaned"})


class IngestResultSchema(Schema):
    """The answer of both interactions endpoints: counts and every event's fate."""

    accepted = fields.Integer(required=True)
    duplicate = fields.Integer(required=True)
    rejected = fields.Integer(required=True)
    events = fields.List(fields.Nested(EventFateSchema), required=True)


class ErrorSchema(Schema):
    """An answer that refuses the whole request."""

    error = fields.String(required=True, metadata={"description": "what happened and what to do"})
    status = fields.Integer(required=True)
