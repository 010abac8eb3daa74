"""How long to wait before the next attempt: exponential backoff, jitter, ``Retry-After``."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (moment - now).total_seconds())


def backoff_delay(attempt: int, initial: float, maximum: float, retry_after: float | None = None) -> float:
    """The wait before attempt ``attempt + 1`` (``attempt`` counts from 0).

    Full jitter on an exponential ceiling spreads many senders out; a server's
    ``Retry-After`` is a floor (we never come back sooner than asked), capped at ``maximum``.
    """
    ceiling = min(maximum, initial * (2 ** attempt))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, maximum))
    return delay
