"""The ``device`` enricher (browser, OS and device type from the User-Agent, with the
``ua-parser`` library) and the ``language`` enricher (from ``Accept-Language``)."""

from __future__ import annotations

from cortex import hookimpl
from cortex_device.device import DeviceEnricher
from cortex_device.language import LanguageEnricher

__all__ = ["DeviceEnricher", "LanguageEnricher"]


@hookimpl
def register_enrichers(register):
    """Register the ``device`` and ``language`` enricher types."""
    register(DeviceEnricher)
    register(LanguageEnricher)
