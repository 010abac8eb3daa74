"""Marshmallow fields that coerce the loose types real SDKs send, losslessly.

Each field's :meth:`coerce` is the one place a value is checked: ``Schema.load`` calls it
through ``_deserialize``, and the compiled fast validator (:mod:`cortex.ingest.compiled`)
calls it directly.  What coercion changed is reported as a warning, never silently.
"""

from __future__ import annotations

import math
import re
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from marshmallow import ValidationError, fields

#: warnings raised while loading one record: list of "field: message" strings
current_warnings: ContextVar[list[str] | None] = ContextVar("current_warnings", default=None)

# C0 and C1 control characters and DEL; tab, newline and carriage return are text
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def strip_control(value: str) -> str:
    """``value`` without control characters (tab, newline and carriage return kept)."""
    if value.isprintable():  # the common case, checked in C
        return value
    return _CONTROL_CHARS.sub("", value)


class Coercing(fields.Field):
    """A field whose value goes through :meth:`coerce`; subclasses implement it."""

    def coerce(self, value: Any, name: str, warnings: list[str]) -> Any:
        """Return the stored form of ``value`` or raise ``ValidationError``.

        Append a human-readable note to ``warnings`` for every lossless change made.
        """
        raise NotImplementedError

    def _deserialize(self, value, attr, data, **kwargs):
        warnings = current_warnings.get()
        return self.coerce(value, attr or self.name, warnings if warnings is not None else [])


class Text(Coercing):
    """A string with a maximum length.

    Numbers become their decimal string (``user_tag: 1234``), ``false`` becomes ``""`` where
    the spec gives it that meaning (``variant_name``), control characters are removed and an
    over-long string is cut to ``max_length``; each of those is a warning.
    """

    def __init__(self, max_length: int, *, false_means_empty: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.false_means_empty = false_means_empty
        self.metadata.setdefault("maxLength", max_length)

    def coerce(self, value, name, warnings):
        if type(value) is not str:
            if value is False and self.false_means_empty:
                warnings.append(f"{name}: false read as the empty string")
                value = ""
            elif type(value) in (int, float):
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValidationError("Not a valid string.")
                value = repr(value) if isinstance(value, float) else str(value)
                warnings.append(f"{name}: number converted to the string {value!r}")
            else:
                raise ValidationError("Not a valid string.")
        if _CONTROL_CHARS.search(value):
            value = _CONTROL_CHARS.sub("", value)
            warnings.append(f"{name}: control characters removed")
        if len(value) > self.max_length:
            warnings.append(
                f"{name}: truncated from {len(value)} to {self.max_length} characters"
            )
            value = value[: self.max_length]
        return value


class Number(Coercing):
    """A finite number; a numeric string such as ``"100"`` is read as the number."""

    def coerce(self, value, name, warnings):
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                raise ValidationError("Not a finite number.")
            return value
        if kind is int:
            return float(value) if abs(value) < 2**63 else _too_big()
        if kind is str:
            try:
                number = float(value.strip())
            except ValueError:
                raise ValidationError("Not a valid number.") from None
            if not math.isfinite(number):
                raise ValidationError("Not a finite number.")
            warnings.append(f"{name}: string {value!r} read as the number {number!r}")
            return number
        raise ValidationError("Not a valid number.")


def _too_big():
    raise ValidationError("Number too large.")


class Integer(Coercing):
    """A whole number; ``3.0`` and ``"3"`` are read as 3, ``3.5`` is an error."""

    def coerce(self, value, name, warnings):
        kind = type(value)
        if kind is int:
            if abs(value) >= 2**63:
                raise ValidationError("Number too large.")
            return value
        if kind is float:
            if value.is_integer() and abs(value) < 2**63:
                return int(value)
            raise ValidationError("Must be an integer, not fractional.")
        if kind is str:
            try:
                number = int(value.strip())
            except ValueError:
                raise ValidationError("Not a valid integer.") from None
            if abs(number) >= 2**63:
                raise ValidationError("Number too large.")
            warnings.append(f"{name}: string {value!r} read as the integer {number}")
            return number
        raise ValidationError("Not a valid integer.")


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO 8601 date and time as real SDKs send it, as an aware UTC datetime.

    Accepts ``Z`` or an offset, with or without seconds and fractions; a time without an
    offset is taken as UTC.  A ``+`` that a raw query string turned into a space is put back.
    """
    text = value.strip()
    if " " in text and len(text) > 19 and text[-6] == " ":
        text = text[:-6] + "+" + text[-5:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError("Not a valid ISO 8601 date and time.") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def format_timestamp(moment: datetime) -> str:
    """The canonical record form of an aware UTC datetime: ISO 8601 with milliseconds and
    ``Z``, e.g. ``2024-06-01T13:45:30.123Z`` (canonical strings sort as their times do)."""
    # what isoformat(timespec="milliseconds") gives, in half its time (every request
    # formats its receive time)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        moment.year, moment.month, moment.day,
        moment.hour, moment.minute, moment.second, moment.microsecond // 1000,
    )


def is_canonical(value: str) -> bool:
    """True when ``value`` already has the canonical shape (most SDKs send exactly that)."""
    return len(value) == 24 and value[23] == "Z" and value[10] == "T" and value[19] == "." and value[4] == "-"


class Timestamp(Coercing):
    """An ISO 8601 date and time, stored in the canonical UTC form."""

    #: recent raw value -> canonical value: the events of a bundle often share a timestamp
    _canonical: dict[str, str] = {}

    def coerce(self, value, name, warnings):
        if type(value) is not str or len(value) > 64:
            raise ValidationError("Not a valid ISO 8601 date and time.")
        known = self._canonical.get(value)
        if known is not None:
            return known
        if is_canonical(value):
            try:
                datetime.fromisoformat(value[:23])
            except ValueError:
                raise ValidationError("Not a valid ISO 8601 date and time.") from None
            canonical = value
        else:
            canonical = format_timestamp(parse_timestamp(value))
        if len(self._canonical) >= 4096:
            self._canonical.clear()
        self._canonical[value] = canonical
        return canonical


class TagList(Coercing):
    """A list of strings, each with a maximum length (``to_list``)."""

    def __init__(self, max_length: int, max_items: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.item = Text(max_length)
        self.max_items = max_items

    def coerce(self, value, name, warnings):
        if type(value) is not list:
            raise ValidationError("Not a valid list.")
        if len(value) > self.max_items:
            raise ValidationError(f"Longer than {self.max_items} items.")
        return [self.item.coerce(item, f"{name}[{i}]", warnings) for i, item in enumerate(value)]
