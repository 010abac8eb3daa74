"""Log output: plain text or JSON lines, one format for every Cortex log (``logging.format``).

Records may carry structured ``fields`` (the request log does); the plain format writes them
as ``key=value`` pairs after the message, the JSON format as keys of the line's object.

A request log line is written once per request, so when Cortex's own handler is the only
place it would go (:func:`line_handler`), the request log makes the line with the
formatter's ``line()`` and writes it itself (:func:`write_line`): the same text, at about
half the cost of a :class:`logging.LogRecord` passed through the handler machinery.
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

    def line(self, created: float, levelname: str, name: str, message: str, fields: dict[str, Any]) -> str:
        """What :meth:`format` makes of a record with these attributes and no exception,
        without the record (see :func:`write_line`)."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        # LogRecord.msecs, and formatTime's "%s,%03d"
        msecs = int((created - second) * 1000)
        head = f"{self._second_text},{msecs:03d} {levelname} {name}: {message}"
        return f"{head} {_plain_pairs(fields)}" if fields else head


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

    def line(self, created: float, levelname: str, name: str, message: str, fields: dict[str, Any]) -> str:
        """What :meth:`format` makes of a record with these attributes and no exception,
        without the record (see :func:`write_line`)."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": levelname,
            "logger": name,
            "message": message,
        }
        for key, value in fields.items():
            if value is not None:
                line.setdefault(key, value)
        return orjson.dumps(line, default=str).decode()


def line_handler(logger: logging.Logger, level: int) -> logging.StreamHandler | None:
    """Cortex's own handler when it is the one place a record of ``logger`` at ``level``
    would go, with nothing on the way that could change or drop it (no filter, no other
    handler, the standard record factory); else None.

    Then :func:`write_line` may write the record's line itself: a request log line costs
    about half as much without a :class:`logging.LogRecord` and the handler machinery.
    With any other set-up (a host application's handlers, pytest's log capture) records
    go through :mod:`logging` as usual.
    """
    if logging.getLogRecordFactory() is not logging.LogRecord:
        return None
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or not getattr(handler, "cortex_handler", False) or handler.filters:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    if found is None or level < found.level or not isinstance(found.formatter, (PlainFormatter, JsonFormatter)):
        return None
    return found


def write_line(handler: logging.StreamHandler, line: str) -> bool:
    """Write a line made by the handler's formatter (``line()``) as the handler's
    ``emit`` would; False when that failed (the caller then logs the usual way, and the
    handler reports the error as it does)."""
    try:
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(line + handler.terminator)
            if hasattr(stream, "flush"):
                stream.flush()
        finally:
            handler.release()
    except RecursionError:
        raise
    except Exception:  # noqa: BLE001 - the record path reports it through handleError
        return False
    return True


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
