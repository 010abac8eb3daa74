"""The ``language`` enricher type."""

from __future__ import annotations

from typing import Any

from werkzeug.datastructures import LanguageAccept
from werkzeug.http import parse_accept_header

from cortex import Enricher


def language_of(accept_language: str | None) -> str | None:
    """The lower-case ISO 639 code of the most preferred language of an ``Accept-Language``
    header (``"en-GB,en;q=0.9"`` → ``"en"``), or None."""
    if not accept_language:
        return None
    for value, quality in parse_accept_header(accept_language, LanguageAccept):
        primary = value.replace("_", "-").split("-", 1)[0].lower()
        if quality > 0 and 2 <= len(primary) <= 3 and primary.isascii() and primary.isalpha():
            return primary
    return None


class LanguageEnricher(Enricher):
    """Fills ``language`` of records that lack it from the request's ``Accept-Language``, as
    the Data Cortex API specifies: the primary subtag of the most preferred language."""

    type_name = "language"
    description = "language from the Accept-Language header when the client sent none"
    fields = ("language",)

    def __init__(self, name, options, context):
        super().__init__(name, options, context)
        if self.options:
            raise ValueError(f"takes no options (got {', '.join(sorted(self.options))})")

    def enrich(self, records: list[dict[str, Any]]) -> None:
        """Set ``language`` where it is missing and the header names one."""
        parsed: dict[str, str | None] = {}
        for record in records:
            if record.get("language"):
                continue
            header = (record.get("context") or {}).get("accept_language")
            if not header:
                continue
            if header not in parsed:
                parsed[header] = language_of(header)
            if parsed[header]:
                record["language"] = parsed[header]
