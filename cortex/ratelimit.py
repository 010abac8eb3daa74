"""Rate limits of the ingest endpoints, per API key and per client address, on flask-limiter.

Each app may have its own limits (``cortex apps set-limits``); apps without them use
``[rate_limits] per_key`` and ``per_ip``.  Limits are written in flask-limiter's notation,
``"100/second"``, ``"1000 per minute;50000 per day"``; an empty string means no limit.
Requests are counted, whatever the number of events in them.

The views check the limits themselves, after authentication: which limits apply depends
on the key's app, and a Data Cortex bundle carries its key inside the body.  So the
:class:`flask_limiter.Limiter` built here is configured (storage, strategy, key prefix,
fallback) from ``[rate_limits]`` and bound to a Flask app of its own that serves no
requests: flask-limiter's per-request hooks on the serving app would cost every request
about 30 µs (measured) to find that no decorated limit applies.

The counters live in the configured storage: ``memory://`` counts per process (served by
:mod:`cortex.ratelimit_storage`, flask-limiter's memory storage without its timer thread; with
several gunicorn workers each has its own counters, so a client gets up to workers × the
limit; the server warns at startup), ``redis://host:port`` is shared by all workers and
nodes.  When the storage cannot be reached the request is let through and the error
logged: refusing events because the limiter is down would lose more than it protects.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from flask import Flask
from flask_limiter import Limiter
from limits import RateLimitItem, parse_many

from cortex.config import ConfigError, reveal
from cortex.control import KeyOwner
from cortex.ratelimit_storage import SweepingMemoryStorage, limiter_uri

log = logging.getLogger("cortex.ratelimit")

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")


@lru_cache(maxsize=1024)
def parse_limits(text: str) -> tuple[RateLimitItem, ...]:
    """The limits of a limit string (``""``: none); raises ``ValueError`` when malformed."""
    if not text or not text.strip():
        return ()
    return tuple(parse_many(text))


def check_limit_string(text: str, where: str) -> None:
    """A clear error for a limit string flask-limiter cannot read."""
    try:
        parse_limits(text)
    except ValueError:
        raise ConfigError(
            f"{where} = {text!r} is not a rate limit; write e.g. \"100/second\" or "
            "\"1000 per minute;50000 per day\", or \"\" for no limit"
        ) from None


@dataclass
class Verdict:
    """The outcome of a check: allowed or not, and the headers that describe the limit."""

    allowed: bool
    limit: int = 0
    remaining: int = 0
    reset_seconds: int = 0

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` (IETF draft names; ``Reset`` in seconds), and ``Retry-After``
        when refused."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_seconds))
        return headers


class Planned(NamedTuple):
    """One limit a client's requests count against."""

    item: RateLimitItem
    #: the identifiers limits' strategies take (key prefix, then the client's)
    ids: tuple[str, ...]
    #: the counter's key in the storage (fixed window)
    counter_key: str
    #: seconds of the limit's window
    expiry: int


#: what a request without any applicable limit gets (no headers to show)
UNLIMITED = Verdict(True)


