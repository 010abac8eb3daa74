"""Keyed digests of identifiers: HMAC-SHA256 under a per-org key derived from a server key.

A pseudonym is ``<key id>:<digest>``: the id of the key that made it, a colon, and the
HMAC-SHA256 of the identifier under the org's key, in unpadded URL-safe base64 (43
characters).  The org's key is HMAC-SHA256(server key, "cortex-pseudonym-org:" + org), so
one identifier has one pseudonym in every app of an org, and unrelated ones in two orgs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any, Mapping

from cortex.config import reveal

#: key ids are short: a pseudonym must fit the 62 characters of a Data Cortex tag
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,12}$")
MIN_KEY_LENGTH = 32


class KeyRing:
    """The current key, which makes new pseudonyms, and the retired ones, kept so that the
    pseudonyms they made can still be found for a deletion request."""

    def __init__(self, keys: Mapping[str, Any], current: str):
        if not keys:
            raise ValueError("needs at least one key: keys = { ID = { env = \"NAME\" } }")
        self.secrets: dict[str, bytes] = {}
        for key_id, secret in keys.items():
            if not KEY_ID.match(str(key_id)):
                raise ValueError(f"key id {key_id!r} must be 1 to 12 letters, digits, '-' or '_'")
            value = reveal(secret)
            if not isinstance(value, str) or len(value) < MIN_KEY_LENGTH:
                raise ValueError(
                    f"key {key_id!r} must be a secret of at least {MIN_KEY_LENGTH} characters "
                    "(e.g. the output of: openssl rand -hex 32)"
                )
            self.secrets[str(key_id)] = value.encode()
        if current not in self.secrets:
            raise ValueError(f"current_key {current!r} is not one of the keys ({', '.join(self.secrets)})")
        self.current = current
        self._org_keys: dict[tuple[str, str], bytes] = {}

    def org_key(self, key_id: str, org: str) -> bytes:
        """The key of ``org`` derived from the server key ``key_id``."""
        found = self._org_keys.get((key_id, org))
        if found is None:
            material = b"cortex-pseudonym-org:" + org.encode()
            found = self._org_keys[(key_id, org)] = hmac.new(self.secrets[key_id], material, hashlib.sha256).digest()
        return found

    def pseudonym(self, org: str, value: str, key_id: str | None = None) -> str:
        """The pseudonym of ``value`` in ``org`` under ``key_id`` (default: the current key)."""
        key_id = key_id or self.current
        digest = hmac.digest(self.org_key(key_id, org), value.encode("utf-8", "surrogatepass"), "sha256")
        return f"{key_id}:{base64.urlsafe_b64encode(digest)[:43].decode()}"

    def all_pseudonyms(self, org: str, value: str) -> set[str]:
        """The pseudonyms of ``value`` in ``org`` under every key, current and retired."""
        return {self.pseudonym(org, value, key_id) for key_id in self.secrets}


def pseudonyms(config: dict, org: str, value: str) -> set[str]:
    """Every pseudonym under which ``value`` (a raw user_tag, device_tag, social tag, user_id)
    of ``org`` may be stored, by the ``pseudonymise`` enrichers of ``config`` (the app's
    configuration), under current and retired keys.  Empty when none applies to ``org``.

    A deletion request deletes the rows that hold any of these, or the raw value itself
    (stored before pseudonymisation was turned on).
    """
    from cortex_pseudonymise.enricher import PseudonymiseEnricher

    found: set[str] = set()
    for name, table in config.get("enrichers", {}).items():
        if table.get("type") == PseudonymiseEnricher.type_name:
            options = {k: v for k, v in table.items() if k not in ("type", "on_error", "timeout")}
            found |= PseudonymiseEnricher.from_options(name, options).identifier_forms(org, value)
    return found
