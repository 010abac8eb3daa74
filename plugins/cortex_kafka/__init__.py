"""The bundled ``kafka`` sink (see :mod:`cortex_kafka.sink`); needs ``pip install 'cortex[kafka]'``.

Without ``confluent-kafka`` installed the plugin registers nothing, so a configured
``type = "kafka"`` fails at startup with an error naming the extra to install.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

from cortex.hookspecs import hookimpl

__all__ = ["register_sinks"]


@hookimpl
def register_sinks(register: Callable[[type], None]) -> None:
    """Register the ``kafka`` sink type when its client library is installed."""
    if importlib.util.find_spec("confluent_kafka") is None:
        return
    from cortex_kafka.sink import KafkaSink

    register(KafkaSink)
