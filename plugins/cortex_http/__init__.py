"""The bundled ``http`` sink (see :mod:`cortex_http.sink`); needs ``pip install 'cortex[http]'``.

Without ``requests`` installed the plugin registers nothing, so a configured
``type = "http"`` fails at startup with an error naming the extra to install.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

from cortex.hookspecs import hookimpl

__all__ = ["register_sinks"]


@hookimpl
def register_sinks(register: Callable[[type], None]) -> None:
    """Register the ``http`` sink type when its client library is installed."""
    if importlib.util.find_spec("requests") is None:
        return
    from cortex_http.sink import HttpSink

    register(HttpSink)
