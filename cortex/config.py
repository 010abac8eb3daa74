"""Configuration: defaults < TOML file < ``CORTEX_*`` environment < ``create_app`` overrides.

The file is found at ``$CORTEX_CONFIG`` (or the path given to ``create_app`` / ``--config``).
Environment variables name a key path with ``__`` between levels:
``CORTEX_QUEUE__DURABILITY=fsync`` sets ``[queue] durability``.  Their values are parsed as
TOML values when they parse (numbers, booleans, arrays), else taken as strings.

Secrets are never written in the file itself; a value may instead be a reference,
``{ env = "NAME" }`` or ``{ file = "/run/secrets/name" }``, resolved at load time into a
:class:`Secret` whose ``repr`` does not show the value.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import tomllib

ENV_PREFIX = "CORTEX_"

DEFAULTS: dict[str, Any] = {
    # where the queue, the embedded databases and the file sink live
    "data_dir": "./cortex-data",
    # SQLAlchemy URL of the control database (orgs, apps, keys); default: SQLite in data_dir
    "control_db": "",
    "server": {
        "bind": "127.0.0.1:8000",
        "workers": 2,
        "threads": 1,
        "worker_class": "sync",
        "timeout": 30,
        "graceful_timeout": 30,
        "keepalive": 5,
        "max_requests": 0,
        "trust_proxy_hops": 0,
        # gunicorn's bounds on the request line and headers (larger: 400 before Cortex runs)
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
    },
    "ingest": {
        "max_body_bytes": 1_048_576,
        "max_events_per_bundle": 100,
        # skew between client and server clocks (seconds) beyond which event times are corrected
        "clock_skew_threshold": 60,
        # events more than this many seconds in the future (after correction) are clamped
        "future_tolerance": 300,
        "dedupe_window_days": 7,
        # default for apps that do not set their own: reject whole bundles with an invalid event
        "strict": False,
        # seconds an API key lookup is cached per process (revocation takes effect within it)
        "key_cache_seconds": 5,
        # hostile-input bounds of the request body (cortex/ingest/body.py)
        "max_decoded_bytes": 8_388_608,
        "max_compression_ratio": 100,
        "max_json_depth": 32,
        "max_string_chars": 262_144,
    },
    "queue": {
        "backend": "sqlite",
        # "os": survives kill -9 of any process; "fsync": also survives power loss
        "durability": "os",
        "path": "",
        # where requests commit, fixed when the queue is made (cortex queue reshard changes
        # it): "sqlite" (the shard files below) or "lmdb" (one memory-mapped store that many
        # processes write cheaply; without fsync durability a power cut can corrupt it)
        "ingest": "sqlite",
        # the most the LMDB ingest store may grow to (bytes; 64 GiB): past it, 503 until the
        # dispatcher has moved entries out
        "ingest_max_bytes": 64 << 30,
        # with ingest = "sqlite": files requests commit to, by device, so that workers seldom
        # wait for each other; fixed when the queue is made (a queue made before shards existed has 1)
        "shards": 4,
        # backpressure: refuse bundles (503 + Retry-After) at this many queued records (0: no limit)
        "max_depth": 0,
        # ... or when the data directory's filesystem is this full (0.0-1.0; 0: no limit)
        "max_disk_fill": 0.95,
        # seconds a depth/disk measurement is reused by a process
        "pressure_check_interval": 1.0,
        # seconds a client is told to wait (Retry-After) when Cortex cannot accept
        "retry_after": 5,
        # backend = "kafka": ingest nodes produce to a topic, `cortex worker`s consume it
        "kafka": {
            "bootstrap_servers": "",
            "topic": "cortex-queue",
            # partitions of the topic when Cortex creates it: the most workers that share a sink
            "partitions": 12,
            # consumer groups are "{group}.{sink}"
            "group": "cortex",
            # seconds an ingest request waits for the broker's acknowledgement before a 503
            "ack_timeout": 10.0,
            # librdkafka settings (security.*, sasl.*, ssl.* are used by consumers too)
            "producer": {},
            "consumer": {},
        },
        # where dedupe keys live when the queue does not keep them: "local" or "redis"
        "dedupe": {
            "backend": "local",
            "url": "redis://127.0.0.1:6379/0",
            "prefix": "cortex:dedupe:",
        },
    },
    "dispatcher": {
        # run the dispatcher inside the server (one elected worker) or only in `cortex worker`
        "embedded": True,
        # records per batch (a sink may split it: the http sink posts max_records at a time)
        "batch_size": 5000,
        "poll_interval": 0.2,
        # when a batch comes out small, wait this long so the next one can fill up
        "batch_wait": 0.05,
        "retry_initial": 0.5,
        "retry_max": 60.0,
        # seconds one enricher may take for one batch before its error policy applies (0: no limit)
        "enricher_timeout": 10.0,
        # seconds between attempts to open an enricher that failed to open
        "enricher_reopen_interval": 30.0,
    },
    "interactions": {
        # events in one POST /api/v1/interactions/batch
        "max_events_per_batch": 500,
    },
    "rate_limits": {
        "enabled": True,
        # flask-limiter notation ("100/second;5000/hour"); "" means no limit.  Apps may set
        # their own (cortex apps set-limits).  Counted in requests.
        "per_key": "5000/second",
        "per_ip": "5000/second",
        # "memory://" (per process) or "redis://host:port" (shared by workers and nodes)
        "storage_uri": "memory://",
        "strategy": "fixed-window",
        "key_prefix": "cortex",
    },
    "sinks": {
        "sql": {"type": "sql"},
    },
    "enrichers": {},
    "analytics": {
        # the SQL sink the query API reads; empty: the only sink of type "sql"
        "sink": "",
        # largest number of rows one page of a raw listing may hold
        "max_page_size": 1000,
    },
    "web": {
        # key that signs session cookies; empty: a random key kept in {data_dir}/web_secret_key
        "secret_key": "",
        # send the session cookie only over HTTPS (turn off only for plain-HTTP testing)
        "secure_cookies": True,
        # hours a web login lasts
        "session_hours": 12,
    },
    "logging": {
        "level": "INFO",
        # "plain" or "json" (one object per line)
        "format": "plain",
        # one line per request (logger cortex.request, INFO)
        "requests": True,
    },
    "metrics": {
        # Prometheus metrics at /metrics
        "enabled": True,
        # serve /metrics on this address from the gunicorn master instead of the app ("" : the app)
        "bind": "",
        # require "Authorization: Bearer <token>" on /metrics (use a secret reference)
        "token": "",
        # where gunicorn workers keep their values (default: {data_dir}/metrics)
        "multiprocess_dir": "",
    },
    "health": {
        # /-/ready fails below this much free space on the data directory's filesystem
        "min_free_bytes": 104_857_600,
        # /-/ready fails when a sink is this many seconds behind (0: sinks never make it fail)
        "max_sink_lag_seconds": 0,
    },
    "retention": {
        # days after which stored events go, for every table of every org (0: keep forever)
        "events_days": 0,
        # table -> days ("files": the file sink's day files), and org -> {events_days, tables}
        "tables": {},
        "orgs": {},
        # the queue's dead-letter store and ingest error log
        "dead_letter_days": 90,
        "ingest_error_days": 90,
        # items deleted per statement, seconds between runs, seconds a run may hold a sink
        "batch_size": 1000,
        "interval": 3600,
        "max_seconds": 2.0,
    },
    "privacy": {
        # drop events of people with a tombstone (recorded by `cortex privacy delete`)
        "drop_tombstoned": True,
        # seconds a deletion waits for the dispatcher to do its part
        "wait_seconds": 60,
        # org -> bearer token of the org's admin for /api/v1/privacy (a secret reference)
        "admin_tokens": {},
    },
}


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and what to do."""


