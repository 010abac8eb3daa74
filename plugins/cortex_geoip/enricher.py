"""The ``geoip`` enricher type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cortex import Enricher
from cortex.options import refuse_unknown_options
from cortex_geoip.lookup import NOWHERE, IptoccLookup, Lookup, MaxMindLookup, Place, is_public, parse_address

OPTIONS = {"database", "language", "store_ip"}

#: the SQL sink's column sizes
LIMITS = {"region": 64, "city": 128}


class GeoIpEnricher(Enricher):
    """Sets ``country`` (and ``region``, ``city``) of records that have no ``country``.

    The address is the record's ``geo_ip_address`` when it has one (the Data Cortex API:
    "only used if country is not present"), else the client's address (``X-Forwarded-For``
    only counts behind ``server.trust_proxy_hops`` trusted proxies).  A ``geo_ip_address``
    that is not an IP address gets a warning and no country; a private or loopback address
    gets no country.

    Options: ``database`` (path of a MaxMind ``.mmdb`` file; default: the offline
    ``iptocc`` table, country only), ``language`` (of region and city names, default
    ``en``), ``store_ip`` (keep the address used in ``geo_ip_address``; default false,
    which removes ``geo_ip_address`` from every record).
    """

    type_name = "geoip"
    description = "country (region, city with a MaxMind database) from the IP address"
    fields = ("country", "region", "city", "geo_ip_address")

    def __init__(self, name, options, context):
        super().__init__(name, options, context)
        refuse_unknown_options(self.options, OPTIONS)
        self.database = str(self.options.get("database") or "")
        self.language = str(self.options.get("language") or "en")
        self.store_ip = bool(self.options.get("store_ip", False))
        backend = "maxminddb" if self.database else "iptocc"
        try:
            __import__(backend)
        except ImportError:
            raise ValueError(f"needs the {backend} package: pip install 'cortex[geoip]'") from None
        self.lookup: Lookup | None = None
        #: address as sent -> (canonical address or None, place); addresses repeat a lot
        self._seen: dict[str, tuple[str | None, Place]] = {}

    def open(self) -> None:
        """Open the MaxMind database (memory-mapped) or load the iptocc table."""
        self._seen.clear()
        if self.database:
            if not Path(self.database).is_file():
                raise FileNotFoundError(f"the MaxMind database {self.database} does not exist")
            self.lookup = MaxMindLookup(self.database, self.language)
        else:
            self.lookup = IptoccLookup()

    def close(self) -> None:
        """Close the database."""
        if self.lookup is not None:
            self.lookup.close()
            self.lookup = None

    def locate(self, text: Any) -> tuple[str | None, Place]:
        """The canonical address of ``text`` (None if it is not one) and its place."""
        key = text if isinstance(text, str) else repr(text)
        found = self._seen.get(key)
        if found is None:
            address = parse_address(text)
            place = self.lookup.place(address) if address is not None and is_public(address) else NOWHERE
            if len(self._seen) >= 100_000:
                self._seen.clear()
            found = self._seen[key] = (address, place)
        return found

    def enrich(self, records: list[dict[str, Any]]) -> None:
        """Fill the place of records without a country; remove addresses not to be stored."""
        for record in records:
            sent = record.get("geo_ip_address")
            place = NOWHERE
            if record.get("country"):
                address = None
            elif sent:
                address, place = self.locate(sent)
                if address is None:
                    record.setdefault("warnings", []).append(
                        f"geo_ip_address: {str(sent)[:64]!r} is not an IP address; no country"
                    )
            else:
                client = (record.get("context") or {}).get("client_ip")
                address, place = self.locate(client) if client else (None, NOWHERE)
            if address is not None:
                if place.country:
                    record["country"] = place.country
                    for key in ("region", "city"):
                        value = getattr(place, key)
                        if value:
                            record[key] = value[:LIMITS[key]]
            if self.store_ip:
                if address is not None:
                    record["geo_ip_address"] = address
            else:
                record.pop("geo_ip_address", None)
