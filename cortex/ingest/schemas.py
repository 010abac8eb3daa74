"""The marshmallow schemas of the Data Cortex ingest API: the one definition of every field.

Field limits follow the Data Cortex event ingest spec, plus the fields real SDKs send that
the spec does not list (``device_family``, ``marketplace``, per-event ``group_tag``,
``facebook_tag`` on ``link`` events).  The hot path does not call ``Schema.load``; it runs a
validator compiled from these schemas (:mod:`cortex.ingest.compiled`) that gives the same
result, which the test suite checks.
"""

from __future__ import annotations

from marshmallow import Schema

from cortex.ingest.fields import Integer, Number, TagList, Text, Timestamp

TAG = 62

#: the bundle's own fields (everything but ``events``)
BUNDLE_FIELDS = {
    "api_key": Text(256, required=True),
    "app_ver": Text(16),
    "server_ver": Text(16),
    "config_ver": Text(16),
    "user_tag": Text(TAG),
    "facebook_tag": Text(TAG),
    "twitter_tag": Text(TAG),
    "google_tag": Text(TAG),
    "game_center_tag": Text(TAG),
    "device_tag": Text(TAG),
    "device_type": Text(16),
    "device_family": Text(32),
    "os": Text(16),
    "os_ver": Text(16),
    "browser": Text(16),
    "browser_ver": Text(16),
    "marketplace": Text(16),
    "country": Text(2),
    "geo_ip_address": Text(64),
    "language": Text(16),
    "group_tag": Text(32),
}

TAXONOMY_FIELDS = {
    "kingdom": Text(32),
    "phylum": Text(32),
    "class": Text(32),
    "order": Text(32),
    "family": Text(32),
    "genus": Text(32),
    "species": Text(32),
    "float1": Number(),
    "float2": Number(),
    "float3": Number(),
    "float4": Number(),
}

COMMON_EVENT_FIELDS = {
    "type": Text(32, required=True),
    "event_datetime": Timestamp(required=True),
    "event_index": Integer(),
    "group_tag": Text(32),
}

ONLINE_STATUS = {"online_status": Text(16)}

SOCIAL_TAGS = {
    "user_tag": Text(TAG),
    "facebook_tag": Text(TAG),
    "twitter_tag": Text(TAG),
    "google_tag": Text(TAG),
    "game_center_tag": Text(TAG),
}

#: event type -> its fields (besides the bundle's)
EVENT_FIELDS: dict[str, dict] = {
    "install": {**COMMON_EVENT_FIELDS, **TAXONOMY_FIELDS, **ONLINE_STATUS},
    "dau": {**COMMON_EVENT_FIELDS, **TAXONOMY_FIELDS, **ONLINE_STATUS},
    "event": {**COMMON_EVENT_FIELDS, **TAXONOMY_FIELDS, **ONLINE_STATUS},
    "economy": {
        **COMMON_EVENT_FIELDS,
        **TAXONOMY_FIELDS,
        **ONLINE_STATUS,
        "spend_amount": Number(required=True),
        "spend_currency": Text(16, required=True),
        "spend_type": Text(32),
    },
    "link": {**COMMON_EVENT_FIELDS, **SOCIAL_TAGS},
    "message_send": {
        **COMMON_EVENT_FIELDS,
        **TAXONOMY_FIELDS,
        "network": Text(16, required=True),
        "channel": Text(32),
        "from_tag": Text(TAG, required=True),
        "to_list": TagList(TAG, required=True),
    },
    "message_click": {
        **COMMON_EVENT_FIELDS,
        **TAXONOMY_FIELDS,
        "network": Text(16, required=True),
        "channel": Text(32),
        "from_tag": Text(TAG, required=True),
        "to_tag": Text(TAG, required=True),
    },
    "experiment": {
        "type": Text(32, required=True),
        "event_datetime": Timestamp(required=True),
        "group_tag": Text(32),
        "experiment_name": Text(32, required=True),
        "variant_name": Text(32, required=True, false_means_empty=True),
    },
}

#: the fields of one application log line (``/1/app_log``), besides the bundle's
LOG_LINE_FIELDS = {
    "event_datetime": Timestamp(),
    "log_line": Text(65535, required=True),
    "log_level": Text(16),
    "hostname": Text(64),
    "filename": Text(256),
    "remote_address": Text(64),
    "response_bytes": Integer(),
    "response_ms": Number(),
}

EVENT_TYPES = tuple(EVENT_FIELDS)


def _schema(name: str, field_map: dict) -> type[Schema]:
    # Schema.from_dict because the spec's "class" and "order" cannot be class attributes.
    return Schema.from_dict(dict(field_map), name=name)


#: marshmallow schema classes by event type; "bundle" and "log" for the others
SCHEMAS: dict[str, type[Schema]] = {
    "bundle": _schema("BundleSchema", BUNDLE_FIELDS),
    "log": _schema("LogLineSchema", LOG_LINE_FIELDS),
    **{
        event_type: _schema(f"{event_type.title().replace('_', '')}EventSchema", field_map)
        for event_type, field_map in EVENT_FIELDS.items()
    },
}
