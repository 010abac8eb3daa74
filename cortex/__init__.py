"""Cortex: a self-hosted event ingestion server that speaks the Data Cortex bundle API.

The public API for plugin authors::

    from cortex import hookimpl, Sink, Enricher, PermanentError, SinkContext
"""

from cortex.enrichers import Enricher
from cortex.hookspecs import hookimpl
from cortex.sinks import PermanentError, Sink, SinkContext

__all__ = ["Enricher", "PermanentError", "Sink", "SinkContext", "hookimpl", "create_app"]
__version__ = "0.1.0"


def create_app(*args, **kwargs):
    """Create the Flask app; see :func:`cortex.app.create_app`."""
    from cortex.app import create_app as factory

    return factory(*args, **kwargs)
