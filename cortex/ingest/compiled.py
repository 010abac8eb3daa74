"""Validators compiled from the marshmallow schemas, for the hot path.

``Schema.load`` spends most of its time in marshmallow's generic machinery (hooks, partial
loading, error bookkeeping), 60-100 µs per event.  A :class:`CompiledSchema` reads the
schema's fields once and afterwards calls each field's own ``coerce`` directly, so the
checks, limits and messages stay exactly the schema's while the per-event cost drops to a
few microseconds.  ``tests/test_compiled.py`` checks both give the same results.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError

from cortex.ingest.fields import Coercing, Text, current_warnings, strip_control

MISSING_MESSAGE = "Missing data for required field."
MAX_EXTRA_FIELDS = 50
MAX_EXTRA_STRING = 1024
MAX_EXTRA_KEY = 64


class CompiledSchema:
    """A fast ``load`` equivalent of one marshmallow schema made of :class:`Coercing` fields."""

    def __init__(self, schema_class: type[Schema]):
        schema = schema_class()
        self.schema_class = schema_class
        self.fields: dict[str, Coercing] = {}
        for name, field in schema.fields.items():
            if not isinstance(field, Coercing):
                raise TypeError(f"{schema_class.__name__}.{name} is not a Coercing field")
            self.fields[field.data_key or name] = field
        self.required = tuple(key for key, field in self.fields.items() if field.required)
        # the common case of a Text field, a short printable string, needs no coercion:
        # checked inline, it skips a method call per field (the same rule as Text.coerce)
        self._text_limits = {
            key: field.max_length for key, field in self.fields.items() if type(field) is Text
        }

    def load(self, data: dict[str, Any]) -> tuple[dict, dict, list[str], dict[str, list[str]]]:
        """Validate ``data``; returns (values, extra, warnings, errors).

        ``values`` holds the coerced known fields; ``extra`` the unknown fields (kept, within
        limits); ``errors`` maps field names to messages and is empty when ``data`` is valid.
        A ``null`` value counts as an absent field.
        """
        fields = self.fields
        text_limits = self._text_limits
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        warnings: list[str] = []
        errors: dict[str, list[str]] = {}
        for key, value in data.items():
            limit = text_limits.get(key)
            if limit is not None and type(value) is str and len(value) <= limit and value.isprintable():
                values[key] = value
                continue
            field = fields.get(key)
            if field is None:
                _keep_extra(extra, key, value, warnings)
            elif value is not None:
                try:
                    values[key] = field.coerce(value, key, warnings)
                except ValidationError as error:
                    errors[key] = _messages(error)
        for key in self.required:
            if key not in values and key not in errors:
                errors[key] = [MISSING_MESSAGE]
        return values, extra, warnings, errors

    def load_with_marshmallow(self, data: dict[str, Any]) -> tuple[dict, list[str], dict]:
        """The same validation through ``Schema.load`` (for tests and tools, not the hot path).

        Returns (values, warnings, errors) for the known, non-null fields.
        """
        known = {k: v for k, v in data.items() if k in self.fields and v is not None}
        warnings: list[str] = []
        token = current_warnings.set(warnings)
        try:
            return self.schema_class().load(known), warnings, {}
        except ValidationError as error:
            return {}, warnings, {k: _messages_from(v) for k, v in error.messages.items()}
        finally:
            current_warnings.reset(token)


def _messages(error: ValidationError) -> list[str]:
    return _messages_from(error.messages)


def _messages_from(messages: Any) -> list[str]:
    if isinstance(messages, list):
        return [str(m) for m in messages]
    if isinstance(messages, dict):
        return [f"{k}: {m}" for k, v in messages.items() for m in _messages_from(v)]
    return [str(messages)]


def _keep_extra(extra: dict, key: str, value: Any, warnings: list[str]) -> None:
    """Keep an unknown field if it is a scalar and within limits; say so when it is not."""
    name = strip_control(key[:MAX_EXTRA_KEY])
    if len(extra) >= MAX_EXTRA_FIELDS:
        warnings.append(f"{name}: unknown field dropped (more than {MAX_EXTRA_FIELDS} unknown fields)")
    elif type(value) is str:
        if len(value) > MAX_EXTRA_STRING:
            warnings.append(f"{name}: unknown field truncated to {MAX_EXTRA_STRING} characters")
            value = value[:MAX_EXTRA_STRING]
        cleaned = strip_control(value)
        if cleaned is not value and cleaned != value:
            warnings.append(f"{name}: control characters removed from unknown field")
        extra[name] = cleaned
    elif value is None or type(value) in (int, float, bool):
        extra[name] = value
    else:
        warnings.append(f"{name}: unknown field of type {type(value).__name__} dropped")
