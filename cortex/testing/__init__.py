"""Test helpers for Cortex and its plugins: realistic records and the sink conformance suite.

``make_record`` and ``sample_records`` (:mod:`cortex.testing.records`) build records in the
format sinks receive; ``SinkConformance`` (:mod:`cortex.testing.conformance`) is the pytest
suite every sink must pass::

    from cortex.testing import SinkConformance, make_record, sample_records

``SinkConformance`` needs pytest; it is imported on first use so that the record factory
works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cortex.testing.records import make_record, sample_records

if TYPE_CHECKING:  # pragma: no cover
    from cortex.testing.conformance import SinkConformance

__all__ = ["SinkConformance", "make_record", "sample_records"]


def __getattr__(name: str) -> Any:
    """Import :class:`SinkConformance` (and pytest) only when it is asked for."""
    if name == "SinkConformance":
        from cortex.testing.conformance import SinkConformance

        return SinkConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
