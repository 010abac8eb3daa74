"""Tenant isolation: every API endpoint refuses other orgs' callers, too-low roles, expired
and revoked tokens, and ids guessed across orgs, and the refusal tells nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from analytics_data import get, make_user, seed
from cortex.accounts import ROLE_RANK
from cortex.analytics.auth import INVALID_TOKEN
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

#: every endpoint of the analytics, account and privacy APIs, by (method, URL rule): the role
#: it needs in the org asked for (None: any user, about their own account) and how to ask it
ENDPOINTS = {
    **{("GET", path): (role, {"query": params}) for path, (role, params) in ORG_ENDPOINTS.items()},
    ("GET", "/api/v1/analytics/raw-events/<event_id>"): ("analyst", {"path": "/api/v1/analytics/raw-events/" + "0" * 32}),
    ("GET", "/api/v1/me"): (None, {}),
    ("GET", "/api/v1/tokens"): (None, {}),
    ("POST", "/api/v1/tokens"): (None, {"json": {}}),
    ("DELETE", "/api/v1/tokens/<int:token_id>"): (None, {"path": "/api/v1/tokens/999999"}),
    ("GET", "/api/v1/orgs/<org>/members"): ("admin", {"path": "/api/v1/orgs/{org}/members"}),
    # nobody's data: a refusal test that wrongly let a delete through would remove nothing
    ("POST", "/api/v1/privacy/export"): ("admin", {"json": {"device_tag": "nobody"}}),
    ("POST", "/api/v1/privacy/delete"): ("admin", {"json": {"device_tag": "nobody", "tombstone": False}}),
}
#: the blueprints whose endpoints ENDPOINTS must cover
API_BLUEPRINTS = ("analytics_api.", "privacy.")
ORG_SCOPED = sorted(key for key, (role, _) in ENDPOINTS.items() if role)


def call(cortex, endpoint: tuple[str, str], authorization: str | None, org: str = "demo"):
    """Ask ``endpoint`` about ``org`` with the ``Authorization`` header given (None: none)."""
    method, rule = endpoint
    _, how = ENDPOINTS[endpoint]
    path = how.get("path", rule).format(org=org)
    headers = {"Authorization": authorization} if authorization is not None else {}
    if rule.startswith("/api/v1/privacy/"):
        return cortex.client.open(path, method=method, json={"org": org, **how["json"]}, headers=headers)
    query = {"business_id": org, **RANGE, **how.get("query", {})} if "analytics" in rule else {}
    return cortex.client.open(path, method=method, query_string=query, json=how.get("json"), headers=headers)


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import Cortex

    cortex = Cortex(tmp_path_factory.mktemp("isolation") / "data")
    tokens = seed(cortex)
    accounts = accounts_of(cortex.state)
    tokens["expired"], _ = accounts.create_token("admin@demo.example", expires_in=timedelta(seconds=-1))
    tokens["revoked"], record = accounts.create_token("admin@demo.example")
    accounts.revoke_token(record["id"])
    tokens["disabled"] = make_user(cortex, "gone@demo.example", "demo", "admin")
    accounts.set_disabled("gone@demo.example")
    return cortex, tokens


def test_every_api_endpoint_is_covered(world):
    cortex, _ = world
    endpoints = {(method, rule.rule) for rule in cortex.app.url_map.iter_rules()
                 if rule.endpoint.startswith(API_BLUEPRINTS) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert endpoints == set(ENDPOINTS), "a new API endpoint needs its isolation tests (ENDPOINTS)"
    analytics = {rule.rule for rule in cortex.app.url_map.iter_rules() if rule.rule.startswith("/api/v1/analytics/")}
    assert analytics <= {rule for _, rule in ENDPOINTS}


@pytest.mark.parametrize("path", sorted(ORG_ENDPOINTS))
def test_members_with_the_role_get_their_data(world, path):
    cortex, tokens = world
    role, params = ORG_ENDPOINTS[path]
    answer = get(cortex, path, tokens[role], business_id="demo", **RANGE, **params)
    assert answer.status_code == 200, answer.data
    assert b"rival" not in answer.data and b"r1" not in answer.data


@pytest.mark.parametrize("endpoint", ORG_SCOPED, ids="{0[0]} {0[1]}".format)
def test_another_orgs_token_learns_nothing(world, endpoint):
    cortex, tokens = world
    existing = call(cortex, endpoint, bearer(tokens["rival"]), org="demo")
    missing = call(cortex, endpoint, bearer(tokens["rival"]), org="no-such-org")
    assert existing.status_code == missing.status_code == 404
    assert existing.json == missing.json == {"error": "no such org"}


def test_another_orgs_token_through_org_argument(world):
    cortex, tokens = world
    for path in ORG_ENDPOINTS:
        assert get(cortex, path, tokens["rival"], org="demo").status_code == 404


@pytest.mark.parametrize("endpoint", [e for e in ORG_SCOPED if ENDPOINTS[e][0] != "viewer"], ids="{0[0]} {0[1]}".format)
def test_lower_roles_are_refused(world, endpoint):
    cortex, tokens = world
    needed = ENDPOINTS[endpoint][0]
    for role in ("viewer", "analyst", "admin"):
        if ROLE_RANK[role] >= ROLE_RANK[needed]:
            continue
        answer = call(cortex, endpoint, bearer(tokens[role]))
        assert answer.status_code == 403, (role, answer.data)
        assert answer.json == {"error": f"this needs the {needed} role in demo; you are {role}"}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS), ids="{0[0]} {0[1]}".format)
def test_expired_revoked_disabled_and_made_up_tokens_are_refused_alike(world, endpoint):
    cortex, tokens = world
    refused = [call(cortex, endpoint, authorization) for authorization in (
        bearer(tokens["expired"]), bearer(tokens["revoked"]), bearer(tokens["disabled"]),
        bearer("ctx_" + "A" * 43), bearer("not-a-token"), "Bearer", "Basic YWRtaW46YWRtaW4=")]
    assert [a.status_code for a in refused] == [403] * len(refused)
    assert all(a.json == {"error": INVALID_TOKEN} for a in refused)
    assert all(a.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"' for a in refused)
    # no credentials at all: 401, which tells a client to log in or send a token
    anonymous = call(cortex, endpoint, None)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")


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
