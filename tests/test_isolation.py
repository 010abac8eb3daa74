"""Tenant isolation: every API endpoint refuses other orgs' callers, too-low roles, expired
and revoked tokens, and ids guessed across orgs, and the refusal tells nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from analytics_data import get, seed
from cortex.analytics.setup import accounts_of

RANGE = {"start_date": "2024-06-01", "end_date": "2024-06-30"}

#: every GET endpoint that reads an org's data, the role it needs, and valid arguments
ORG_ENDPOINTS = {
    "/api/v1/analytics/events": ("viewer", {}),
    "/api/v1/analytics/counts": ("viewer", {"by": "kingdom"}),
    "/api/v1/analytics/active-users": ("viewer", {}),
    "/api/v1/analytics/revenue": ("viewer", {}),
    "/api/v1/analytics/retention": ("analyst", {}),
    "/api/v1/analytics/funnel": ("analyst", {"steps": "install,economy"}),
    "/api/v1/analytics/experiments": ("analyst", {}),
    "/api/v1/analytics/breakdown": ("analyst", {"dimension": "country"}),
    "/api/v1/analytics/raw-events": ("analyst", {}),
    "/api/v1/analytics/errors": ("analyst", {}),
    "/api/v1/analytics/export": ("analyst", {"format": "csv"}),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import Cortex

    cortex = Cortex(tmp_path_factory.mktemp("isolation") / "data")
    tokens = seed(cortex)
    return cortex, tokens


def test_every_api_endpoint_is_covered(world):
    cortex, _ = world
    rules = {rule.rule for rule in cortex.app.url_map.iter_rules() if rule.rule.startswith("/api/v1/analytics/")}
    covered = set(ORG_ENDPOINTS) | {"/api/v1/analytics/raw-events/<event_id>"}
    assert rules == covered, "a new analytics endpoint needs its isolation test"


@pytest.mark.parametrize("path", sorted(ORG_ENDPOINTS))
def test_members_with_the_role_get_their_data(world, path):
    cortex, tokens = world
    role, params = ORG_ENDPOINTS[path]
    answer = get(cortex, path, tokens[role], business_id="demo", **RANGE, **params)
    assert answer.status_code == 200, answer.data
    assert b"rival" not in answer.data and b"r1" not in answer.data


@pytest.mark.parametrize("path", sorted(ORG_ENDPOINTS))
def test_another_orgs_token_learns_nothing(world, path):
    cortex, tokens = world
    _, params = ORG_ENDPOINTS[path]
    existing = get(cortex, path, tokens["rival"], business_id="demo", **RANGE, **params)
    missing = get(cortex, path, tokens["rival"], business_id="no-such-org", **RANGE, **params)
    assert existing.status_code == missing.status_code == 404
    assert existing.json == missing.json
    # the same through ?org=, and for an admin of the other org without arguments
    assert get(cortex, path, tokens["rival"], org="demo").status_code == 404


@pytest.mark.parametrize("path", sorted(p for p, (role, _) in ORG_ENDPOINTS.items() if role == "analyst"))
def test_viewer_is_refused_analyst_endpoints(world, path):
    cortex, tokens = world
    _, params = ORG_ENDPOINTS[path]
    answer = get(cortex, path, tokens["viewer"], business_id="demo", **RANGE, **params)
    assert answer.status_code == 403
    assert "analyst" in answer.json["error"]


@pytest.mark.parametrize("path", sorted(ORG_ENDPOINTS) + ["/api/v1/me", "/api/v1/tokens"])
def test_expired_revoked_and_made_up_tokens_are_refused_alike(world, path):
    cortex, _ = world
    accounts = accounts_of(cortex.state)
    expired, _ = accounts.create_token("admin@demo.example", expires_in=timedelta(seconds=-1))
    revoked, record = accounts.create_token("admin@demo.example")
    accounts.revoke_token(record["id"])
    _, params = ORG_ENDPOINTS.get(path, (None, {}))
    answers = [
        get(cortex, path, token, business_id="demo", **RANGE, **params)
        for token in (expired, revoked, "ctx_" + "A" * 43, "not-a-token", None)
    ]
    assert {a.status_code for a in answers} == {401}
    assert len({a.json["error"] for a in answers[:4]}) == 1
    assert all(a.headers["WWW-Authenticate"].startswith("Bearer") for a in answers)


def test_event_ids_guessed_across_orgs_are_404(world):
    cortex, tokens = world
    demo_page = get(cortex, "/api/v1/analytics/raw-events", tokens["analyst"], business_id="demo", **RANGE).json
    rival_page = get(cortex, "/api/v1/analytics/raw-events", tokens["rival"], business_id="rival", **RANGE).json
    demo_id, rival_id = demo_page["items"][0]["id"], rival_page["items"][0]["id"]
    assert get(cortex, f"/api/v1/analytics/raw-events/{demo_id}", tokens["analyst"], business_id="demo").status_code == 200
    assert get(cortex, f"/api/v1/analytics/raw-events/{rival_id}", tokens["rival"], business_id="rival").status_code == 200
    # the other org's id, asked in one's own org or in the other's, and an id that exists nowhere
    own_org = get(cortex, f"/api/v1/analytics/raw-events/{rival_id}", tokens["analyst"], business_id="demo")
    their_org = get(cortex, f"/api/v1/analytics/raw-events/{rival_id}", tokens["analyst"], business_id="rival")
    nowhere = get(cortex, f"/api/v1/analytics/raw-events/{'f' * 32}", tokens["analyst"], business_id="demo")
    assert own_org.status_code == their_org.status_code == nowhere.status_code == 404
    assert own_org.json == nowhere.json


def test_cursor_of_another_org_shows_only_own_rows(world):
    cortex, tokens = world
    rival = get(cortex, "/api/v1/analytics/raw-events", tokens["rival"], business_id="rival", limit=1, **RANGE).json
    page = get(cortex, "/api/v1/analytics/raw-events", tokens["analyst"], business_id="demo",
               cursor=rival["next_cursor"], **RANGE).json
    assert all(item["device"] != "r1" for item in page["items"])


def test_tokens_of_other_users_cannot_be_revoked(world):
    cortex, tokens = world
    accounts = accounts_of(cortex.state)
    theirs = [t for t in accounts.list_tokens() if t["email"] == "boss@rival.example"]
    answer = cortex.client.delete(f"/api/v1/tokens/{theirs[0]['id']}",
                                  headers={"Authorization": f"Bearer {tokens['admin']}"})
    missing = cortex.client.delete("/api/v1/tokens/999999", headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert answer.status_code == missing.status_code == 404 and answer.json == missing.json
    assert get(cortex, "/api/v1/me", tokens["rival"]).status_code == 200
    listed = get(cortex, "/api/v1/tokens", tokens["admin"]).json["items"]
    assert all(t["prefix"] != theirs[0]["prefix"] for t in listed)


def test_members_need_admin_of_that_org(world):
    cortex, tokens = world
    assert get(cortex, "/api/v1/orgs/demo/members", tokens["admin"]).status_code == 200
    emails = {m["email"] for m in get(cortex, "/api/v1/orgs/demo/members", tokens["admin"]).json["items"]}
    assert "boss@rival.example" not in emails
    assert get(cortex, "/api/v1/orgs/demo/members", tokens["analyst"]).status_code == 403
    other = get(cortex, "/api/v1/orgs/demo/members", tokens["rival"])
    missing = get(cortex, "/api/v1/orgs/nothing/members", tokens["rival"])
    assert other.status_code == missing.status_code == 404 and other.json == missing.json


def test_other_orgs_admin_sees_only_own_numbers(world):
    cortex, tokens = world
    rival = get(cortex, "/api/v1/analytics/events", tokens["rival"], business_id="rival", **RANGE).json
    assert rival["total"] == 3 and rival["revenue_usd"] == 100.0
    demo = get(cortex, "/api/v1/analytics/events", tokens["viewer"], business_id="demo", **RANGE).json
    assert demo["revenue_usd"] == 5.99
