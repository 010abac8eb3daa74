"""The sink type: where delivered events go.

A sink plugin subclasses :class:`Sink` and registers the class through the
``register_sinks`` hook.  The dispatcher owns one instance per configured sink and calls it
from one thread at a time::

    sink = SinkClass(name, options, context)
    sink.open()               # after the worker fork: connect, create schema
    sink.write(records)       # many times, each a batch in queue order
    sink.close()

Delivery is at least once: after a crash the dispatcher re-sends the batch whose write it
had not seen return.  Every record carries a stable ``id``; a sink that makes writes
idempotent on it (as the bundled ``sql`` sink does) turns that into exactly once in effect.

Records are plain JSON-compatible dicts (see ``docs`` in README, "Event records"):

``id``
    32 hex characters, stable across retries of the same event.
``seq``
    the position of the record's queue entry (monotonic; several records can share one).
``org``, ``app``, ``app_id``
    who sent it.
``kind``
    ``"track"`` (a Data Cortex event), ``"app_log"`` (a log line), ``"interaction"``
    (the generic API) or ``"rejected"`` (an invalid event kept for the ingest error log).
``type``
    the event type (``install``, ``dau``, ``event``, ``economy``, ``link``,
    ``message_send``, ``message_click``, ``experiment``; ``log`` for log lines).
``received_at``, ``event_datetime``, ``event_time``
    ISO 8601 UTC strings: when Cortex received it, the client's time as sent, and the
    time after clock-skew correction and clamping.
field names of the spec
    ``device_tag``, ``app_ver``, ``kingdom``, ``spend_amount`` ... flat, bundle fields and
    event fields together; absent fields are absent.
``extra``, ``warnings``
    unknown fields as sent, and what validation coerced or truncated (enrichers add theirs).
fields enrichers add (when configured)
    ``country``, ``region``, ``city`` (geoip); ``spend_amount_usd`` or ``amount_usd`` and
    ``usd_rate_date`` (currency); ``browser``, ``browser_ver``, ``os``, ``os_ver``,
    ``device_type`` (device); ``language``.  Pseudonymisation replaces identifiers in place.

Rejected records instead hold ``reasons`` (field → messages), ``payload`` (the event as
sent) and ``bundle`` (the bundle fields as sent, API key removed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from cortex.retention import RetentionPolicy
    from cortex.subjects import Subject

__all__ = ["Sink", "SinkContext", "PermanentError", "sink_can"]


class PermanentError(Exception):
    """Raise from :meth:`Sink.write` when retrying cannot help (the data itself is refused).

    The dispatcher then narrows the batch down to the records that fail and moves those to
    the dead-letter store; every other exception is taken as temporary and retried with
    backoff for as long as it takes (a database that is down must not cost events).
    """


@dataclass
class SinkContext:
    """What the core hands a sink besides its own options."""

    data_dir: Path
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("cortex.sink"))
    #: the queue's promise, which a sink's own commits should match: "os" (a 200 survives
    #: kill -9; no fsync needed) or "fsync" (a 200 survives power loss)
    durability: str = "os"


class Sink:
    """Base class of every sink type.

    Subclasses set ``type_name`` and implement :meth:`write`; :meth:`open` and
    :meth:`close` are optional.  ``options`` is the sink's configuration table with
    ``type`` removed and secret references already resolved.
    """

    #: the name configuration uses in ``type = "..."``
    type_name: ClassVar[str] = ""
    #: one line for ``cortex plugins`` and ``/-/plugins``
    description: ClassVar[str] = ""
    #: True when writing the same record twice stores it once
    idempotent: ClassVar[bool] = False

    def __init__(self, name: str, options: Mapping[str, Any], context: SinkContext):
        self.name = name
        self.options = dict(options)
        self.context = context

    def open(self) -> None:
        """Connect and prepare storage (create or migrate schema). Called after fork."""

    def write(self, records: list[dict[str, Any]]) -> None:
        """Store a batch of records durably before returning.

        Raise :class:`PermanentError` for data the sink will never accept; raise anything
        else for a failure worth retrying.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and files."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for status pages; never include secrets."""
        return {"name": self.name, "type": self.type_name}

    # Optional capabilities.  A sink that cannot do one leaves the method as it is here;
    # :func:`sink_can` tells the core which ones a sink has, and the core reports the sinks
    # that could not (a data-subject deletion names them).

    def open_for_export(self) -> None:
        """Prepare for :meth:`export_subject` in a process that may not be the dispatcher.

        The default calls :meth:`open`; a sink whose ``open`` takes a lock the dispatcher
        holds (the ``file`` sink) overrides it to prepare for reading only.
        """
        self.open()

    def export_subject(self, subject: "Subject") -> Iterator[dict[str, Any]]:
        """Every stored record of ``subject`` (a :class:`cortex.subjects.Subject`), in record form.

        Optional.  Called after :meth:`open_for_export`.
        """
        raise NotImplementedError

    def delete_subject(self, subject: "Subject") -> int:
        """Delete every stored record of ``subject``; return how many were removed.

        Optional.  Called on the opened sink by the dispatcher's thread of this sink (or,
        when no dispatcher runs, by the process handling the request), never during a write.
        """
        raise NotImplementedError

    def expire(self, policy: "RetentionPolicy", limit: int) -> int:
        """Delete at most ``limit`` stored items older than ``policy`` allows; return how many.

        Optional.  Items are records, or whole files for a file-based sink.  The dispatcher
        calls it between batches until it returns less than ``limit``, so that each call
        holds locks only briefly.  ``policy.cutoff(org, table)`` gives the moment before
        which a table's records of an org go (None: kept).
        """
        raise NotImplementedError


def sink_can(sink: Sink, capability: str) -> bool:
    """True when ``sink`` implements the optional method ``capability``
    (``"export_subject"``, ``"delete_subject"`` or ``"expire"``)."""
    return getattr(type(sink), capability, None) is not getattr(Sink, capability)

