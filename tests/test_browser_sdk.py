"""The real Data Cortex browser SDK, unmodified, against a running Cortex.

``tests/sdk/drive_browser_sdk.js`` loads the published npm package ``browser-data-cortex``
(pinned in ``tests/sdk/package.json``) byte for byte into a jsdom page served from another
origin than Cortex, so every call is a real cross-origin XHR that jsdom checks against
Cortex's CORS headers.  The SDK itself queues ``install`` and ``dau`` on a new device; the
driver adds one ``event`` and one ``economy`` event, waits until the SDK's own queue (kept
in localStorage) is empty, and prints what the SDK sent and the statuses it got back.

``browser-data-cortex`` 0.0.5 (the only version published) has no call for
``message_send``, ``message_click`` or ``experiment``; its whole API is ``init``,
``isReady``, ``addUserTag``, ``event`` and ``economyEvent``, and the driver reports it, so
a future SDK version with more calls fails ``test_sdk_api_is_what_the_driver_covers``
until the driver covers them.

Needs ``node`` (>= 18) and ``tests/sdk/node_modules`` (``npm ci`` is tried once).  Without
them the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

import pytest

pytestmark = pytest.mark.slow

SDK_DIR = Path(__file__).resolve().parent / "sdk"
DRIVER = SDK_DIR / "drive_browser_sdk.js"
DRIVER_TIMEOUT_MS = 30_000
NPM_CI_TIMEOUT_S = 300

#: what the driver makes the SDK send, per event type
EXPECTED_SENT = {"install": 1, "dau": 1, "event": 1, "economy": 1}
EVENT_TAXONOMY = {
    "kingdom": "sdk_test",
    "phylum": "browser",
    "class": "level",
    "order": "complete",
    "family": "world1",
    "genus": "stage3",
    "species": "boss",
}
EVENT_FLOATS = {"float1": 1.5, "float2": -2.25, "float3": 3.0, "float4": 0.125}
# The SDK sniffs these from the driver's user agent (Chrome 126 on macOS 10.15.7).
BUNDLE_FIELDS = {
    "app_ver": "1.2.3",
    "user_tag": "424242",
    "os": "mac",
    "os_ver": "10.15.7",
    "browser": "chrome",
    "browser_ver": "126.0.0.0",
    "device_type": "desktop",
    "device_family": "desktop",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"browser SDK test cannot run in CI: {reason}")
    pytest.skip(reason)


def _node_modules_ready() -> bool:
    nm = SDK_DIR / "node_modules"
    return all((nm / pkg / "package.json").is_file()
               for pkg in ("browser-data-cortex", "jsdom", "lodash"))


def _npm_ci() -> str | None:
    """Run ``npm ci`` in tests/sdk once (serialised across xdist workers); error or None."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH"
    lock_path = Path(tempfile.gettempdir()) / "cortex-tests-sdk-npm-ci.lock"
    with open(lock_path, "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        if _node_modules_ready():
            return None
        try:
            proc = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                cwd=SDK_DIR, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return f"npm ci in {SDK_DIR} timed out after {NPM_CI_TIMEOUT_S} s"
        if proc.returncode != 0 or not _node_modules_ready():
            return f"npm ci in {SDK_DIR} failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return None


@pytest.fixture(scope="session")
def node() -> str:
    """Path of a usable ``node``, with tests/sdk/node_modules installed."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not on PATH (the browser SDK runs in Node + jsdom)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < 18:
        _unavailable(f"node {version or '?'} is too old; jsdom 26 needs node >= 18")
    if not _node_modules_ready():
        error = _npm_ci()
        if error:
            _unavailable(error)
    return node


def _run_driver(node: str, server, *extra: str) -> dict:
    # the flag the driver would otherwise re-exec itself with (one process, no orphan)
    cmd = [node, "--experimental-vm-modules", "--no-warnings", str(DRIVER), server.url, server.org, server.api_key,
           "--timeout-ms", str(DRIVER_TIMEOUT_MS), *extra]
    try:
        proc = subprocess.run(cmd, cwd=SDK_DIR, capture_output=True, text=True,
                              timeout=DRIVER_TIMEOUT_MS / 1000 + 60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"driver hung: {exc.stderr!r}")
    summary = None
    if proc.stdout.strip():
        try:
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
        except ValueError:
            pass
    assert proc.returncode == 0 and summary is not None, (
        f"driver exited {proc.returncode}\nstdout: {proc.stdout[-4000:]}\n"
        f"stderr: {proc.stderr[-4000:]}"
    )
    return summary


def _as_datetime(value) -> datetime:
    """A stored timestamp (datetime or ISO-ish string from the database) as aware UTC."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip().replace(" ", "T")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def _rows(server, table: str, columns: list[str], device_tag: str) -> list[dict]:
    # sql_rows takes no parameters; the tag is the SDK's base-36 random string
    assert re.fullmatch(r"[0-9a-z]{1,62}", device_tag), device_tag
    quoted = ", ".join(f'"{c}"' for c in columns)
    query = (f'SELECT {quoted} FROM {table} WHERE device_tag = \'{device_tag}\' '
             f'ORDER BY event_time, id')
    return [dict(zip(columns, row)) for row in server.sql_rows(query)]


def _check_delivered(server, summary: dict) -> None:
    """Every event the SDK sent is in the SQL sink exactly once, with its fields."""
    device_tag = summary["device_tag"]
    assert device_tag, summary
    sent = {e["type"]: e for e in summary["events"]}

    common = ["type", "event_index", "event_datetime", "group_tag", *BUNDLE_FIELDS]
    taxonomy = list(EVENT_TAXONOMY)
    rows = _rows(server, "events", common + taxonomy + list(EVENT_FLOATS), device_tag)
    assert sorted(r["type"] for r in rows) == ["dau", "event", "install"], rows
    by_type = {r["type"]: r for r in rows}

    econ_rows = _rows(server, "economy",
                      common[1:] + ["spend_amount", "spend_currency", "spend_type",
                                    "kingdom", "phylum", "class", "order"], device_tag)
    assert len(econ_rows) == 1, econ_rows
    by_type["economy"] = econ_rows[0]

    for type_, row in by_type.items():
        event = sent[type_]
        assert row["event_index"] == event["event_index"], (type_, row, event)
        assert _as_datetime(row["event_datetime"]) == _as_datetime(event["event_datetime"]), (
            type_, row, event)
        # the SDK tags every event but the first install with its session key
        assert row["group_tag"] == event.get("group_tag"), (type_, row, event)
        for field, value in BUNDLE_FIELDS.items():
            assert row[field] == value, (type_, field, row)

    assert {k: by_type["install"][k] for k in taxonomy} == dict.fromkeys(taxonomy, "organic")
    assert {k: by_type["event"][k] for k in taxonomy} == EVENT_TAXONOMY
    assert {k: by_type["event"][k] for k in EVENT_FLOATS} == pytest.approx(EVENT_FLOATS)
    assert by_type["dau"]["kingdom"] is None

    econ = by_type["economy"]
    assert econ["spend_amount"] == pytest.approx(4.99)
    assert econ["spend_currency"] == "USD"
    assert econ["spend_type"] == "iap"
    assert (econ["kingdom"], econ["phylum"], econ["class"], econ["order"]) == (
        "store", "gems", "pack", "small")

    # nothing the SDK sent was routed to the other families
    for table in ("messages", "experiments"):
        assert _rows(server, table, ["type"], device_tag) == [], table


def _check_summary(summary: dict) -> None:
    assert summary["cross_origin"], "the page must be on another origin than Cortex"
    assert summary["sent"] == EXPECTED_SENT, summary["sent"]
    assert summary["responses"], summary
    assert all(status == 200 for status in summary["responses"]), summary["responses"]
    assert summary["queue_left"] == 0
    assert summary["sdk_errors"] == []


def test_sdk_api_is_what_the_driver_covers(node, cortex_server):
    """The pinned SDK offers exactly the calls the driver exercises."""
    summary = _run_driver(node, cortex_server)
    assert summary["sdk"]["api"] == ["addUserTag", "economyEvent", "event", "init", "isReady"]


def test_browser_sdk_delivers_every_event_type(node, cortex_server):
    """install, dau, event and economy from a new device land once each in the SQL sink."""
    summary = _run_driver(node, cortex_server)
    _check_summary(summary)
    # the SDK sends one event per request (its batching stops after the first event)
    for request in summary["requests"]:
        assert request["url"].startswith(
            f"{cortex_server.url}/{cortex_server.org}/1/track?current_time="), request["url"]
        assert request["bundle"]["api_key"] == cortex_server.api_key
    cortex_server.wait_for_delivery(timeout=30)
    _check_delivered(cortex_server, summary)


def test_browser_sdk_resends_events_persisted_while_offline(node, cortex_server):
    """Events queued while offline survive a page reload and are delivered once.

    The first page load cannot reach any server (its XHRs fail with a network error), so
    the SDK keeps all four events in localStorage; the next load of the page sends them
    with their original ``event_index`` and ``event_datetime``.
    """
    summary = _run_driver(node, cortex_server, "--offline-first")
    offline = summary["offline_phase"]
    assert offline["queued"] == 4 and offline["responses"] and set(offline["responses"]) == {0}
    _check_summary(summary)
    first_online = min(
        _as_datetime(unquote(r["url"].split("current_time=", 1)[1])) for r in summary["requests"])
    for event in summary["events"]:
        # queued before the online page load sent anything
        assert _as_datetime(event["event_datetime"]) < first_online, (event, first_online)
    cortex_server.wait_for_delivery(timeout=30)
    _check_delivered(cortex_server, summary)
