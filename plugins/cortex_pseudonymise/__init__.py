"""The ``pseudonymise`` enricher: identifiers replaced by keyed digests before any sink.

See :mod:`cortex_pseudonymise.keys` for the digest and :func:`pseudonyms` for the forms a
deletion request must look for (answered through the ``identifier_forms`` hook).
"""

from __future__ import annotations

from cortex import hookimpl
from cortex_pseudonymise.enricher import DEFAULT_FIELDS, PseudonymiseEnricher
from cortex_pseudonymise.keys import KeyRing, pseudonyms

__all__ = ["DEFAULT_FIELDS", "KeyRing", "PseudonymiseEnricher", "pseudonyms"]


@hookimpl
def register_enrichers(register):
    """Register the ``pseudonymise`` enricher type."""
    register(PseudonymiseEnricher)


@hookimpl
def identifier_forms(config, org, kind, value):
    """The pseudonyms ``value`` may be stored under in ``org``, under every key, current and
    retired (data-subject exports, deletions and tombstones look for them)."""
    return pseudonyms(config, org, value)
