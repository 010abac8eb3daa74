"""The ``http`` sink: forwards records as JSON to a URL, in requests of bounded size.

Configuration::

    [sinks.forward]
    type = "http"
    url = "https://collector.example.com/events"
    auth = { env = "FORWARD_TOKEN" }   # sent as the auth_header's value, never printed
    auth_header = "Authorization"      # default
    headers = { X-Source = "cortex" }  # more headers; values may be secret references
    gzip = false                       # Content-Encoding: gzip request bodies
    timeout = 10.0                     # seconds to connect, and again to read the answer
    concurrency = 4                    # requests in flight at once
    max_records = 500                  # records per request
    rate_limit = 0                     # requests a second at most (0: no limit)
    max_attempts = 5                   # tries of one request per write before giving up
    retry_initial = 0.5                # first backoff (seconds), doubled each attempt
    retry_max = 30.0                   # longest backoff, and the cap on Retry-After

A request body is a JSON array of records (without ``context``), with
``Content-Type: application/json`` and an ``Idempotency-Key`` header that is the same each
time the same records are sent, so a receiver can drop what a retry repeats.

Answers: 2xx is delivered.  429, 5xx, timeouts and connection errors (and redirects, which
are not followed) are retried with
exponential backoff and jitter, never sooner than a ``Retry-After`` header asks; after
``max_attempts`` the write fails and the dispatcher retries it later, for as long as it
takes.  Any other 4xx means the receiver refuses the data: :class:`PermanentError` with the
status and the start of the answer, which the dead letter records.

Requests a receiver acknowledged are remembered (by record id) for the life of the sink, so
a write the dispatcher repeats after a partial failure (or while narrowing down refused
records) does not send them again.  After a restart a batch whose write did not finish is
sent again: delivery is at least once, and the ``Idempotency-Key`` lets a receiver make it
exactly once.
"""

from __future__ import annotations

import gzip as gzip_module
import hashlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, ClassVar, Mapping

import orjson

from cortex.config import reveal
from cortex.options import refuse_unknown_options
from cortex.sinks import PermanentError, Sink, SinkContext
from cortex_http.ratelimit import TokenBucket
from cortex_http.retry import backoff_delay, parse_retry_after

__all__ = ["HttpSink", "RetryableHTTPError"]

_DUMPS_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
_DEFAULTS: dict[str, Any] = {
    "auth_header": "Authorization",
    "headers": {},
    "gzip": False,
    "timeout": 10.0,
    "concurrency": 4,
    "max_records": 500,
    "rate_limit": 0,
    "max_attempts": 5,
    "retry_initial": 0.5,
    "retry_max": 30.0,
}
_OPTIONS = frozenset({"url", "auth", *_DEFAULTS})
#: how many acknowledged record ids the sink remembers to avoid re-sending them
_REMEMBERED_IDS = 200_000
#: how much of a refusing answer goes into the dead letter
_BODY_EXCERPT = 2000


