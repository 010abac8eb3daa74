"""The ``geoip`` enricher: the country (and, with a MaxMind database, region and city) of a
record without one, from its ``geo_ip_address`` or else the client's address.

Backends: the offline ``iptocc`` package (country only; the default), or any MaxMind-format
database the operator points ``database`` at (``pip install 'cortex[geoip]'``).  The address
is never stored unless ``store_ip = true``: ``geo_ip_address`` is removed from the records.

Without either library installed the plugin registers nothing, so a configured
``type = "geoip"`` fails at startup with an error naming the extra to install.
"""

from __future__ import annotations

import importlib.util

from cortex import hookimpl

__all__ = ["register_enrichers"]


@hookimpl
def register_enrichers(register):
    """Register the ``geoip`` enricher type when a backend library is installed."""
    if importlib.util.find_spec("iptocc") is None and importlib.util.find_spec("maxminddb") is None:
        return
    from cortex_geoip.enricher import GeoIpEnricher

    register(GeoIpEnricher)
