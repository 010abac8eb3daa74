"""The enricher type: adds derived fields to records before they reach the sinks.

An enricher plugin subclasses :class:`Enricher` and registers the class through the
``register_enrichers`` hook.  The dispatcher runs configured enrichers in the order the
configuration lists them, on whole batches, before handing the batch to every sink.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from cortex.sinks import SinkContext

__all__ = ["Enricher"]


class Enricher:
    """Base class of every enricher type.

    ``enrich`` receives the batch's records (dicts, see :mod:`cortex.sinks`) and changes them
    in place.  Request context an enricher may need (client address, ``User-Agent``,
    ``Accept-Language``) is in each record's ``context`` dict, which sinks never store.
    """

    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""

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
