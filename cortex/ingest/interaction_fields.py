"""Marshmallow fields of the generic interactions API: identifiers and bounded JSON objects.

Like the fields of :mod:`cortex.ingest.fields`, each checks a value in its :meth:`coerce`,
which ``Schema.load`` and the compiled validator both call.  Identifiers are never cut
short (two ids truncated to the same prefix would become one); an over-long or malformed
identifier is an error.  JSON objects (``event_properties``, ``device_info``) are bounded in
nesting depth, number of keys and size, and their strings lose control characters.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from marshmallow import ValidationError

from cortex.ingest.fields import Coercing

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Identifier(Coercing):
    """A printable string of 1 to ``max_length`` characters, optionally matching ``pattern``.

    A whole number is read as its decimal string (with a warning); anything else that is not
    a string, an empty string, control characters or a value too long is an error.
    """

    def __init__(self, max_length: int, *, pattern: str | None = None, pattern_help: str = "", **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.pattern = re.compile(pattern) if pattern else None
        self.pattern_help = pattern_help
        self.metadata.setdefault("type", "string")
        self.metadata.setdefault("minLength", 1)
        self.metadata.setdefault("maxLength", max_length)
        if pattern:
            self.metadata.setdefault("pattern", pattern)

    def coerce(self, value, name, warnings):
        if type(value) is not str:
            if type(value) is int:
                value = str(value)
                warnings.append(f"{name}: number converted to the string {value!r}")
            else:
                raise ValidationError("Not a valid string.")
        if not value:
            raise ValidationError("Must not be empty.")
        if len(value) > self.max_length:
            raise ValidationError(f"Longer than {self.max_length} characters.")
        if not value.isprintable():
            raise ValidationError("Must not contain control or non-printable characters.")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise ValidationError(f"Does not match the pattern {self.pattern.pattern}{self.pattern_help}.")
        return value


class JsonObject(Coercing):
    """A JSON object within limits: nesting depth, keys in all, key length and JSON size.

    Depth counts objects and arrays: ``{"a": 1}`` has depth 1, ``{"a": {"b": [1]}}`` depth 3.
    Strings (keys and values) lose control characters, with a warning.  ``known`` maps keys
    to fields that check those keys' values (``device_info.browser``...).
    """

    def __init__(
        self,
        *,
        max_depth: int,
        max_keys: int,
        max_bytes: int,
        max_key_length: int = 128,
        known: dict[str, Coercing] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_depth = max_depth
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self.max_key_length = max_key_length
        self.known = known or {}
        self.metadata.setdefault("type", "object")
        self.metadata.setdefault("maxProperties", max_keys)
        self.metadata.setdefault(
            "description",
            f"A JSON object: at most {max_depth} levels of nesting, {max_keys} keys in all "
            f"(nested ones included), keys of at most {max_key_length} characters, "
            f"{max_bytes} bytes as JSON.",
        )

    def coerce(self, value, name, warnings):
        if type(value) is not dict:
            raise ValidationError("Not a valid JSON object.")
        budget = [self.max_keys]
        cleaned = self._clean(value, 1, budget, name, warnings)
        for key, field in self.known.items():
            if key in cleaned and cleaned[key] is not None:
                cleaned[key] = field.coerce(cleaned[key], f"{name}.{key}", warnings)
        size = len(orjson.dumps(cleaned))
        if size > self.max_bytes:
            raise ValidationError(f"Larger than {self.max_bytes} bytes as JSON ({size}).")
        return cleaned

    def _clean(self, value: Any, depth: int, budget: list[int], name: str, warnings: list[str]) -> Any:
        kind = type(value)
        if kind is dict or kind is list:
            if depth > self.max_depth:
                raise ValidationError(f"Nested deeper than {self.max_depth} levels.")
            if kind is list:
                return [self._clean(item, depth + 1, budget, name, warnings) for item in value]
            budget[0] -= len(value)
            if budget[0] < 0:
                raise ValidationError(f"More than {self.max_keys} keys (nested ones included).")
            cleaned = {}
            for key, item in value.items():
                if len(key) > self.max_key_length:
                    raise ValidationError(f"A key is longer than {self.max_key_length} characters.")
                cleaned[self._text(key, name, warnings)] = self._clean(item, depth + 1, budget, name, warnings)
            return cleaned
        if kind is str:
            return self._text(value, name, warnings)
        # numbers, booleans and null; orjson has already refused NaN and Infinity
        return value

    @staticmethod
    def _text(value: str, name: str, warnings: list[str]) -> str:
        if value.isprintable() or not _CONTROL_CHARS.search(value):
            return value
        warnings.append(f"{name}: control characters removed")
        return _CONTROL_CHARS.sub("", value)
