"""Marshmallow schemas of the query API: what each endpoint takes and what it answers.

Request schemas load query-string arguments; response schemas describe the JSON answers
(they are what the OpenAPI document is built from).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema

BUCKETS = ("hour", "day", "week", "month")
TAXONOMY = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
#: dimensions a breakdown or a count can be grouped by
DIMENSIONS = ("type", "app", "os", "device_type", "country", "app_ver", "source", *TAXONOMY)
#: the longest range one query may cover
MAX_RANGE_DAYS = 732
DEFAULT_RANGE_DAYS = 30


class DateOrDateTime(fields.Field):
    """``2024-06-01`` (a whole day) or ``2024-06-01T13:00:00Z``; read as UTC."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("Not a date.")
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("Use a date (2024-06-01) or an ISO 8601 time (2024-06-01T13:00:00Z).") from None
        return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class CommaList(fields.Field):
    """``a,b,c`` (or the argument repeated) as a list of non-empty strings."""

    def _deserialize(self, value, attr, data, **kwargs):
        values = value if isinstance(value, list) else [value]
        items = [item.strip() for text in values for item in str(text).split(",") if item.strip()]
        if not items:
            raise ValidationError("Give at least one value.")
        return items


def _start(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.combine(value, time.min, tzinfo=timezone.utc)


def _end(value: date | datetime) -> datetime:
    """An inclusive end date is the start of the next day; a time is taken as it is."""
    if isinstance(value, datetime):
        return value
    return datetime.combine(value + timedelta(days=1), time.min, tzinfo=timezone.utc)


class FilterSchema(Schema):
    """The filters every query takes.

    ``start_date`` and ``end_date`` are inclusive days (or exact times, the end exclusive);
    the default is the last 30 days.  ``platform`` is another name for ``os`` and
    ``campaign`` for ``source``.  List filters take ``a,b`` or a repeated argument.
    """

    class Meta:
        unknown = EXCLUDE

    business_id = fields.String(metadata={"description": "the org (its slug); also ?org="})
    start_date = DateOrDateTime(metadata={"description": "first day (inclusive) or time"})
    end_date = DateOrDateTime(metadata={"description": "last day (inclusive) or end time (exclusive)"})
    app = CommaList(metadata={"description": "app names"})
    os = CommaList(metadata={"description": "operating systems / platforms (also ?platform=)"})
    device_type = CommaList()
    country = CommaList(metadata={"description": "ISO 3166 two-letter codes"})
    app_ver = CommaList()
    source = CommaList(metadata={"description": "traffic source or campaign (also ?campaign=)"})
    event_type = CommaList(metadata={"description": "event types (install, economy, purchase, ...)"})
    kingdom = CommaList()
    phylum = CommaList()
    klass = CommaList(data_key="class")
    order = CommaList()
    family = CommaList()
    genus = CommaList()
    species = CommaList()
    bucket = fields.String(load_default="day", validate=validate.OneOf(BUCKETS))
    use = fields.String(load_default="auto", validate=validate.OneOf(("auto", "rollups", "raw")),
                        metadata={"description": "answer from the rollups when possible (auto), always (rollups) or never (raw)"})

    @pre_load
    def aliases(self, data, **kwargs):
        """Accept ``org``, ``platform`` and ``campaign`` for their canonical names."""
        data = _flatten(data)
        for alias, name in (("org", "business_id"), ("platform", "os"), ("campaign", "source")):
            if alias in data and name not in data:
                data[name] = data[alias]
        return data

    @post_load
    def times(self, data, **kwargs):
        """Turn the dates into a half-open UTC time range ``[start, end)``."""
        now = datetime.now(timezone.utc)
        end = _end(data.pop("end_date")) if "end_date" in data else _end(now.date())
        start = _start(data.pop("start_date")) if "start_date" in data else end - timedelta(days=DEFAULT_RANGE_DAYS)
        if start >= end:
            raise ValidationError("start_date must come before end_date.", "start_date")
        if end - start > timedelta(days=MAX_RANGE_DAYS):
            raise ValidationError(f"A query covers at most {MAX_RANGE_DAYS} days.", "end_date")
        data["start"], data["end"] = start, end
        if "klass" in data:
            data["class"] = data.pop("klass")
        return data


def _flatten(data):
    """A werkzeug MultiDict as a dict whose repeated arguments are lists."""
    if hasattr(data, "to_dict"):
        return {key: values if len(values) > 1 else values[0] for key, values in data.to_dict(flat=False).items()}
    return dict(data)


class CountsSchema(FilterSchema):
    """Event counts: grouped by ``by`` (a dimension, default the event type)."""

    by = fields.String(load_default="type", validate=validate.OneOf(DIMENSIONS))


class ActiveUsersSchema(FilterSchema):
    """Active users per bucket, counted as distinct devices or users."""

    by = fields.String(load_default="device", validate=validate.OneOf(("device", "user")))


class RetentionSchema(FilterSchema):
    """Retention of the cohorts that installed within the range."""

    days = CommaList(load_default=lambda: ["1", "7", "30"])

    @validates_schema
    def check_days(self, data, **kwargs):
        """Retention days are whole numbers from 1 to 365."""
        for day in data.get("days", []):
            if not day.isdigit() or not 1 <= int(day) <= 365:
                raise ValidationError("days are whole numbers from 1 to 365, e.g. 1,7,30", "days")


class FunnelSchema(FilterSchema):
    """A funnel: ``steps`` in order (``type`` or ``type:kingdom``), each within ``window``."""

    steps = CommaList(required=True)
    window = fields.Integer(load_default=86400, validate=validate.Range(min=1, max=90 * 86400),
                            metadata={"description": "seconds from the first step to the last"})
    by = fields.String(load_default="device", validate=validate.OneOf(("device", "user")))

    @validates_schema
    def check_steps(self, data, **kwargs):
        """A funnel has 2 to 10 steps."""
        if not 2 <= len(data.get("steps", [])) <= 10:
            raise ValidationError("a funnel has 2 to 10 steps", "steps")


class ExperimentsSchema(FilterSchema):
    """Experiments: users per variant and their conversion to ``conversion_event``."""

    experiment = fields.String()
    conversion_event = fields.String(load_default="economy",
                                     metadata={"description": "the event type that counts as converting"})


class BreakdownSchema(FilterSchema):
    """Top ``limit`` values of ``dimension`` by events."""

    dimension = fields.String(required=True, validate=validate.OneOf(DIMENSIONS))
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=1000))


