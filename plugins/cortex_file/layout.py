"""Where the file sink puts a record: ``{org}/{YYYY-MM-DD}[.errors][.N].ndjson``.

One stream of files per org, UTC day of ``received_at`` and kind of file (events or
rejected events); a stream's files are numbered parts, part 0 having no number, and only
the highest-numbered part is ever appended to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["StreamKey", "day_of", "org_dirname", "part_name", "stream_parts"]

_SAFE_ORG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_FILE = re.compile(
    r"(?P<day>\d{4}-\d{2}-\d{2})(?P<errors>\.errors)?(?:\.(?P<part>[1-9]\d*))?\.ndjson"
)
_KEEP = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class StreamKey:
    """One stream of files: an org's directory name, a UTC day and events or errors."""

    org_dir: str
    day: str
    errors: bool


def org_dirname(org: Any) -> str:
    """The directory name for ``org``: the slug itself when it is a safe file name.

    Anything else (path separators, a leading dot, spaces, non-ASCII) is %-escaped byte by
    byte, so that no org can write outside its own directory.
    """
    text = str(org)
    if _SAFE_ORG.fullmatch(text) and text not in (".", ".."):
        return text
    escaped = "".join(
        chr(byte) if byte in _KEEP else f"%{byte:02X}" for byte in text.encode("utf-8")
    )
    return escaped or "%00"


def day_of(received_at: Any) -> str | None:
    """The UTC day (``YYYY-MM-DD``) of an ISO 8601 string or datetime; None if it is neither."""
    if isinstance(received_at, str):
        if received_at.endswith("Z") and _DAY.match(received_at):
            return received_at[:10]
        try:
            moment = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
        except ValueError:
            return None
    elif isinstance(received_at, datetime):
        moment = received_at
    else:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d")


def part_name(key: StreamKey, part: int) -> str:
    """The file name of part ``part`` of the stream ``key``."""
    kind = ".errors" if key.errors else ""
    number = f".{part}" if part else ""
    return f"{key.day}{kind}{number}.ndjson"


def stream_parts(org_path: Path) -> dict[StreamKey, list[int]]:
    """The streams with files in ``org_path``, each with its part numbers in ascending order."""
    parts: dict[StreamKey, list[int]] = {}
    if not org_path.is_dir():
        return parts
    for entry in org_path.iterdir():
        match = _FILE.fullmatch(entry.name)
        if match is None or not entry.is_file():
            continue
        key = StreamKey(org_path.name, match["day"], bool(match["errors"]))
        parts.setdefault(key, []).append(int(match["part"] or 0))
    for numbers in parts.values():
        numbers.sort()
    return parts
