"""The ``cortex`` command-line tool (Flask's CLI, so ``cortex routes`` and ``cortex shell`` work too)."""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from cortex.config import ConfigError
from cortex.control import ControlError

DEFAULT_ORG = "demo"
DEFAULT_APP = "default"


def _set_env(name: str):
    def callback(ctx, param, value):
        if value is not None:
            os.environ[name] = str(value)
        return value

    return callback


def _factory():
    from cortex.app import create_app

    try:
        return create_app()
    except ConfigError as error:
        raise click.ClickException(f"configuration error: {error}") from None


@click.group(cls=FlaskGroup, create_app=_factory, add_default_commands=True, add_version_option=False)
@click.option("--config", "-c", type=click.Path(dir_okay=False), expose_value=False, is_eager=True,
              callback=_set_env("CORTEX_CONFIG"), help="TOML configuration file (or $CORTEX_CONFIG).")
@click.option("--data-dir", type=click.Path(file_okay=False), expose_value=False, is_eager=True,
              callback=_set_env("CORTEX_DATA_DIR"), help="Data directory (or $CORTEX_DATA_DIR).")
def cli():
    """Cortex: the self-hosted event ingestion server for the Data Cortex bundle API."""


def main() -> None:
    """Entry point of the ``cortex`` script."""
    from cortex.plugins import make_plugin_manager

    try:
        make_plugin_manager().hook.register_commands(cli=cli)
    except Exception as error:  # a broken plugin must not take the CLI down
        click.echo(f"warning: a plugin failed to add its commands: {error}", err=True)
    cli(prog_name="cortex")


def state():
    """The app state of the current CLI invocation."""
    return current_app.extensions["cortex"]


def _fail(error: Exception):
    raise click.ClickException(str(error))


def _table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def _json(value) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


# setup ---------------------------------------------------------------------------------------
def initialise(cortex_state, org: str = DEFAULT_ORG, app: str = DEFAULT_APP) -> str | None:
    """Create the first org, app and API key when the control database has no org yet.

    Returns the new key, or None when there was an org already.
    """
    control = cortex_state.control
    if control.list_orgs():
        return None
    control.create_org(org)
    control.create_app(org, app)
    key, _ = control.create_key(org, app, label="created by cortex init")
    return key


def _print_first_key(key: str, org: str, bind: str) -> None:
    host = bind if "://" in bind else f"http://{bind.replace('0.0.0.0', '127.0.0.1')}"
    click.echo(f"Created org {org!r} with app {DEFAULT_APP!r}. Its API key (shown only now):\n\n    {key}\n")
    click.echo("Send a first event:\n")
    click.echo(
        f"    curl -s -X POST \"{host}/{org}/1/track?current_time=$(date -u +%Y-%m-%dT%H:%M:%SZ)\" \\\n"
        f"      -d '{{\"api_key\": \"{key}\", \"device_tag\": \"device-1\", \"app_ver\": \"1.0\", "
        f"\"events\": [{{\"type\": \"install\", \"event_datetime\": \"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'\"}}]}}'\n"
    )


@cli.command()
@click.option("--org", default=DEFAULT_ORG, show_default=True, help="Name of the first org.")
@with_appcontext
def init(org):
    """Create the data directory, the databases and a first org, app and API key."""
    try:
        key = initialise(state(), org)
    except ControlError as error:
        _fail(error)
    click.echo(f"Data directory: {state().data_dir}")
    if key is None:
        click.echo("Already initialised (there is an org); see: cortex orgs list, cortex keys create")
    else:
        _print_first_key(key, org, state().config["server"]["bind"])


@cli.command()
@click.option("--bind", "-b", help="Address to listen on, e.g. 0.0.0.0:8000 (default: server.bind).")
@click.option("--workers", "-w", type=int, help="Number of worker processes (default: server.workers).")
@with_appcontext
def serve(bind, workers):
    """Run the server under gunicorn; on a fresh data directory, initialise it first."""
    from cortex.server import CortexServer, gunicorn_options

    cortex_state = state()
    key = initialise(cortex_state)
    options = gunicorn_options(cortex_state.config, bind, workers)
    if key is not None:
        _print_first_key(key, DEFAULT_ORG, options["bind"])
    # the workers build their own app; this process only supervises
    cortex_state.control.dispose()
    CortexServer(_factory, options).run()


@cli.command()
@click.option("--once", is_flag=True, help="Deliver what is queued now, then exit.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for another dispatcher to stop instead of exiting.")
@with_appcontext
def worker(once, wait):
    """Run the dispatcher in this process: queue -> enrichers -> sinks."""
    from cortex.dispatcher import Dispatcher, DispatcherLock
    from cortex.metrics import prepare_multiprocess_dir
    from cortex.server import freeze_startup_heap

    cortex_state = state()
    # the server's /metrics adds up this process's counters too (same directory)
    prepare_multiprocess_dir(cortex_state.config, clean=False)
    lock = DispatcherLock(cortex_state.config["data_dir"])
    if not lock.acquire(blocking=False):
        if not wait:
            _fail(Exception(f"another dispatcher (pid {lock.holder()}) works on this data directory"))
        click.echo(f"another dispatcher (pid {lock.holder()}) works on this data directory; waiting for it", err=True)
        lock.acquire(blocking=True)
    dispatcher = Dispatcher(cortex_state)
    freeze_startup_heap()
    try:
        if once:
            dispatcher.drain(timeout=3600)
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: dispatcher.shutdown())
        click.echo(f"dispatching to {', '.join(dispatcher.sink_names) or 'no sink'} (pid {os.getpid()})", err=True)
        dispatcher.run()
    finally:
        lock.release()


