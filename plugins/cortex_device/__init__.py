"""The ``device`` enricher (browser, OS and device type from the User-Agent, with the
``ua-parser`` library) and the ``language`` enricher (from ``Accept-Language``).

``language`` needs nothing more than Cortex; ``device`` needs ``pip install 'cortex[device]'``
and, without ``ua-parser``, is not registered, so a configured ``type = "device"`` fails at
startup with an error naming the extra to install.
"""

from __future__ import annotations

import importlib.util

from cortex import hookimpl
from cortex_device.language import LanguageEnricher

__all__ = ["LanguageEnricher", "register_enrichers"]


@hookimpl
def register_enrichers(register):
    """Register the ``language`` enricher type, and ``device`` when ``ua-parser`` is installed."""
    register(LanguageEnricher)
    if importlib.util.find_spec("ua_parser") is not None:
        from cortex_device.device import DeviceEnricher

        register(DeviceEnricher)
