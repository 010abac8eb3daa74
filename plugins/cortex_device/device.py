"""The ``device`` enricher type."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cortex import Enricher

#: the SQL sink's column size of browser, browser_ver, os, os_ver, device_type
LIMIT = 16

#: what the parser's OS family says about a device that names no model
DESKTOP_OS = {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "FreeBSD", "Debian", "macOS"}


def _version(*parts: str | None) -> str | None:
    present = []
    for part in parts:
        if part is None:
            break
        present.append(part)
    return ".".join(present)[:LIMIT] or None


def device_type(user_agent: str, os_family: str | None, device_family: str | None, brand: str | None) -> str | None:
    """A device type in the Data Cortex style (``desktop``, ``iphone``, ``ipad``,
    ``android``, ``android_tablet``, ``mobile``, ``tablet``, ``bot``) from the parser's
    answer, or None when it cannot tell."""
    if device_family == "Spider":
        return "bot"
    if device_family in ("iPhone", "iPad", "iPod"):
        return device_family.lower()
    if os_family == "Android":
        # Android phones say "Mobile" in their user agent, tablets do not (Google's advice)
        tablet = "Tablet" in (brand or "") or "Mobile" not in user_agent
        return "android_tablet" if tablet else "android"
    if os_family in DESKTOP_OS and device_family in (None, "Other", "Mac"):
        return "desktop"
    if device_family and "tablet" in device_family.lower():
        return "tablet"
    if "Mobile" in user_agent:
        return "mobile"
    return None


@lru_cache(maxsize=4096)
def describe(user_agent: str) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """``(browser, browser_ver, os, os_ver, device_type)`` of a User-Agent string."""
    from ua_parser import parse

    result = parse(user_agent)
    agent, os_, device = result.user_agent, result.os, result.device
    browser = agent.family[:LIMIT] if agent and agent.family != "Other" else None
    browser_ver = _version(agent.major, agent.minor, agent.patch) if agent else None
    os_name = os_.family[:LIMIT] if os_ and os_.family != "Other" else None
    os_ver = _version(os_.major, os_.minor, os_.patch) if os_ else None
    kind = device_type(user_agent, os_.family if os_ else None, device.family if device else None,
                       device.brand if device else None)
    return browser, browser_ver if browser else None, os_name, os_ver if os_name else None, kind


class DeviceEnricher(Enricher):
    """Parses the request's User-Agent into ``browser``, ``browser_ver``, ``os``, ``os_ver``
    and ``device_type``, each only where the client sent none (``os_ver`` only with ``os``,
    ``browser_ver`` only with ``browser``).

    The parser is ``ua-parser`` (the reference implementation of the uap-core rules that
    most analytics tools share, updated monthly); ``pip install 'cortex[device]'`` brings
    its compiled matcher, about 35 times faster than pure-Python regular expressions.
    Interactions take the values from their ``device_info`` first.
    """

    type_name = "device"
    description = "browser, OS and device type from the User-Agent when the client sent none"
    fields = ("browser", "browser_ver", "os", "os_ver", "device_type")

    def __init__(self, name, options, context):
        super().__init__(name, options, context)
        if self.options:
            raise ValueError(f"takes no options (got {', '.join(sorted(self.options))})")
        try:
            import ua_parser  # noqa: F401
        except ImportError:
            raise ValueError("needs the ua_parser package: pip install 'cortex[device]'") from None

    def open(self) -> None:
        """Load the parser's rules."""
        describe("Mozilla/5.0")

    def enrich(self, records: list[dict[str, Any]]) -> None:
        """Fill the device fields the client left out."""
        for record in records:
            info = record.get("device_info")
            if isinstance(info, dict):
                self._from_device_info(record, info)
            if record.get("browser") and record.get("os") and record.get("device_type"):
                continue
            user_agent = (record.get("context") or {}).get("user_agent")
            if not user_agent:
                continue
            browser, browser_ver, os_name, os_ver, kind = describe(user_agent)
            if not record.get("browser") and browser:
                record["browser"] = browser
                if browser_ver and not record.get("browser_ver"):
                    record["browser_ver"] = browser_ver
            if not record.get("os") and os_name:
                record["os"] = os_name
                if os_ver and not record.get("os_ver"):
                    record["os_ver"] = os_ver
            if not record.get("device_type") and kind:
                record["device_type"] = kind

    @staticmethod
    def _from_device_info(record: dict[str, Any], info: dict[str, Any]) -> None:
        for field, keys in (("browser", ("browser",)), ("browser_ver", ("browser_version", "browser_ver")),
                            ("os", ("os",)), ("os_ver", ("os_version", "os_ver")),
                            ("device_type", ("device_type", "type"))):
            if record.get(field):
                continue
            for key in keys:
                value = info.get(key)
                if isinstance(value, str) and value:
                    record[field] = value[:LIMIT]
                    break
