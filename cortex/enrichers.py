"""The enricher type: adds derived fields to records before they reach the sinks.

An enricher plugin subclasses :class:`Enricher` and registers the class through the
``register_enrichers`` hook.  The dispatcher runs the configured enrichers in the order the
configuration lists them (``[enrichers.NAME]`` tables, first to last), on whole batches,
once for all sinks (see :mod:`cortex.enrichment` for error policies and timeouts).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from cortex.sinks import SinkContext

__all__ = ["Enricher", "ERROR_POLICIES"]

#: what happens to the records an enricher failed on (raised, timed out, could not open)
ERROR_POLICIES = ("pass_through", "drop_field", "dead_letter")


class Enricher:
    """Base class of every enricher type.

    ``enrich`` receives the batch's records (dicts, see :mod:`cortex.sinks`; rejected
    records only with ``enriches_rejected``) and changes them in place.  Request context an enricher may
    need (``client_ip``, ``user_agent``, ``accept_language``) is in each record's ``context``
    dict, which sinks never see.  Change nested values by replacing them
    (``record["device_info"] = {...}``), except ``warnings`` (append) and ``extra``.

    The constructor must not connect or load big files (it also runs at startup to check
    the options: raise ``ValueError`` with a helpful message for a bad one); do that in
    :meth:`open`, which runs after the gunicorn fork.
    """

    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: the fields this enricher sets or replaces; the ``drop_field`` error policy removes
    #: them from the records it failed on
    fields: ClassVar[tuple[str, ...]] = ()
    #: the error policy when the configuration names none
    default_on_error: ClassVar[str] = "pass_through"
    #: the error policies the configuration may choose (an enricher that must fail closed,
    #: such as pseudonymisation, leaves out ``pass_through``)
    allowed_on_error: ClassVar[tuple[str, ...]] = ERROR_POLICIES
    #: True to be given rejected records too (``kind == "rejected"``, with the event as
    #: sent in ``payload`` and the bundle in ``bundle``), which sinks store as the ingest
    #: error log: an enricher that must keep raw values out of every sink needs them
    enriches_rejected: ClassVar[bool] = False

    def __init__(self, name: str, options: Mapping[str, Any], context: SinkContext):
        self.name = name
        self.options = dict(options)
        self.context = context

    def open(self) -> None:
        """Load data files or connect. Called after fork."""

    def enrich(self, records: list[dict[str, Any]]) -> None:
        """Add fields to ``records`` in place."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`open` took."""

    def identifier_forms(self, org: str, value: str) -> set[str]:
        """Every form under which this enricher may have stored the identifier ``value`` of
        ``org`` (e.g. its pseudonyms under current and retired keys).  Enrichers that
        rewrite identifiers return them here and answer the ``identifier_forms`` hook with
        them, so that data-subject requests find them; the others return an empty set."""
        return set()
