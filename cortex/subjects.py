"""Data subjects: the person a data-subject request (export, delete) is about.

A person is named by one or more identifiers of the Data Cortex API: a user tag, a device
tag or a social network tag.  Every identifier may be stored under several values (the raw
tag, and the digests a pseudonymising enricher stored it under); a :class:`Subject` holds
them all, and :meth:`Subject.matches` tells whether a record belongs to the person.

Sinks receive a :class:`Subject` in :meth:`cortex.sinks.Sink.export_subject` and
:meth:`cortex.sinks.Sink.delete_subject`; :data:`IDENTITY_FIELDS` says which record fields
each kind of identifier is looked for in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["IDENTITY_FIELDS", "IDENTITY_KINDS", "Subject", "identities_for", "identity_digest"]

#: kind of identifier -> the record fields it may be stored in.  A user tag is also the
#: generic interactions API's ``user_id``; a social tag is also the sender (``from_tag``)
#: of the message events sent on that network.
IDENTITY_FIELDS: dict[str, tuple[str, ...]] = {
    "user_tag": ("user_tag", "user_id"),
    "device_tag": ("device_tag",),
    "facebook_tag": ("facebook_tag", "from_tag"),
    "twitter_tag": ("twitter_tag", "from_tag"),
    "google_tag": ("google_tag", "from_tag"),
    "game_center_tag": ("game_center_tag", "from_tag"),
}

IDENTITY_KINDS: tuple[str, ...] = tuple(IDENTITY_FIELDS)


def identities_for(state: Any, org: str, kind: str, raw_value: str) -> list[str]:
    """Every value the identifier ``raw_value`` of ``kind`` may be stored under in ``org``.

    The raw value first, then what plugins answer to the ``identifier_forms`` hook (a
    pseudonymising enricher: each digest it may have stored the value under with the org's
    current and rotated keys), in sorted order.  This is the one place that knows how
    identifiers are stored; exports, deletions and tombstones all go through it.
    """
    if kind not in IDENTITY_FIELDS:
        raise ValueError(f"unknown kind of identifier {kind!r}; one of {', '.join(IDENTITY_KINDS)}")
    raw = str(raw_value)
    forms: set[str] = set()
    for answer in state.plugins.hook.identifier_forms(config=state.config, org=org, kind=kind, value=raw):
        forms.update(str(form) for form in answer or ())
    forms.discard(raw)
    return [raw, *sorted(forms)]


def identity_digest(org: str, kind: str, value: str) -> bytes:
    """The digest a tombstone keeps instead of the identifier itself."""
    return hashlib.sha256(f"{org}\x00{kind}\x00{value}".encode("utf-8")).digest()


@dataclass(frozen=True)
class Subject:
    """A person in one org: kind of identifier -> every value it may be stored under."""

    org: str
    identities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, state: Any, org: str, given: Mapping[str, Iterable[str]]) -> "Subject":
        """The subject named by ``given`` (kind -> raw identifiers), all stored forms included."""
        identities: dict[str, tuple[str, ...]] = {}
        for kind, raw_values in given.items():
            values: list[str] = []
            for raw in raw_values:
                if raw is None or str(raw) == "":
                    continue
                for value in identities_for(state, org, kind, raw):
                    if value not in values:
                        values.append(value)
            if values:
                identities[kind] = tuple(values)
        if not identities:
            raise ValueError("name the person: give at least one user tag, device tag or social tag")
        return cls(org, identities)

    def field_values(self) -> dict[str, set[str]]:
        """Record field -> the values that mark a record of this person."""
        result: dict[str, set[str]] = {}
        for kind, values in self.identities.items():
            for name in IDENTITY_FIELDS[kind]:
                result.setdefault(name, set()).update(values)
        return result

    def values(self) -> set[str]:
        """Every identifier value of the person (for a quick text pre-filter)."""
        return {value for values in self.identities.values() for value in values}

    def matches(self, record: Mapping[str, Any]) -> bool:
        """True when ``record`` (of this org) belongs to the person.

        Looks at the record's own fields and, for a rejected record, at the event and the
        bundle as they were sent (``payload``, ``bundle``), where a tag may be a number.
        """
        if record.get("org") != self.org:
            return False
        wanted = self.field_values()
        places = [record]
        for nested in ("payload", "bundle"):
            value = record.get(nested)
            if isinstance(value, Mapping):
                places.append(value)
        for place in places:
            for name, values in wanted.items():
                value = place.get(name)
                if value is not None and not isinstance(value, (dict, list)) and str(value) in values:
                    return True
        return False

    def describe(self) -> dict[str, int]:
        """Kind -> how many stored forms are searched (never the values themselves)."""
        return {kind: len(values) for kind, values in self.identities.items()}
