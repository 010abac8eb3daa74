"""The ``geoip`` enricher: the country (and, with a MaxMind database, region and city) of a
record without one, from its ``geo_ip_address`` or else the client's address.

Backends: the offline ``iptocc`` package (country only; the default), or any MaxMind-format
database the operator points ``database`` at (``pip install 'cortex[geoip]'``).  The address
is never stored unless ``store_ip = true``: ``geo_ip_address`` is removed from the records.
"""

from __future__ import annotations

from cortex import hookimpl
from cortex_geoip.enricher import GeoIpEnricher

__all__ = ["GeoIpEnricher"]


@hookimpl
def register_enrichers(register):
    """Register the ``geoip`` enricher type."""
    register(GeoIpEnricher)
