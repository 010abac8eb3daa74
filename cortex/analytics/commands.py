"""``cortex users ...``, ``cortex tokens ...`` and ``cortex export``."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import click
from flask.cli import with_appcontext
from marshmallow import ValidationError

from cortex.accounts import ROLES
from cortex.config import ConfigError
from cortex.control import ControlError


def _state():
    from cortex.cli import state

    return state()


def _accounts():
    from cortex.analytics.setup import accounts_of

    return accounts_of(_state())


def _fail(error: Exception):
    raise click.ClickException(str(error))


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def register(cli: click.Group) -> None:
    """Add the account and export commands to the ``cortex`` group."""
    from cortex.cli import _json, _table

    @cli.group()
    def users():
        """Create, list and disable the users who read the data (roles per org)."""

    @users.command("create")
    @click.argument("email")
    @click.option("--org", "org", help="Give the user a role in this org.")
    @click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
    @click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
    @with_appcontext
    def users_create(email, org, role, password_stdin):
        """Create a user who logs in with EMAIL (the password is asked for)."""
        try:
            _accounts().create_user(email, _password(password_stdin))
            if org:
                _accounts().set_role(email, org, role)
        except ControlError as error:
            _fail(error)
        click.echo(f"created user {email.lower()}" + (f" ({role} in {org})" if org else ""))

    @users.command("grant")
    @click.argument("email")
    @click.argument("org")
    @click.argument("role", type=click.Choice([*ROLES, "none"]))
    @with_appcontext
    def users_grant(email, org, role):
        """Set EMAIL's ROLE in ORG ("none" takes the membership away)."""
        try:
            _accounts().set_role(email, org, None if role == "none" else role)
        except ControlError as error:
            _fail(error)
        click.echo(f"{email.lower()} in {org}: {role}")

    @users.command("list")
    @click.option("--org", help="Only this org's members.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @with_appcontext
    def users_list(org, as_json):
        """List users and their roles."""
        rows = _accounts().list_users(org)
        if as_json:
            _json(rows)
            return
        for row in rows:
            row["roles"] = ", ".join(f"{o}:{r}" for o, r in sorted(row["roles"].items())) or None
            row["disabled"] = row.pop("disabled_at")
        _table(rows, ["id", "email", "roles", "created_at", "disabled"])

    @users.command("disable")
    @click.argument("email")
    @with_appcontext
    def users_disable(email):
        """Disable a user: their logins, sessions and tokens stop working at once."""
        try:
            _accounts().set_disabled(email, True)
        except ControlError as error:
            _fail(error)
        click.echo(f"disabled {email.lower()}")

    @users.command("enable")
    @click.argument("email")
    @with_appcontext
    def users_enable(email):
        """Enable a disabled user again."""
        try:
            _accounts().set_disabled(email, False)
        except ControlError as error:
            _fail(error)
        click.echo(f"enabled {email.lower()}")

    @users.command("set-password")
    @click.argument("email")
    @click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
    @with_appcontext
    def users_set_password(email, password_stdin):
        """Replace a user's password."""
        try:
            _accounts().set_password(email, _password(password_stdin))
        except ControlError as error:
            _fail(error)
        click.echo(f"password of {email.lower()} changed")

    @cli.group()
    def tokens():
        """Create, list and revoke bearer tokens for the query API."""

    @tokens.command("create")
    @click.argument("email")
    @click.option("--label", help="A note to recognise the token by.")
    @click.option("--expires-in", "expires_in", type=click.IntRange(1, 3650), help="Days until it expires (default: never).")
    @with_appcontext
    def tokens_create(email, label, expires_in):
        """Create a token acting for EMAIL; it is printed once."""
        try:
            token, record = _accounts().create_token(
                email, label, timedelta(days=expires_in) if expires_in else None)
        except ControlError as error:
            _fail(error)
        click.echo(token)
        expiry = f", expires {record['expires_at']:%Y-%m-%d %H:%M} UTC" if record["expires_at"] else ""
        click.echo(f"(token id {record['id']}, prefix {record['prefix']}{expiry}; it is not shown again)", err=True)

    @tokens.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @with_appcontext
    def tokens_list(as_json):
        """List tokens (their prefixes; tokens are stored hashed)."""
        rows = _accounts().list_tokens()
        _json(rows) if as_json else _table(rows, ["id", "email", "prefix", "label", "created_at", "expires_at", "revoked_at"])

    @tokens.command("revoke")
    @click.argument("token_id_or_prefix")
    @with_appcontext
    def tokens_revoke(token_id_or_prefix):
        """Revoke a token by id or prefix; the API refuses it at once."""
        try:
            _accounts().revoke_token(token_id_or_prefix)
        except ControlError as error:
            _fail(error)
        click.echo(f"revoked token {token_id_or_prefix}")

    @cli.group()
    def rollups():
        """The SQL sink's rollups (per-day aggregates the query API answers dashboards from)."""

    @rollups.command("rebuild")
    @click.option("--org", "orgs", multiple=True, help="Only this org (repeatable; default: every org).")
    @click.option("--from", "first", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC).")
    @click.option("--to", "last", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC), inclusive.")
    @with_appcontext
    def rollups_rebuild(orgs, first, last):
        """Recompute rollups from the raw events, e.g. after rows were deleted."""
        from cortex.analytics import bitmaps
        from cortex.analytics.scope import operator_scope
        from cortex.analytics.setup import analytics_store_of
        from cortex.analytics.store import analytics_sink

        cortex_state = _state()
        try:
            name, _ = analytics_sink(cortex_state.config)
        except ConfigError as error:
            _fail(error)
        if last < first:
            _fail(Exception("--to comes before --from"))
        sink = next(s for s in cortex_state.make_sinks() if s.name == name)
        sink.open()
        try:
            for org in orgs or [o["slug"] for o in cortex_state.control.list_orgs()]:
                sink.recompute_rollups(org, first.date(), last.date())
                built = bitmaps.prepare(operator_scope(org, analytics_store_of(cortex_state)), first.date(), last.date())
                click.echo(f"rebuilt the rollups of {org} from {first:%Y-%m-%d} to {last:%Y-%m-%d}"
                           f" (and the device bitmaps of {built} days)")
        finally:
            sink.close()

    @cli.command("export")
    @click.option("--org", required=True, help="The org whose data to export.")
    @click.option("--query", "query_name", default="events", show_default=True,
                  help="events (raw events) or a query: counts, active-users, revenue, retention, funnel, experiments, breakdown.")
    @click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="jsonl", show_default=True)
    @click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-",
                  help="File to write (default: stdout).")
    @click.option("--arg", "-a", "args", multiple=True, metavar="NAME=VALUE",
                  help="Query arguments as in the API: start_date=2024-06-01, event_type=economy, steps=a,b ...")
    @click.option("--progress/--no-progress", default=None, help="Show progress (default: when writing to a file).")
    @with_appcontext
    def export(org, query_name, fmt, output, args, progress):
        """Export raw events or a query's result as CSV or JSON Lines, streamed."""
        from werkzeug.datastructures import MultiDict

        from cortex.analytics import export as exporting
        from cortex.analytics.listing import count_events
        from cortex.analytics.schemas import FilterSchema
        from cortex.analytics.scope import operator_scope
        from cortex.analytics.setup import analytics_store_of

        pairs = []
        for arg in args:
            name, sep, value = arg.partition("=")
            if not sep:
                _fail(Exception(f"--arg {arg!r}: write NAME=VALUE"))
            pairs.append((name, value))
        arguments = MultiDict(pairs)
        cortex_state = _state()
        if org not in {o["slug"] for o in cortex_state.control.list_orgs()}:
            _fail(Exception(f"no org named {org!r} (see: cortex orgs list)"))
        try:
            scope = operator_scope(org, analytics_store_of(cortex_state))
            rows, columns = exporting.export_rows(scope, query_name, arguments)
            total = count_events(scope, FilterSchema().load(arguments)) if query_name == "events" else None
        except ValidationError as error:
            _fail(Exception(f"invalid arguments: {json.dumps(error.normalized_messages())}"))
        except ConfigError as error:
            _fail(error)
        if progress is None:
            progress = output != "-"
        written = 0

        def counted(source):
            nonlocal written
            for row in source:
                written += 1
                yield row

        rows = counted(rows)
        chunks = exporting.csv_lines(rows, columns) if fmt == "csv" else exporting.jsonl_lines(rows)
        mode = "w" if fmt == "csv" else "wb"
        with click.open_file(output, mode) as handle:
            if not progress:
                for chunk in chunks:
                    handle.write(chunk)
            else:
                with click.progressbar(length=total, label=f"exporting {query_name}", file=sys.stderr,
                                       show_pos=True) as bar:
                    before = 0
                    for chunk in chunks:
                        handle.write(chunk)
                        bar.update(written - before)
                        before = written
        click.echo(f"exported {written} rows" + (f" to {output}" if output != "-" else ""), err=True)