# orgs, apps, keys ----------------------------------------------------------------------------
@cli.group()
def orgs():
    """Create and list orgs."""


@orgs.command("create")
@click.argument("slug")
@click.option("--name", help="Display name (default: the slug).")
@with_appcontext
def orgs_create(slug, name):
    """Create an org; SLUG is the <org> in the ingest URLs."""
    try:
        org = state().control.create_org(slug, name)
    except ControlError as error:
        _fail(error)
    click.echo(f"created org {org['slug']}")


@orgs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def orgs_list(as_json):
    """List orgs."""
    rows = state().control.list_orgs()
    _json(rows) if as_json else _table(rows, ["slug", "name", "apps", "created_at"])


@cli.group()
def apps():
    """Create and list apps."""


@apps.command("create")
@click.argument("org")
@click.argument("name")
@click.option("--strict/--lenient", default=None,
              help="Reject whole bundles with an invalid event (default: ingest.strict).")
@with_appcontext
def apps_create(org, name, strict):
    """Create app NAME in ORG."""
    try:
        state().control.create_app(org, name, strict)
    except ControlError as error:
        _fail(error)
    click.echo(f"created app {name} in org {org}; make a key with: cortex keys create {org} {name}")


@apps.command("list")
@click.option("--org", help="Only this org's apps.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def apps_list(org, as_json):
    """List apps."""
    rows = state().control.list_apps(org)
    _json(rows) if as_json else _table(
        rows, ["org", "name", "strict", "rate_limit_per_key", "rate_limit_per_ip", "keys", "created_at"])


@apps.command("set-strict")
@click.argument("org")
@click.argument("name")
@click.argument("mode", type=click.Choice(["on", "off", "default"]))
@with_appcontext
def apps_set_strict(org, name, mode):
    """Turn strict mode on or off for an app, or back to the server default."""
    try:
        state().control.set_app_strict(org, name, {"on": True, "off": False, "default": None}[mode])
    except ControlError as error:
        _fail(error)
    click.echo(f"strict mode of {org}/{name}: {mode}")


def _limit_option(value: str | None, where: str):
    """A --per-key / --per-ip value: ``...`` (unchanged), None ("default") or a limit string."""
    from cortex.ratelimit import check_limit_string

    if value is None:
        return ...
    if value == "default":
        return None
    text = "" if value == "none" else value
    try:
        check_limit_string(text, where)
    except ConfigError as error:
        _fail(error)
    return text


@apps.command("set-limits")
@click.argument("org")
@click.argument("name")
@click.option("--per-key", help='Requests per API key of the app, e.g. "100/second;5000/hour"; '
                                '"none" for no limit, "default" for rate_limits.per_key.')
@click.option("--per-ip", help='Requests per client address to the app; "none" or "default" as above.')
@with_appcontext
def apps_set_limits(org, name, per_key, per_ip):
    """Set an app's own rate limits (they apply within ingest.key_cache_seconds)."""
    key_limit = _limit_option(per_key, "--per-key")
    ip_limit = _limit_option(per_ip, "--per-ip")
    if key_limit is ... and ip_limit is ...:
        _fail(Exception("give --per-key and/or --per-ip"))
    try:
        state().control.set_app_rate_limits(org, name, key_limit, ip_limit)
    except ControlError as error:
        _fail(error)
    app = next(a for a in state().control.list_apps(org) if a["name"] == name)
    limits = state().rate_limits
    show = {None: "default", "": "none"}
    click.echo(f"rate limits of {org}/{name}: per key {show.get(app['rate_limit_per_key'], app['rate_limit_per_key'])} "
               f"({limits.per_key_default!r} by default), per address "
               f"{show.get(app['rate_limit_per_ip'], app['rate_limit_per_ip'])} ({limits.per_ip_default!r} by default)")


@cli.group()
def keys():
    """Create, list and revoke API keys."""


@keys.command("create")
@click.argument("org")
@click.argument("app")
@click.option("--label", help="A note to recognise the key by.")
@with_appcontext
def keys_create(org, app, label):
    """Create an API key for APP in ORG; the key is printed once."""
    try:
        key, record = state().control.create_key(org, app, label)
    except ControlError as error:
        _fail(error)
    click.echo(key)
    click.echo(f"(key id {record['id']}, prefix {record['prefix']}; it is not shown again)", err=True)


@keys.command("list")
@click.option("--org", help="Only this org's keys.")
@click.option("--app", help="Only this app's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def keys_list(org, app, as_json):
    """List API keys (their prefixes; keys are stored hashed)."""
    rows = state().control.list_keys(org, app)
    _json(rows) if as_json else _table(rows, ["id", "org", "app", "prefix", "label", "created_at", "revoked_at"])


@keys.command("revoke")
@click.argument("key_id_or_prefix")
@with_appcontext
def keys_revoke(key_id_or_prefix):
    """Revoke a key by id or prefix; ingest answers 403 to it within seconds."""
    try:
        state().control.revoke_key(key_id_or_prefix)
    except ControlError as error:
        _fail(error)
    click.echo(f"revoked key {key_id_or_prefix}")


# introspection -------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def plugins(as_json):
    """List the loaded plugins and the sink and enricher types they register."""
    from cortex.plugins import describe_plugins

    rows = describe_plugins(state().plugins, state().registry)
    if as_json:
        _json(rows)
        return
    for row in rows:
        row["sinks"] = ", ".join(row["sinks"]) or None
        row["enrichers"] = ", ".join(row["enrichers"]) or None
    _table(rows, ["name", "version", "sinks", "enrichers"])


def collect_status(cortex_state) -> dict:
    """Per org: accepted, duplicate, rejected; the queue depth; per sink: delivery state."""
    from cortex.queue_shards import ShardedQueue

    queue = cortex_state.queue
    sinks = list(cortex_state.config["sinks"])
    depth = queue.depth()
    if isinstance(queue, ShardedQueue):
        depth["shards"] = queue.count
        depth["ingest"] = queue.store
    return {
        "orgs": queue.counters(),
        "queue": depth,
        "sinks": queue.sink_status(sinks),
        # per enricher: failures, timeouts and what happened to the records (error policy)
        "enrichers": queue.enricher_errors(),
    }


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def status(as_json):
    """Events accepted, duplicate and rejected per org; queue depth; sink delivery state."""
    report = collect_status(state())
    if as_json:
        _json(report)
        return
    _table([{"org": org, **counts} for org, counts in sorted(report["orgs"].items())],
           ["org", "accepted", "duplicate", "rejected"])
    shards = report["queue"].get("shards")
    layout = " (LMDB ingest store)" if report["queue"].get("ingest") == "lmdb" else (
        f" ({shards} ingest shards)" if shards and shards > 1 else "")
    click.echo(f"\nqueue: {report['queue']['records']} records in {report['queue']['entries']} entries{layout}\n")
    _table([{"sink": name, **s} for name, s in report["sinks"].items()],
           ["sink", "delivered", "pending", "dead_lettered"])
    if report["enrichers"]:
        click.echo("\nenricher errors:")
        _table([{"enricher": name, **counts} for name, counts in report["enrichers"].items()],
               ["enricher", "failures", "timeouts", "passed_through", "fields_dropped", "dead_lettered"])


@cli.command()
@click.option("--org", help="Only this org's errors.")
@click.option("--limit", default=50, show_default=True, help="At most this many rows.")
@click.option("--all", "include_replayed", is_flag=True, help="Include rows already replayed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines, one row each.")
@with_appcontext
def errors(org, limit, include_replayed, as_json):
    """Show the ingest error log: invalid events with their reasons."""
    rows = state().queue.ingest_errors(org, include_replayed, limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    for row in rows:
        record = row["record"]
        reasons = "; ".join(f"{k}: {' '.join(v)}" for k, v in record["reasons"].items())
        click.echo(f"#{row['id']} {record['received_at']} {record['org']}/{record['app']} "
                   f"{record['endpoint']} event {record['position']}: {reasons}"
                   + (f" (request {row['request_id']})" if row.get("request_id") else ""))
    if not rows:
        click.echo("(no errors)")


@cli.command()
@click.option("--dead-letters", "what", flag_value="dead", help="Re-send dead-lettered records to their sink.")
@click.option("--errors", "what", flag_value="errors", help="Re-validate error-logged events and queue the valid ones.")
@click.option("--sink", help="With --dead-letters: only this sink's.")
@click.option("--org", help="With --errors: only this org's.")
@with_appcontext
def replay(what, sink, org):
    """Re-send dead-lettered records, or error-logged events, after a fix."""
    from cortex.replay import replay_dead_letters, replay_errors

    if what is None:
        _fail(Exception("say what to replay: --dead-letters or --errors"))
    try:
        result = replay_dead_letters(state(), sink) if what == "dead" else replay_errors(state(), org)
    except (ControlError, ConfigError) as error:
        _fail(error)
    _json(result)
    if result.get("failed"):
        sys.exit(1)


# accounts, tokens and exports ----------------------------------------------------------------
def _register_analytics_commands() -> None:
    from cortex.analytics.commands import register

    register(cli)


_register_analytics_commands()


# data-subject requests and retention ---------------------------------------------------------
def _add_privacy_commands() -> None:
    from cortex.privacy_cli import privacy, retention

    cli.add_command(privacy)
    cli.add_command(retention)


_add_privacy_commands()


# the embedded queue --------------------------------------------------------------------------
def _add_queue_commands() -> None:
    from cortex.queue_cli import queue

    cli.add_command(queue)


_add_queue_commands()
