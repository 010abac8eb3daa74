"""``cortex queue``: commands for the embedded queue itself."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from flask import current_app
from flask.cli import with_appcontext

__all__ = ["queue"]


@click.group()
def queue():
    """The embedded queue (queue.db and its ingest shards)."""


def _layout(store: str, shards: int) -> str:
    """An ingest layout as ``cortex queue reshard`` reports it."""
    return "its LMDB ingest store" if store == "lmdb" else f"{shards} ingest shard(s)"


@queue.command("reshard")
@click.option("--shards", "count", type=int, default=None,
              help="The number of SQLite ingest shards to give the queue (1-64; default: the queue.shards setting).")
@click.option("--ingest", type=click.Choice(["lmdb", "sqlite"]), default=None,
              help="Where requests commit: the LMDB ingest store or SQLite ingest shards (default: sqlite with "
                   "--shards, else the queue.ingest setting).")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@with_appcontext
def queue_reshard(count, ingest, as_json):
    """Give the queue the ingest layout of the configuration (queue.ingest, queue.shards) or
    of the options, keeping every queued event, dedupe key and count.  Stop the server and
    any `cortex worker` first: the queue must not be in use."""
    from cortex.queue_reshard import ReshardError, reshard
    from cortex.queue_shards import QueueInUse, ShardedQueue

    state = current_app.extensions["cortex"]
    if not isinstance(state.queue, ShardedQueue):
        raise click.ClickException(
            f"the queue backend is {state.config['queue']['backend']!r}; only the embedded queue has ingest shards")
    if ingest is None:
        ingest = "sqlite" if count is not None else state.config["queue"]["ingest"]
    if ingest == "lmdb" and count is not None:
        raise click.ClickException("--shards is for SQLite ingest (--ingest sqlite); the LMDB store has no shards")
    wanted = state.config["queue"]["shards"] if count is None else count
    try:
        report = reshard(state.queue, wanted, ingest)
    except (QueueInUse, ReshardError) as error:
        raise click.ClickException(str(error)) from None

    after = _layout(report.store_after, report.after)
    # "4 ingest shard(s) (it had 2)" between shard counts, else both layouts in full
    before = str(report.before) if report.store_before == report.store_after == "sqlite" else _layout(
        report.store_before, report.before)
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
    elif (report.store_before, report.before) == (report.store_after, report.after):
        click.echo(f"The queue has {after} already; nothing to do.")
    else:
        click.echo(f"The queue now has {after} (it had {before}): "
                   f"{report.moved_entries} queued entries moved into queue.db first, "
                   f"{report.keys} dedupe keys carried over.")
    if report.removed_files and not as_json:
        click.echo(f"Removed {report.removed_files} shard file(s) no longer in use.")