class RetryableHTTPError(Exception):
    """A request failed in a way worth retrying (429, 5xx, timeout, connection error)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


class HttpSink(Sink):
    """POSTs batches of records as JSON to a URL."""

    type_name: ClassVar[str] = "http"
    description: ClassVar[str] = "POST batches of records as JSON to a URL (retries, Retry-After, gzip)"
    idempotent: ClassVar[bool] = False

    def __init__(self, name: str, options: Mapping[str, Any], context: SinkContext):
        super().__init__(name, options, context)
        refuse_unknown_options(self.options, _OPTIONS, f"sink {name!r} (http): ")
        settings = {**_DEFAULTS, **self.options}
        url = reveal(settings.get("url"))
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"sink {name!r} (http): url must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self.gzip = self._flag(settings, "gzip")
        self.timeout = self._number(settings, "timeout", minimum=0.001)
        self.concurrency = int(self._number(settings, "concurrency", minimum=1, integer=True))
        self.max_records = int(self._number(settings, "max_records", minimum=1, integer=True))
        self.rate_limit = self._number(settings, "rate_limit", minimum=0)
        self.max_attempts = int(self._number(settings, "max_attempts", minimum=1, integer=True))
        self.retry_initial = self._number(settings, "retry_initial", minimum=0)
        self.retry_max = self._number(settings, "retry_max", minimum=0)
        headers = settings["headers"]
        if not isinstance(headers, Mapping):
            raise ValueError(f"sink {name!r} (http): headers must be a table of header = value")
        self._headers = {"Content-Type": "application/json", "User-Agent": "cortex-http-sink"}
        self._headers.update({str(k): str(reveal(v)) for k, v in headers.items()})
        if settings.get("auth") is not None:
            self._headers[str(settings["auth_header"])] = str(reveal(settings["auth"]))
        if self.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._acknowledged: OrderedDict[str, None] = OrderedDict()
        self._acknowledged_lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._pool: ThreadPoolExecutor | None = None
        self._bucket = TokenBucket(self.rate_limit)
        self._sent_requests = 0

    # --- options ---

    def _flag(self, settings: dict, key: str) -> bool:
        value = settings[key]
        if not isinstance(value, bool):
            raise ValueError(f"sink {self.name!r} (http): {key} must be true or false, not {value!r}")
        return value

    def _number(self, settings: dict, key: str, minimum: float, integer: bool = False) -> float:
        value = settings[key]
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"sink {self.name!r} (http): {key} must be {kind} of at least {minimum}, not {value!r}")
        return value

    # --- lifecycle ---

    def open(self) -> None:
        """Start the sender threads (connections are made on first use, per thread)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"cortex-http-{self.name}")

    def close(self) -> None:
        """Stop the sender threads and close their connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        self._local = threading.local()

    def describe(self) -> dict[str, Any]:
        """Name, type and URL (without any credentials in it)."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return {
            "name": self.name,
            "type": self.type_name,
            "url": f"{parts.scheme}://{host}{parts.path}",
            "gzip": self.gzip,
            "concurrency": self.concurrency,
            "requests_sent": self._sent_requests,
        }

    # --- writing ---

    def write(self, records: list[dict[str, Any]]) -> None:
        """Send ``records`` in requests of at most ``max_records``, ``concurrency`` at a time.

        Returns when every request is acknowledged; raises :class:`PermanentError` if the
        receiver refused one (the others are still sent first), else the first retryable
        failure once a request has used up its attempts.
        """
        with self._acknowledged_lock:
            pending = [r for r in records if str(r.get("id")) not in self._acknowledged]
        if not pending:
            return
        if self._pool is None:
            self.open()
        chunks = [pending[i:i + self.max_records] for i in range(0, len(pending), self.max_records)]
        futures = [self._pool.submit(self._send, chunk) for chunk in chunks]
        permanent: PermanentError | None = None
        retryable: Exception | None = None
        for future in futures:
            try:
                future.result()
            except PermanentError as error:
                permanent = permanent or error
            except Exception as error:  # noqa: BLE001 - every other failure is retried
                retryable = retryable or error
        if permanent is not None:
            raise permanent
        if retryable is not None:
            raise retryable

    def _send(self, chunk: list[dict[str, Any]]) -> None:
        """POST one chunk until it is acknowledged, refused, or out of attempts."""
        body = orjson.dumps(
            [{k: v for k, v in record.items() if k != "context"} for record in chunk],
            default=_json_default,
            option=_DUMPS_OPTIONS,
        )
        if self.gzip:
            body = gzip_module.compress(body, compresslevel=5)
        ids = [str(record.get("id")) for record in chunk]
        headers = {**self._headers, "Idempotency-Key": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]}
        attempt = 0
        while True:
            try:
                self._post(body, headers)
                break
            except RetryableHTTPError as error:
                attempt += 1
                if attempt >= self.max_attempts:
                    raise
                delay = backoff_delay(attempt - 1, self.retry_initial, self.retry_max, error.retry_after)
                self.context.logger.warning(
                    "sink %s: %s; attempt %d of %d in %.1fs", self.name, error, attempt + 1, self.max_attempts, delay
                )
                time.sleep(delay)
        with self._acknowledged_lock:
            for record_id in ids:
                self._acknowledged[record_id] = None
            while len(self._acknowledged) > _REMEMBERED_IDS:
                self._acknowledged.popitem(last=False)

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            self._local.session = session
            self._sessions.append(session)
        return session

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        """One POST: returns on 2xx, raises RetryableHTTPError or PermanentError otherwise."""
        import requests

        self._bucket.acquire()
        self._sent_requests += 1
        try:
            response = self._session().post(
                self.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
        except requests.Timeout as error:
            raise RetryableHTTPError(f"POST {self.url} timed out after {self.timeout}s ({type(error).__name__})") from None
        except requests.RequestException as error:
            raise RetryableHTTPError(f"POST {self.url} failed: {type(error).__name__}: {error}") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        excerpt = response.text[:_BODY_EXCERPT]
        if not 400 <= status < 500 or status == 429:
            # 429, 5xx, and a redirect (the URL may be being moved): try again later
            raise RetryableHTTPError(
                f"POST {self.url} answered {status} {response.reason}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        raise PermanentError(f"POST {self.url} answered {status} {response.reason}: {excerpt}")