class Secret:
    """A configuration value that must not be printed; ``reveal()`` gives the value."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source

    def reveal(self) -> str:
        """The secret's value, for the code that uses it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def reveal(value: Any) -> Any:
    """``value`` itself, or the value of a :class:`Secret`."""
    return value.reveal() if isinstance(value, Secret) else value


def merge(base: dict, override: Mapping) -> dict:
    """Recursively merge ``override`` into a copy of ``base``; tables merge, values replace."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict) and not _is_ref(value):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _is_ref(value: Mapping) -> bool:
    return set(value) in ({"env"}, {"file"})


def _resolve_secrets(value: Any, where: str, environ: Mapping[str, str]) -> Any:
    if isinstance(value, Mapping):
        if _is_ref(value):
            if "env" in value:
                name = value["env"]
                if name not in environ:
                    raise ConfigError(
                        f"{where} refers to the environment variable {name}, which is not set"
                    )
                return Secret(environ[name], f"${name}")
            path = Path(value["file"])
            try:
                return Secret(path.read_text().strip(), str(path))
            except OSError as error:
                raise ConfigError(f"{where} refers to the file {path}: {error.strerror}") from None
        return {k: _resolve_secrets(v, f"{where}.{k}" if where else k, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_secrets(v, f"{where}[{i}]", environ) for i, v in enumerate(value)]
    return value


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def environment_overrides(environ: Mapping[str, str]) -> dict:
    """The configuration given by ``CORTEX_*`` variables, as a nested dict."""
    result: dict = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "CORTEX_CONFIG":
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _parse_env_value(text)
    return result


def load_file(path: str | os.PathLike) -> dict:
    """Read a TOML configuration file, with an error that names the file and the line."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from None


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict:
    """Build the effective configuration from all four layers, secrets resolved."""
    environ = os.environ if environ is None else environ
    config = copy.deepcopy(DEFAULTS)
    path = path or environ.get("CORTEX_CONFIG")
    if path:
        config = merge(config, load_file(path))
        config["config_file"] = str(Path(path).resolve())
    config = merge(config, environment_overrides(environ))
    if overrides:
        config = merge(config, overrides)
    config = _resolve_secrets(config, "", environ)
    return finish(config)


