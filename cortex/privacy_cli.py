"""``cortex privacy``: data-subject requests from the command line, and retention now."""

from __future__ import annotations

import json
import sys

import click
import orjson
from flask import current_app
from flask.cli import with_appcontext

from cortex.subjects import IDENTITY_KINDS, Subject

__all__ = ["privacy", "retention"]


def _state():
    return current_app.extensions["cortex"]


def identity_options(function):
    """The options naming a person: ``--user-tag``, ``--device-tag``, ``--facebook-tag`` ..."""
    for kind in reversed(IDENTITY_KINDS):
        option = "--" + kind.replace("_", "-")
        function = click.option(option, kind, multiple=True, metavar="TAG",
                                help=f"The person's {kind.replace('_', ' ')} (repeatable).")(function)
    return click.option("--org", required=True, help="The org whose data it is.")(function)


def subject_from(state, org: str, given: dict) -> Subject:
    """The subject named on the command line, or a usage error saying what is missing."""
    from cortex.privacy import known_org

    if not known_org(state, org):
        raise click.ClickException(f"there is no org {org!r}; see: cortex orgs list")
    try:
        return Subject.build(state, org, {kind: given.get(kind) or () for kind in IDENTITY_KINDS})
    except ValueError as error:
        raise click.UsageError(f"{error} (--user-tag, --device-tag, --facebook-tag ...)") from None


@click.group()
def privacy():
    """Data-subject requests: export or delete everything stored about a person."""


@privacy.command("export")
@identity_options
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write the JSON Lines here instead of to standard output.")
@with_appcontext
def export_command(org, output, **given):
    """Write every stored record of a person as JSON Lines (one record a line).

    Each record is written once, from the first sink that holds it; the ingest error log,
    the dead-letter store and the records still queued are searched too.  A summary goes
    to standard error.
    """
    from cortex.privacy import SubjectExport

    state = _state()
    export = SubjectExport(state, subject_from(state, org, given))
    target = open(output, "wb") if output else sys.stdout.buffer
    try:
        for record in export:
            target.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS, default=str))
        target.flush()
    finally:
        if output:
            target.close()
    click.echo(f"exported {export.count} records: {json.dumps(export.sources)}", err=True)


@privacy.command("delete")
@identity_options
@click.option("--tombstone/--no-tombstone", default=True, show_default=True,
              help="Record a tombstone: with privacy.drop_tombstoned, events of the person "
                   "still queued or arriving later are dropped.")
@click.option("--wait", "wait_seconds", type=float, default=None,
              help="Seconds to wait for the dispatcher to do its part (default: privacy.wait_seconds).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@with_appcontext
def delete_command(org, tombstone, wait_seconds, as_json, **given):
    """Delete every stored record of a person from every sink that can delete.

    Prints what was removed per sink; exits with status 1 when a sink could not delete
    (unsupported, failed, or still pending after the wait).
    """
    from cortex.privacy import erase_subject

    state = _state()
    result = erase_subject(state, subject_from(state, org, given), tombstone, wait_seconds)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for name, outcome in result["sinks"].items():
            if outcome["status"] == "done":
                click.echo(f"sink {name}: removed {outcome['removed']}")
            elif outcome["status"] == "unsupported":
                click.echo(f"sink {name}: cannot delete (this sink type has no deletion); its copies remain")
            elif outcome["status"] == "pending":
                click.echo(f"sink {name}: not done yet (the dispatcher will do it; check again later)")
            else:
                click.echo(f"sink {name}: FAILED: {outcome['error']}")
        for table, count in result["queue"].items():
            click.echo(f"queue {table}: removed {count}")
        click.echo("tombstone recorded" if result["tombstone"] else "no tombstone recorded")
    if any(outcome["status"] != "done" for outcome in result["sinks"].values()):
        sys.exit(1)


@privacy.command("forget-tombstone")
@identity_options
@with_appcontext
def forget_tombstone_command(org, **given):
    """Remove a person's tombstone: their new events are accepted again."""
    from cortex.privacy_store import PrivacyStore

    state = _state()
    removed = PrivacyStore(state.queue).remove_tombstone(subject_from(state, org, given))
    click.echo(f"removed {removed} tombstone entries")


@privacy.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def status_command(as_json):
    """Tombstones per org and the records each sink dropped because of them."""
    from cortex.privacy_store import PrivacyStore

    store = PrivacyStore(_state().queue)
    report = {
        "tombstones": {org: sum(len(d) for d in kinds.values()) for org, kinds in store.tombstones().items()},
        "dropped": store.drops(),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for org in sorted(set(report["tombstones"]) | set(report["dropped"])):
        dropped = ", ".join(f"{sink}: {n}" for sink, n in sorted(report["dropped"].get(org, {}).items()))
        click.echo(f"{org}: {report['tombstones'].get(org, 0)} tombstone entries; dropped {dropped or 'none'}")
    if not report["tombstones"] and not report["dropped"]:
        click.echo("(no tombstones)")


@click.command()
@with_appcontext
def retention():
    """Apply the retention settings now: expire old records in every sink and queue log.

    Needs the dispatcher lock (stop ``cortex worker`` or the server first); a running
    dispatcher applies retention by itself every ``retention.interval`` seconds.
    """
    from cortex.dispatcher import DispatcherLock, SinkRunner
    from cortex.retention import expire_queue_logs
    import threading

    state = _state()
    lock = DispatcherLock(state.config["data_dir"])
    if not lock.acquire(blocking=False):
        raise click.ClickException(
            f"a dispatcher (pid {lock.holder()}) works on this data directory and applies retention itself"
        )
    try:
        report = {}
        for sink in state.make_sinks():
            runner = SinkRunner(state, sink, [], threading.Event())
            if not runner.retention.capable:
                report[sink.name] = "unsupported"
                continue
            sink.open()
            try:
                report[sink.name] = runner.retention.run(until_done=True)
            finally:
                sink.close()
        report.update(expire_queue_logs(state))
    finally:
        lock.release()
    click.echo(json.dumps(report, indent=2))