class RateLimits:
    """Counts requests per API key and per (app, client address) against their limits."""

    def __init__(self, settings: dict):
        self.enabled = bool(settings["enabled"])
        self.per_key_default = settings["per_key"]
        self.per_ip_default = settings["per_ip"]
        self.storage_uri = reveal(settings["storage_uri"])
        self.key_prefix = settings["key_prefix"]
        self.limiter = self._make_limiter(settings) if self.enabled else None
        self._last_error_log = 0.0
        # fixed window (the default) is one counter increment per limit: done here on the
        # storage with the counters' keys built once per client (see _plan), instead of
        # limits' hit(), which rebuilds the key from its parts on every call
        self._fixed_window = settings["strategy"] == "fixed-window"
        self._plans: dict[tuple, tuple[Planned, ...]] = {}
        storage = self.limiter.storage if self.limiter is not None else None
        #: the storage's increment without limits' wrappers, where it has one (memory://)
        self._count = storage.count if isinstance(storage, SweepingMemoryStorage) else None

    def _make_limiter(self, settings: dict) -> Limiter:
        check_limit_string(self.per_key_default, "rate_limits.per_key")
        check_limit_string(self.per_ip_default, "rate_limits.per_ip")
        if settings["strategy"] not in STRATEGIES:
            raise ConfigError(f"rate_limits.strategy must be one of {', '.join(STRATEGIES)}, "
                              f"not {settings['strategy']!r}")
        limiter = Limiter(
            key_func=lambda: "",
            storage_uri=limiter_uri(self.storage_uri),
            strategy=settings["strategy"],
            swallow_errors=True,
        )
        holder = Flask("cortex-ratelimit")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                limiter.init_app(holder)
        except Exception as error:  # a storage URI limits cannot use, a missing driver
            raise ConfigError(f"rate_limits.storage_uri {_redact(self.storage_uri)!r} cannot be used: {error}") from None
        return limiter

    def limits_of(self, owner: KeyOwner) -> tuple[str, str]:
        """The (per key, per address) limit strings of ``owner``'s app."""
        per_key = self.per_key_default if owner.rate_limit_per_key is None else owner.rate_limit_per_key
        per_ip = self.per_ip_default if owner.rate_limit_per_ip is None else owner.rate_limit_per_ip
        return per_key, per_ip

    def check(self, owner: KeyOwner, client_ip: str | None, describe: bool = True) -> Verdict:
        """Count one request of ``owner``'s key from ``client_ip`` and judge it.

        The verdict describes the most constraining limit: the first one exceeded, or else
        the one with the fewest requests left.  With ``describe=False`` an allowed request
        gets :data:`UNLIMITED` instead of its numbers, which saves a storage round trip per
        limit (the Data Cortex endpoints send no rate-limit headers on success).
        """
        if self.limiter is None:
            return UNLIMITED
        per_key, per_ip = self.limits_of(owner)
        plan = self._plans.get((per_key, per_ip, owner.key_id, owner.app_id, client_ip))
        if plan is None:
            plan = self._plan(owner, client_ip, per_key, per_ip)
        if not plan:
            return UNLIMITED
        try:
            strategy = self.limiter.limiter
            count = self._count
            tightest: Verdict | None = None
            for item, ids, counter_key, expiry in plan:
                if not self._fixed_window:
                    allowed = strategy.hit(item, *ids)
                elif count is not None:
                    allowed = count(counter_key, expiry) <= item.amount
                else:  # what FixedWindowRateLimiter.hit(item, *ids) does
                    allowed = self.limiter.storage.incr(counter_key, expiry) <= item.amount
                if allowed and not describe:
                    continue
                stats = strategy.get_window_stats(item, *ids)
                verdict = Verdict(allowed, item.amount, max(0, stats.remaining),
                                  max(0, math.ceil(stats.reset_time - time.time())))
                if not allowed:
                    return verdict
                if tightest is None or verdict.remaining < tightest.remaining:
                    tightest = verdict
            return tightest or UNLIMITED
        except Exception as error:  # storage down: let the request through (see module doc)
            now = time.monotonic()
            if now - self._last_error_log > 10:
                self._last_error_log = now
                log.error("rate limit storage %s failed (%s); requests are not limited until it is back",
                          _redact(self.storage_uri), error)
            return UNLIMITED

    def _plan(self, owner: KeyOwner, client_ip: str | None, per_key: str,
              per_ip: str) -> tuple[Planned, ...]:
        """The limits a request of ``owner``'s key from ``client_ip`` counts against, made
        once per client."""
        prefix = self.key_prefix
        checks = [(item, ("key", str(owner.key_id))) for item in _parse_or_none(per_key, owner)]
        checks += [(item, ("ip", str(owner.app_id), client_ip or "-")) for item in _parse_or_none(per_ip, owner)]
        plan = []
        for item, identity in checks:
            ids = (prefix, *identity) if prefix else identity
            plan.append(Planned(item, ids, item.key_for(*ids), item.get_expiry()))
        if len(self._plans) >= 100_000:
            self._plans.clear()
        self._plans[(per_key, per_ip, owner.key_id, owner.app_id, client_ip)] = result = tuple(plan)
        return result

    def reset(self) -> None:
        """Forget every counter (tests, tools)."""
        if self.limiter is not None:
            self.limiter.reset()


def _parse_or_none(text: str, owner: KeyOwner) -> tuple[RateLimitItem, ...]:
    try:
        return parse_limits(text)
    except ValueError:
        log.error("app %s/%s has an unreadable rate limit %r; not limiting it", owner.org, owner.app, text)
        return ()


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return uri


def per_worker_warning(settings: dict, workers: int) -> str | None:
    """The startup warning for counters kept per process while several workers serve."""
    if not settings["enabled"] or workers <= 1:
        return None
    uri = str(reveal(settings["storage_uri"]))
    if not uri.startswith("memory://"):
        return None
    return (f"rate limits are counted per worker: rate_limits.storage_uri is {uri!r} and "
            f"{workers} workers serve, so a client may send up to {workers} times its limit. "
            "Set rate_limits.storage_uri to a Redis server (e.g. \"redis://127.0.0.1:6379\") "
            "to share the counters.")
