"""A small, fully known data set for the query API tests, posted through the ingest API."""

from __future__ import annotations

import orjson

PASSWORD = "correct horse battery"

#: (device, bundle fields, events) of org "demo"; all of June 2024
DEMO_DEVICES = [
    ("d1", {"os": "ios", "country": "US", "device_type": "iphone", "app_ver": "1.0"}, [
        {"type": "install", "event_datetime": "2024-06-01T10:00:00Z"},
        {"type": "experiment", "event_datetime": "2024-06-01T10:01:00Z", "experiment_name": "exp1", "variant_name": "A"},
        {"type": "event", "event_datetime": "2024-06-01T10:05:00Z", "kingdom": "level_start"},
        {"type": "event", "event_datetime": "2024-06-01T10:20:00Z", "kingdom": "level_complete"},
        {"type": "economy", "event_datetime": "2024-06-01T10:30:00Z", "spend_amount": 4.99, "spend_currency": "USD"},
        {"type": "dau", "event_datetime": "2024-06-02T08:00:00Z"},
        {"type": "dau", "event_datetime": "2024-06-08T08:00:00Z"},
    ]),
    ("d2", {"os": "android", "country": "DE", "device_type": "phone", "app_ver": "1.1"}, [
        {"type": "install", "event_datetime": "2024-06-01T11:00:00Z"},
        {"type": "experiment", "event_datetime": "2024-06-01T11:01:00Z", "experiment_name": "exp1", "variant_name": "B"},
        {"type": "event", "event_datetime": "2024-06-01T11:05:00Z", "kingdom": "level_start"},
        {"type": "dau", "event_datetime": "2024-06-02T09:00:00Z"},
    ]),
    ("d3", {"os": "ios", "country": "US", "device_type": "ipad", "app_ver": "1.1"}, [
        {"type": "install", "event_datetime": "2024-06-02T09:00:00Z"},
        {"type": "experiment", "event_datetime": "2024-06-02T09:00:30Z", "experiment_name": "exp1", "variant_name": "A"},
        {"type": "economy", "event_datetime": "2024-06-02T12:00:00Z", "spend_amount": "1.00", "spend_currency": "usd"},
    ]),
]
DEMO_EVENTS = sum(len(events) for _, _, events in DEMO_DEVICES)

#: the other org's data: never to be seen by demo's callers
RIVAL_EVENTS = [
    {"type": "install", "event_datetime": "2024-06-01T10:00:00Z"},
    {"type": "economy", "event_datetime": "2024-06-01T10:30:00Z", "spend_amount": 100, "spend_currency": "USD"},
]


def post_bundle(cortex, key: str, org: str, device: str, fields: dict, events: list[dict]):
    """POST one bundle through the ingest API and check it was accepted."""
    body = {"api_key": key, "device_tag": device, **fields, "events": events}
    response = cortex.client.post(f"/{org}/1/track", data=orjson.dumps(body), content_type="text/plain")
    assert response.status_code == 200, response.data
    return response


def seed(cortex) -> dict:
    """Post the demo and rival data, deliver it, and make users of both orgs.

    Returns ``{"admin": token, "analyst": token, "viewer": token, "rival": token,
    "rival_key": key}``; the tokens are bearer tokens of users with that role in ``demo``
    (``rival``: an admin of org ``rival`` only).
    """
    for device, fields, events in DEMO_DEVICES:
        post_bundle(cortex, cortex.api_key, "demo", device, fields, events)
    # one invalid event next to a valid one: the ingest error log gets it
    post_bundle(cortex, cortex.api_key, "demo", "d9", {"os": "ios"}, [
        {"type": "economy", "event_datetime": "2024-06-03T10:00:00Z", "spend_amount": 1},
        {"type": "dau", "event_datetime": "2024-06-03T10:00:00Z"},
    ])
    state = cortex.state
    state.control.create_org("rival")
    state.control.create_app("rival", "game")
    rival_key, _ = state.control.create_key("rival", "game")
    post_bundle(cortex, rival_key, "rival", "r1", {"os": "ios", "country": "US"}, RIVAL_EVENTS)
    post_bundle(cortex, rival_key, "rival", "r1", {"os": "ios"}, [
        {"type": "economy", "event_datetime": "2024-06-03T10:00:00Z", "spend_amount": 1},
        {"type": "dau", "event_datetime": "2024-06-03T10:00:00Z"},
    ])
    cortex.deliver()
    tokens = {}
    for role in ("admin", "analyst", "viewer"):
        tokens[role] = make_user(cortex, f"{role}@demo.example", "demo", role)
    tokens["rival"] = make_user(cortex, "boss@rival.example", "rival", "admin")
    tokens["rival_key"] = rival_key
    return tokens


def make_user(cortex, email: str, org: str, role: str) -> str:
    """Create a user with the CLI and return a new bearer token of theirs."""
    from cortex.cli import cli

    runner = cortex.app.test_cli_runner()
    result = runner.invoke(cli, ["users", "create", email, "--org", org, "--role", role, "--password-stdin"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["tokens", "create", email])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]


def get(cortex, path: str, token: str | None, **params):
    """GET an API path with a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return cortex.client.get(path, query_string=params, headers=headers)
