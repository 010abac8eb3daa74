"""Log output: plain text or JSON lines, one format for every Cortex log (``logging.format``).

Records may carry structured ``fields`` (the request log does); the plain format writes them
as ``key=value`` pairs after the message, the JSON format as keys of the line's object.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone
from typing import Any

import orjson

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("plain", "json")


#: a value with one of these is written quoted (as a JSON string)
_NEEDS_QUOTES = re.compile(r'[ "=\n\t]')


def _plain_value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode() if isinstance(value, (dict, list)) else str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return orjson.dumps(text).decode()
    return text


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``; values with spaces are quoted."""

    def __init__(self):
        super().__init__(PLAIN_FORMAT)
        self._second: int | None = None
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``logging``'s default time text, with the date and time part made once a second
        (a request log line each request made this a measurable cost)."""
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._second_text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        """The line for ``record``."""
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            head, newline, rest = line.partition("\n")
            line = f"{head} {_plain_pairs(fields)}{newline}{rest}"
        return line


def _plain_pairs(fields: dict[str, Any]) -> str:
    """``key=value ...`` of the fields that are not None (a request line has a dozen: the
    common kinds are written here without a call per value)."""
    needs_quotes = _NEEDS_QUOTES.search
    parts = []
    for key, value in fields.items():
        kind = type(value)
        if kind is str:
            if not value or needs_quotes(value):
                value = orjson.dumps(value).decode()
        elif value is None:
            continue
        elif kind is not int and kind is not float:
            value = _plain_value(value)
        parts.append(f"{key}={value}")
    return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the record's
    ``fields`` and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The line for ``record``."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                if value is not None:
                    line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def make_formatter(name: str) -> logging.Formatter:
    """The formatter called ``name`` (``plain`` or ``json``)."""
    return JsonFormatter() if name == "json" else PlainFormatter()


def configure_logging(settings: dict) -> None:
    """Send logs to stderr in the configured format and level, unless the host application
    configured logging itself (then its handlers are left alone, as ``basicConfig`` does)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "cortex_handler", False)), None)
    if handler is None:
        if root.handlers:
            return
        handler = logging.StreamHandler()
        handler.cortex_handler = True
        root.addHandler(handler)
    handler.setFormatter(make_formatter(settings.get("format", "plain")))
    root.setLevel(settings["level"])
