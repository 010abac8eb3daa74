"""The ``pseudonymise`` enricher type."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cortex import Enricher, SinkContext
from cortex.options import refuse_unknown_options
from cortex_pseudonymise.keys import KeyRing

OPTIONS = {"orgs", "keys", "current_key", "fields"}

#: identifiers of a person or device: the bundle's tags, the social tags of link events,
#: the sender and receivers of messages, and the generic API's user_id
DEFAULT_FIELDS = (
    "user_tag", "device_tag", "facebook_tag", "twitter_tag", "google_tag", "game_center_tag",
    "from_tag", "to_tag", "to_list", "user_id",
)


class PseudonymiseEnricher(Enricher):
    """Replaces identifiers with HMAC-SHA256 pseudonyms (``<key id>:<digest>``) in the records
    of the configured orgs, before any sink sees them.

    Options: ``orgs`` (org slugs, or ``["*"]`` for every org), ``keys`` (a table of key id
    → secret reference, e.g. ``k2025 = { env = "CORTEX_PSEUDONYM_KEY_2025" }``),
    ``current_key`` (the id that makes new pseudonyms; the others are retired and kept for
    deletion requests), ``fields`` (default :data:`DEFAULT_FIELDS`).

    It fails closed: its error policy is ``dead_letter`` (or ``drop_field``, which removes the
    identifiers); ``pass_through`` is refused, so raw identifiers never reach a sink.
    """

    type_name = "pseudonymise"
    description = "identifiers replaced by keyed HMAC-SHA256 pseudonyms, per org"
    default_on_error = "dead_letter"
    allowed_on_error = ("dead_letter", "drop_field")
    fields = DEFAULT_FIELDS
    # the ingest error log in the sinks holds the rejected events as sent
    enriches_rejected = True

    def __init__(self, name, options, context):
        super().__init__(name, options, context)
        refuse_unknown_options(self.options, OPTIONS)
        orgs = self.options.get("orgs")
        if not isinstance(orgs, list) or not orgs or not all(isinstance(o, str) for o in orgs):
            raise ValueError('needs orgs, a list of org slugs (or ["*"] for every org)')
        self.all_orgs = "*" in orgs
        self.orgs = frozenset(orgs)
        keys = self.options.get("keys")
        if not isinstance(keys, dict):
            raise ValueError('needs keys, a table of key id = secret, e.g. keys = { k1 = { env = "NAME" } }')
        current = self.options.get("current_key") or (next(iter(keys)) if len(keys) == 1 else None)
        if not current:
            raise ValueError("needs current_key, the id of the key that makes new pseudonyms")
        self.ring = KeyRing(keys, str(current))
        fields = self.options.get("fields", list(DEFAULT_FIELDS))
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ValueError("fields must be a list of field names")
        self.field_names = tuple(fields)
        self._recent: dict[tuple[str, str], str] = {}
        # the drop_field policy removes the identifiers this instance pseudonymises
        self.fields = self.field_names

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> "PseudonymiseEnricher":
        """An instance outside a running dispatcher (for :func:`cortex_pseudonymise.pseudonyms`)."""
        return cls(name, options, SinkContext(data_dir=Path("."), logger=logging.getLogger(f"cortex.enricher.{name}")))

    def applies_to(self, org: str) -> bool:
        """True when records of ``org`` are pseudonymised."""
        return self.all_orgs or org in self.orgs

    def enrich(self, records: list[dict[str, Any]]) -> None:
        """Replace every configured identifier field of the configured orgs' records."""
        ring = self.ring
        for record in records:
            org = record.get("org")
            if not isinstance(org, str) or not self.applies_to(org):
                continue
            if record.get("kind") == "rejected":
                for part in ("payload", "bundle"):
                    if isinstance(record.get(part), dict):
                        record[part] = self._replaced(ring, org, dict(record[part]))
            else:
                self._replaced(ring, org, record)

    def _pseudonym(self, ring: KeyRing, org: str, value: Any) -> str:
        # identifiers repeat across a batch (one device, many events): remember recent ones
        key = (org, str(value))
        found = self._recent.get(key)
        if found is None:
            if len(self._recent) >= 50_000:
                self._recent.clear()
            found = self._recent[key] = ring.pseudonym(org, key[1])
        return found

    def _replaced(self, ring: KeyRing, org: str, values: dict[str, Any]) -> dict[str, Any]:
        for field in self.field_names:
            value = values.get(field)
            if value is None or value == "":
                continue
            if isinstance(value, list):
                values[field] = [self._pseudonym(ring, org, v) for v in value]
            else:
                values[field] = self._pseudonym(ring, org, value)
        return values

    def identifier_forms(self, org: str, value: str) -> set[str]:
        """The pseudonyms of ``value`` under every key, when this instance covers ``org``."""
        return self.ring.all_pseudonyms(org, value) if self.applies_to(org) else set()
