"""The bundled ``file`` sink: NDJSON files per org and UTC day (see :mod:`cortex_file.sink`)."""

from __future__ import annotations

from typing import Callable

from cortex.hookspecs import hookimpl
from cortex_file.sink import FileSink

__all__ = ["FileSink", "register_sinks"]


@hookimpl
def register_sinks(register: Callable[[type], None]) -> None:
    """Register the ``file`` sink type."""
    register(FileSink)
