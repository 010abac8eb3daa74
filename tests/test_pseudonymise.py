"""The ``pseudonymise`` enricher: per-org HMAC pseudonyms across apps, key rotation with
deletion look-ups, and failing closed, through the ingest API into the SQL sink."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from cortex.config import ConfigError
from cortex.subjects import identities_for
from cortex_pseudonymise import pseudonyms
from cortex_pseudonymise.keys import KeyRing

KEY_2025 = "a3f1c9d2e8b7465f9a0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708"
KEY_2026 = "5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
TAGS = {"user_tag": "alice@example.com", "facebook_tag": "fb-1001", "google_tag": "g-77"}
EVENT = {"type": "link", "event_datetime": "2024-06-03T10:00:00Z", "twitter_tag": "@alice"}


def config(keys=None, current="k2025", orgs=("*",), **more):
    return {"type": "pseudonymise", "orgs": list(orgs), "keys": keys or {"k2025": KEY_2025},
            "current_key": current, **more}


def expected(key: str, key_id: str, org: str, value: str) -> str:
    org_key = hmac.new(key.encode(), b"cortex-pseudonym-org:" + org.encode(), hashlib.sha256).digest()
    digest = hmac.new(org_key, value.encode(), hashlib.sha256).digest()
    return f"{key_id}:{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def everything_stored(cortex) -> str:
    """Every value of every sink table, as one string to search for raw identifiers."""
    tables = ["events", "economy", "links", "messages", "experiments", "app_logs", "interactions", "ingest_errors"]
    return json.dumps([cortex.sql(f"SELECT * FROM {table}") for table in tables], default=str)


def second_app_key(cortex, org="demo", app="web"):
    if org not in {o["slug"] for o in cortex.state.control.list_orgs()}:
        cortex.state.control.create_org(org)
    cortex.state.control.create_app(org, app)
    key, _ = cortex.state.control.create_key(org, app)
    return key


def send(cortex, api_key=None, org=None, events=None, **fields):
    body = cortex.bundle(events or [dict(EVENT)], **{**TAGS, "device_tag": "device-9", **fields})
    body["api_key"] = api_key or cortex.api_key
    response = cortex.post(body, org=org)
    assert response.status_code == 200, response.data


def test_one_person_one_pseudonym_across_the_apps_of_an_org(make_cortex):
    cortex = make_cortex(enrichers={"pseudo": config()})
    send(cortex)
    send(cortex, api_key=second_app_key(cortex), device_tag="device-10")
    send(cortex, api_key=second_app_key(cortex, "rival", "game"), org="rival")
    cortex.deliver()
    rows = cortex.sql("SELECT org, app, user_tag, facebook_tag, google_tag, twitter_tag, device_tag FROM links "
                      "ORDER BY org, app")
    assert [r[:2] for r in rows] == [("demo", "default"), ("demo", "web"), ("rival", "game")]
    alice = expected(KEY_2025, "k2025", "demo", "alice@example.com")
    assert rows[0][2] == rows[1][2] == alice
    assert rows[0][3:6] == (expected(KEY_2025, "k2025", "demo", "fb-1001"),
                            expected(KEY_2025, "k2025", "demo", "g-77"),
                            expected(KEY_2025, "k2025", "demo", "@alice"))
    assert rows[0][6] != rows[1][6]
    # another org: an unrelated pseudonym for the same person
    assert rows[2][2] == expected(KEY_2025, "k2025", "rival", "alice@example.com") != alice
    assert len(alice) <= 62
    stored = everything_stored(cortex)
    for raw in ("alice@example.com", "fb-1001", "g-77", "@alice", "device-9", "device-10"):
        assert raw not in stored


def test_only_the_configured_orgs(make_cortex):
    cortex = make_cortex(enrichers={"pseudo": config(orgs=["rival"])})
    send(cortex)
    cortex.deliver()
    assert cortex.sql("SELECT user_tag FROM links") == [("alice@example.com",)]


def test_messages_and_rejected_events_are_pseudonymised_too(make_cortex):
    cortex = make_cortex(enrichers={"pseudo": config()})
    message = {"type": "message_send", "event_datetime": "2024-06-03T10:00:00Z", "network": "sms",
               "from_tag": "alice@example.com", "to_list": ["bob@example.com", "carol@example.com"]}
    invalid = {"type": "link", "event_datetime": "not a time", "facebook_tag": "fb-secret"}
    send(cortex, events=[message, invalid])
    cortex.deliver()
    [(from_tag, to_list)] = cortex.sql("SELECT from_tag, to_list FROM messages")
    assert from_tag == expected(KEY_2025, "k2025", "demo", "alice@example.com")
    assert json.loads(to_list) == [expected(KEY_2025, "k2025", "demo", "bob@example.com"),
                                   expected(KEY_2025, "k2025", "demo", "carol@example.com")]
    [(payload, bundle)] = cortex.sql("SELECT payload, bundle FROM ingest_errors")
    assert json.loads(payload)["facebook_tag"] == expected(KEY_2025, "k2025", "demo", "fb-secret")
    assert json.loads(bundle)["user_tag"] == expected(KEY_2025, "k2025", "demo", "alice@example.com")
    stored = everything_stored(cortex)
    assert "example.com" not in stored and "fb-secret" not in stored


def test_key_rotation_keeps_old_pseudonyms_findable_for_deletion(make_cortex, tmp_path):
    first = make_cortex(enrichers={"pseudo": config()})
    send(first)
    first.deliver()
    # rotate: a new current key, the old one kept (retired) on the same data directory
    rotated = {"data_dir": str(first.data_dir), "logging": {"level": "WARNING"},
               "enrichers": {"pseudo": config({"k2025": KEY_2025, "k2026": KEY_2026}, current="k2026")}}
    from cortex.app import create_app

    app = create_app(overrides=rotated)
    first.app, first.state = app, app.extensions["cortex"]
    first.client = app.test_client()
    send(first, events=[dict(EVENT, event_index=2)])
    first.deliver()
    tags = [tag for (tag,) in first.sql("SELECT user_tag FROM links ORDER BY event_index")]
    assert tags == [expected(KEY_2025, "k2025", "demo", "alice@example.com"),
                    expected(KEY_2026, "k2026", "demo", "alice@example.com")]
    forms = identities_for(first.state, "demo", "user_tag", "alice@example.com")
    assert forms == ["alice@example.com", *sorted(tags)]
    assert pseudonyms(first.state.config, "demo", "alice@example.com") == set(tags)
    assert pseudonyms(first.state.config, "demo", "bob") .isdisjoint(tags)
    # a deletion request finds every row of the person, whichever key stored it
    marks = ", ".join(f"'{form}'" for form in forms)
    assert len(first.sql(f"SELECT id FROM links WHERE user_tag IN ({marks})")) == 2


def test_fails_closed_by_dead_lettering(make_cortex, monkeypatch):
    cortex = make_cortex(enrichers={"pseudo": config()})

    def broken(self, org, value, key_id=None):
        raise RuntimeError("HSM unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(KeyRing, "pseudonym", broken)
        send(cortex)
        cortex.deliver()
    assert cortex.sql("SELECT id FROM links") == []
    assert "alice@example.com" not in everything_stored(cortex)
    [letter] = cortex.state.queue.dead_letters("sql")
    assert letter["error"] == "enricher pseudo failed: RuntimeError: HSM unreachable"
    # fixed: the replay pseudonymises before it delivers
    assert cortex.cli("replay", "--dead-letters").exit_code == 0
    assert cortex.sql("SELECT user_tag FROM links") == [(expected(KEY_2025, "k2025", "demo", "alice@example.com"),)]


def test_drop_field_policy_removes_the_identifiers(make_cortex, monkeypatch):
    cortex = make_cortex(enrichers={"pseudo": config(on_error="drop_field")})
    monkeypatch.setattr(KeyRing, "pseudonym", lambda *a, **k: 1 / 0)
    send(cortex)
    cortex.deliver()
    assert cortex.sql("SELECT user_tag, device_tag, twitter_tag, app_ver FROM links") == [(None, None, None, "1.0")]


def test_pass_through_is_refused(make_cortex):
    with pytest.raises(ConfigError, match="must fail closed"):
        make_cortex(enrichers={"pseudo": config(on_error="pass_through")})


@pytest.mark.parametrize("settings, message", [
    ({"keys": {"k1": "short"}}, "at least 32 characters"),
    ({"keys": {"k1": KEY_2025, "k2": KEY_2026}, "current_key": None}, "needs current_key"),
    ({"current_key": "k9"}, "current_key 'k9' is not one of the keys"),
    ({"keys": {"a key": KEY_2025}, "current_key": "a key"}, "must be 1 to 12 letters"),
    ({"orgs": []}, "needs orgs"),
])
def test_bad_settings_are_startup_errors(make_cortex, settings, message):
    with pytest.raises(ConfigError, match=message):
        make_cortex(enrichers={"pseudo": {**config(), **settings}})


def test_keys_come_from_the_environment(make_cortex, monkeypatch):
    monkeypatch.setenv("TEST_PSEUDONYM_KEY", KEY_2026)
    cortex = make_cortex(enrichers={"pseudo": config({"k26": {"env": "TEST_PSEUDONYM_KEY"}}, current="k26")})
    send(cortex)
    cortex.deliver()
    assert cortex.sql("SELECT user_tag FROM links") == [(expected(KEY_2026, "k26", "demo", "alice@example.com"),)]
    assert KEY_2026 not in cortex.cli("status", "--json").output


def test_a_deletion_request_by_the_raw_tag_removes_rows_under_every_key(make_cortex):
    cortex = make_cortex(enrichers={"pseudo": config()})
    send(cortex)
    send(cortex, user_tag="bob@example.com", events=[dict(EVENT, event_index=5)])
    cortex.deliver()
    # rotation: k2026 makes new pseudonyms, k2025 is retired but kept
    cortex.state.config["enrichers"]["pseudo"] = config({"k2025": KEY_2025, "k2026": KEY_2026}, current="k2026")
    send(cortex, events=[dict(EVENT, event_index=2)])
    cortex.deliver()
    assert len(cortex.sql("SELECT id FROM links")) == 3
    result = cortex.cli("privacy", "delete", "--org", "demo", "--user-tag", "alice@example.com", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sinks"]["sql"]["removed"] == 2
    assert cortex.sql("SELECT user_tag FROM links") == [(expected(KEY_2025, "k2025", "demo", "bob@example.com"),)]
    # the tombstone catches the person's later events, pseudonymised or not
    send(cortex, events=[dict(EVENT, event_index=3)])
    cortex.deliver()
    assert len(cortex.sql("SELECT id FROM links")) == 1