def finish(config: dict) -> dict:
    """Fill derived values (absolute data_dir, default database paths) and check types."""
    data_dir = Path(str(config["data_dir"])).expanduser().resolve()
    config["data_dir"] = str(data_dir)
    if not config.get("control_db"):
        config["control_db"] = f"sqlite:///{data_dir / 'control.db'}"
    if not config["queue"].get("path"):
        config["queue"]["path"] = str(data_dir / "queue.db")
    if config["queue"]["durability"] not in ("os", "fsync"):
        raise ConfigError('queue.durability must be "os" or "fsync"')
    if config["queue"]["backend"] not in ("sqlite", "kafka"):
        raise ConfigError(
            f'queue.backend {config["queue"]["backend"]!r} is not available; use "sqlite" or "kafka"'
        )
    if config["queue"]["dedupe"]["backend"] not in ("local", "redis"):
        raise ConfigError('queue.dedupe.backend must be "local" or "redis"')
    for section in ("sinks", "enrichers"):
        for name, table in config[section].items():
            if not isinstance(table, dict) or not table.get("type"):
                raise ConfigError(f'[{section}.{name}] needs a type, e.g. type = "sql"')
    _check_number(config, "ingest", "max_body_bytes", minimum=1024)
    _check_number(config, "ingest", "max_events_per_bundle", minimum=1)
    _check_number(config, "server", "workers", minimum=1)
    _check_number(config, "ingest", "max_decoded_bytes", minimum=config["ingest"]["max_body_bytes"])
    _check_number(config, "ingest", "max_compression_ratio", minimum=1)
    _check_number(config, "ingest", "max_json_depth", minimum=4)
    _check_number(config, "ingest", "max_string_chars", minimum=65536)
    _check_operations(config)
    _check_number(config, "interactions", "max_events_per_batch", minimum=1)
    _check_retention(config)
    return config


def _check_operations(config: dict) -> None:
    """Keys of the logs, metrics, health and backpressure settings."""
    if config["logging"]["format"] not in ("plain", "json"):
        raise ConfigError('logging.format must be "plain" or "json"')
    _check_number(config, "queue", "max_depth", minimum=0)
    if config["queue"]["ingest"] not in ("lmdb", "sqlite"):
        raise ConfigError(f"queue.ingest must be \"lmdb\" or \"sqlite\", not {config['queue']['ingest']!r}")
    _check_number(config, "queue", "ingest_max_bytes", minimum=1 << 20)
    shards = config["queue"]["shards"]
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= 64:
        raise ConfigError(f"queue.shards must be a whole number from 1 to 64, not {shards!r}")
    _check_number(config, "queue", "pressure_check_interval", minimum=0)
    _check_number(config, "queue", "retry_after", minimum=1)
    fill = config["queue"]["max_disk_fill"]
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0 <= fill <= 1:
        raise ConfigError(f"queue.max_disk_fill must be a fraction between 0 and 1 (0: no limit), not {fill!r}")
    _check_number(config, "health", "min_free_bytes", minimum=0)
    _check_number(config, "health", "max_sink_lag_seconds", minimum=0)



def _check_retention(config: dict) -> None:
    from cortex.retention import RetentionPolicy

    for key in ("events_days", "dead_letter_days", "ingest_error_days", "interval", "max_seconds"):
        _check_number(config, "retention", key, minimum=0)
    _check_number(config, "retention", "batch_size", minimum=1)
    try:
        RetentionPolicy(config["retention"])
    except (ValueError, TypeError, AttributeError) as error:
        raise ConfigError(f"{error}; e.g. [retention.tables] app_logs = 30") from None


def _check_number(config: dict, section: str, key: str, minimum: float) -> None:
    value = config[section][key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{section}.{key} must be a number of at least {minimum}, not {value!r}")


def redacted(config: Any) -> Any:
    """A copy safe to print: secrets and URL passwords hidden."""
    if isinstance(config, dict):
        return {k: redacted(v) for k, v in config.items()}
    if isinstance(config, list):
        return [redacted(v) for v in config]
    if isinstance(config, Secret):
        return repr(config)
    if isinstance(config, str) and "://" in config and "@" in config:
        from sqlalchemy.engine import make_url

        try:
            return make_url(config).render_as_string(hide_password=True)
        except Exception:
            return config
    return config
