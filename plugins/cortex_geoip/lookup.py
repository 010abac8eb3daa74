"""Address → place look-ups: the offline ``iptocc`` table or a MaxMind-format database."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Place:
    """Where an address is: ISO 3166-1 alpha-2 country, and region and city when known."""

    country: str | None
    region: str | None = None
    city: str | None = None


NOWHERE = Place(None)


class Lookup(Protocol):
    """Finds the place of a (valid, public) IP address."""

    def place(self, address: str) -> Place: ...

    def close(self) -> None: ...


def parse_address(text: object) -> str | None:
    """The canonical form of an IP address (an IPv4-mapped IPv6 address as IPv4, as
    dual-stack servers report IPv4 clients), or None when ``text`` is not one."""
    if not isinstance(text, str):
        return None
    try:
        parsed = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return str(getattr(parsed, "ipv4_mapped", None) or parsed)


def is_public(address: str) -> bool:
    """False for private, loopback, link-local, reserved and other non-routable addresses."""
    return ipaddress.ip_address(address).is_global


class IptoccLookup:
    """Countries from the registries' delegation tables bundled with ``iptocc``."""

    def __init__(self):
        from iptocc import country_code

        self._country_code = country_code

    def place(self, address: str) -> Place:
        country = self._country_code(address)
        return Place(country) if country else NOWHERE

    def close(self) -> None:
        pass


class MaxMindLookup:
    """Country, region (first subdivision) and city from a MaxMind-format (``.mmdb``)
    database such as GeoLite2-City, GeoIP2-City or GeoLite2-Country."""

    def __init__(self, path: str, language: str = "en"):
        import maxminddb

        self._reader = maxminddb.open_database(path)
        self.language = language

    def _name(self, item: dict | None) -> str | None:
        if not item:
            return None
        names = item.get("names") or {}
        return names.get(self.language) or names.get("en") or item.get("iso_code")

    def place(self, address: str) -> Place:
        found = self._reader.get(address)
        if not found:
            return NOWHERE
        country = (found.get("country") or found.get("registered_country") or {}).get("iso_code")
        subdivisions = found.get("subdivisions") or [None]
        return Place(country, self._name(subdivisions[0]), self._name(found.get("city")))

    def close(self) -> None:
        self._reader.close()