class ListingSchema(FilterSchema):
    """A page of raw events, newest first; ``cursor`` is the previous page's ``next_cursor``."""

    cursor = fields.String()
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1))


class ExportSchema(FilterSchema):
    """An export of raw events (``query=events``) or of a query's result."""

    format = fields.String(load_default="jsonl", validate=validate.OneOf(("csv", "jsonl")))
    query = fields.String(load_default="events")


# -- responses -------------------------------------------------------------------------------
class SeriesPointSchema(Schema):
    period = fields.String(metadata={"description": "start of the bucket (day: 2024-06-01)"})
    count = fields.Integer()
    users = fields.Integer()


class EventsAnswerSchema(Schema):
    business_id = fields.String()
    event_type = fields.List(fields.String(), allow_none=True)
    start_date = fields.String()
    end_date = fields.String()
    bucket = fields.String()
    total = fields.Integer()
    unique_users = fields.Integer()
    revenue_usd = fields.Float()
    series = fields.List(fields.Nested(SeriesPointSchema))


class CountsAnswerSchema(Schema):
    by = fields.String()
    bucket = fields.String()
    total = fields.Integer()
    groups = fields.List(fields.Dict(), metadata={"description": "[{value, total, series: [{period, count}]}]"})


class ActiveUsersAnswerSchema(Schema):
    bucket = fields.String()
    by = fields.String()
    series = fields.List(fields.Dict(), metadata={"description": "[{period, active, new, returning}]"})


class RetentionAnswerSchema(Schema):
    days = fields.List(fields.Integer())
    cohorts = fields.List(fields.Dict(), metadata={"description": "[{cohort, size, retained: {day: {users, rate}}}]"})


class RevenueAnswerSchema(Schema):
    revenue_usd = fields.Float()
    paying_users = fields.Integer()
    active_users = fields.Integer()
    arpdau = fields.Float()
    conversion_rate = fields.Float()
    series = fields.List(fields.Dict())


class FunnelAnswerSchema(Schema):
    steps = fields.List(fields.Dict(), metadata={"description": "[{step, users, conversion_from_first, conversion_from_previous}]"})
    window = fields.Integer()


class ExperimentsAnswerSchema(Schema):
    experiments = fields.List(fields.Dict())


class BreakdownAnswerSchema(Schema):
    dimension = fields.String()
    rows = fields.List(fields.Dict(), metadata={"description": "[{value, events, users}]"})


class PageSchema(Schema):
    items = fields.List(fields.Dict())
    next_cursor = fields.String(allow_none=True)


class ErrorAnswerSchema(Schema):
    error = fields.String()
    reasons = fields.Dict()


class TokenRequestSchema(Schema):
    label = fields.String(validate=validate.Length(max=200))
    expires_in_days = fields.Integer(validate=validate.Range(min=1, max=3650))


class TokenSchema(Schema):
    id = fields.Integer()
    prefix = fields.String()
    label = fields.String(allow_none=True)
    created_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)
    token = fields.String(metadata={"description": "only in the answer to its creation"})
