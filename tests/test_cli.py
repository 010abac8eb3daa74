"""The cortex command-line tool, run as a real process where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson

from conftest import iso


def run(data_dir, *args, check=True):
    env = {**os.environ, "CORTEX_DATA_DIR": str(data_dir), "CORTEX_LOGGING__LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "cortex", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=check)


def test_init_creates_everything_and_prints_a_key_and_a_curl_line(tmp_path):
    data = tmp_path / "fresh"
    out = run(data, "init").stdout
    assert "API key" in out and "curl" in out and "/demo/1/track" in out
    assert (data / "control.db").exists() and (data / "queue.db").exists()
    again = run(data, "init").stdout
    assert "Already initialised" in again


def test_orgs_apps_keys_lifecycle(tmp_path):
    run(tmp_path, "orgs", "create", "acme", "--name", "Acme Games")
    run(tmp_path, "apps", "create", "acme", "puzzle", "--strict")
    key = run(tmp_path, "keys", "create", "acme", "puzzle", "--label", "ios").stdout.strip()
    assert len(key) == 32
    keys = json.loads(run(tmp_path, "keys", "list", "--org", "acme", "--json").stdout)
    assert [(k["app"], k["prefix"], k["label"], k["revoked_at"]) for k in keys] == [("puzzle", key[:8], "ios", None)]
    assert key not in run(tmp_path, "keys", "list").stdout, "keys are never shown again"
    apps = json.loads(run(tmp_path, "apps", "list", "--json").stdout)
    assert [(a["org"], a["name"], a["strict"], a["keys"]) for a in apps] == [("acme", "puzzle", True, 1)]
    run(tmp_path, "keys", "revoke", key[:8])
    keys = json.loads(run(tmp_path, "keys", "list", "--json").stdout)
    assert keys[0]["revoked_at"] is not None
    orgs = run(tmp_path, "orgs", "list").stdout
    assert "acme" in orgs and "Acme Games" in orgs


def test_cli_errors_are_clear_and_exit_non_zero(tmp_path):
    result = run(tmp_path, "apps", "create", "nobody", "x", check=False)
    assert result.returncode != 0 and "no org named 'nobody'" in result.stderr
    result = run(tmp_path, "orgs", "create", "Bad Name!", check=False)
    assert result.returncode != 0 and "not usable in URLs" in result.stderr
    result = run(tmp_path, "keys", "revoke", "zzzz", check=False)
    assert result.returncode != 0 and "no API key" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[sinks.x]\ntype = "nope"\n')
    result = run(tmp_path, "--config", str(bad), "status", check=False)
    assert result.returncode != 0 and "configuration error" in result.stderr and "nope" in result.stderr


def test_status_plugins_and_errors(cortex):
    events = [{"type": "dau", "event_datetime": iso()}, {"type": "bogus", "event_datetime": iso()}]
    bundle = cortex.bundle(events)
    assert cortex.post(bundle).status_code == 200
    assert cortex.post(bundle).status_code == 200
    status = json.loads(cortex.cli("status", "--json").output)
    assert status["orgs"]["demo"] == {"accepted": 1, "duplicate": 2, "rejected": 1}
    assert status["sinks"]["sql"]["pending"] == 2 and status["queue"]["records"] == 2
    cortex.deliver()
    status = json.loads(cortex.cli("status", "--json").output)
    assert status["sinks"]["sql"] == {**status["sinks"]["sql"], "delivered": 2, "pending": 0, "dead_lettered": 0}
    text = cortex.cli("status").output
    assert "demo" in text and "sql" in text
    plugins = json.loads(cortex.cli("plugins", "--json").output)
    assert {"sql", "file"} <= {p["name"] for p in plugins}
    errors = cortex.cli("errors").output
    assert "Unknown event type 'bogus'" in errors
    lines = [orjson.loads(line) for line in cortex.cli("errors", "--json").output.splitlines()]
    assert lines[0]["record"]["payload"] == {"type": "bogus", "event_datetime": events[1]["event_datetime"]}
    assert "api_key" not in lines[0]["record"]["bundle"], "the error log never keeps API keys"


def test_worker_once_delivers_and_exits(tmp_path):
    from conftest import Cortex

    cortex = Cortex(tmp_path / "d", {"dispatcher": {"embedded": False}})
    assert cortex.post(cortex.bundle([{"type": "install", "event_datetime": iso()}])).status_code == 200
    run(cortex.data_dir, "worker", "--once")
    assert cortex.sql("SELECT count(*) FROM events") == [(1,)]
