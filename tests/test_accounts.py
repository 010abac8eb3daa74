"""Users, roles, bearer tokens and the web login, through the CLI and HTTP."""

from __future__ import annotations

import re

import sqlalchemy as sa

from analytics_data import PASSWORD, get, make_user
from cortex.cli import cli


def run(cortex, *args, input=None):
    return cortex.app.test_cli_runner().invoke(cli, list(args), input=input)


def test_users_create_list_disable(cortex):
    result = run(cortex, "users", "create", "Ann@Example.com", "--org", "demo", "--role", "analyst",
                 "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    listed = run(cortex, "users", "list")
    assert "ann@example.com" in listed.output and "demo:analyst" in listed.output
    # the password is stored as an Argon2id hash, never as given
    engine = cortex.state.control.engine
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT password_hash FROM users")).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert run(cortex, "users", "disable", "ann@example.com").exit_code == 0
    assert "ann@example.com" in run(cortex, "users", "list", "--org", "demo").output


def test_users_create_refuses_bad_input(cortex):
    short = run(cortex, "users", "create", "a@b.example", "--password-stdin", input="short\n")
    assert short.exit_code != 0 and "at least 10 characters" in short.output
    role = run(cortex, "users", "create", "a@b.example", "--org", "nope", "--role", "viewer",
               "--password-stdin", input=PASSWORD + "\n")
    assert role.exit_code != 0 and "no org named 'nope'" in role.output
    not_email = run(cortex, "users", "create", "nobody", "--password-stdin", input=PASSWORD + "\n")
    assert not_email.exit_code != 0 and "not an email address" in not_email.output


def test_token_works_until_revoked_by_cli(cortex):
    token = make_user(cortex, "ann@example.com", "demo", "viewer")
    assert token.startswith("ctx_")
    me = get(cortex, "/api/v1/me", token)
    assert me.status_code == 200 and me.json == {"email": "ann@example.com", "roles": {"demo": "viewer"}}
    # only a digest is stored
    with cortex.state.control.engine.connect() as conn:
        stored = [row[0] for row in conn.execute(sa.text("SELECT token_hash FROM api_tokens"))]
    assert token not in stored
    prefix = token[:12]
    assert run(cortex, "tokens", "revoke", prefix).exit_code == 0
    refused = get(cortex, "/api/v1/me", token)
    assert refused.status_code == 403 and refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert "cortex tokens create" in refused.json["error"]


def test_tokens_created_listed_and_revoked_by_api(cortex):
    token = make_user(cortex, "ann@example.com", "demo", "analyst")
    headers = {"Authorization": f"Bearer {token}"}
    created = cortex.client.post("/api/v1/tokens", json={"label": "ci", "expires_in_days": 1}, headers=headers)
    assert created.status_code == 201
    second = created.json["token"]
    assert created.json["expires_at"] and created.json["label"] == "ci"
    assert get(cortex, "/api/v1/me", second).status_code == 200
    listed = get(cortex, "/api/v1/tokens", token).json["items"]
    assert {t["label"] for t in listed} == {None, "ci"} and all("token" not in t for t in listed)
    revoked = cortex.client.delete(f"/api/v1/tokens/{created.json['id']}", headers=headers)
    assert revoked.status_code == 200
    assert get(cortex, "/api/v1/me", second).status_code == 403
    assert get(cortex, "/api/v1/me", token).status_code == 200


def test_disabled_user_loses_tokens_at_once(cortex):
    token = make_user(cortex, "ann@example.com", "demo", "admin")
    assert get(cortex, "/api/v1/me", token).status_code == 200
    run(cortex, "users", "disable", "ann@example.com")
    assert get(cortex, "/api/v1/me", token).status_code == 403
    run(cortex, "users", "enable", "ann@example.com")
    assert get(cortex, "/api/v1/me", token).status_code == 200


def _csrf(page: bytes) -> str:
    return re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()


def test_web_login_session_cookie_and_csrf(cortex):
    make_user(cortex, "ann@example.com", "demo", "viewer")
    client = cortex.app.test_client()
    # the cookie is Secure: the client, like a browser, sends it back only over HTTPS
    client.environ_base["wsgi.url_scheme"] = "https"
    form = client.get("/login")
    assert form.status_code == 200
    token = _csrf(form.data)
    # a form without the CSRF token, or with another one, is refused
    no_csrf = client.post("/login", data={"email": "ann@example.com", "password": PASSWORD})
    assert no_csrf.status_code == 400
    wrong = client.post("/login", data={"email": "ann@example.com", "password": PASSWORD, "csrf_token": "x" * 40})
    assert wrong.status_code == 400
    assert client.get("/dashboard").status_code == 302
    bad = client.post("/login", data={"email": "ann@example.com", "password": "wrong password", "csrf_token": token})
    assert bad.status_code == 401 and b"Wrong email or password" in bad.data
    good = client.post("/login", data={"email": "ann@example.com", "password": PASSWORD, "csrf_token": token})
    assert good.status_code == 302 and good.headers["Location"].endswith("/dashboard")
    cookie = good.headers["Set-Cookie"]
    assert "cortex_session=" in cookie and "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    dashboard = client.get("/dashboard")
    assert dashboard.status_code == 200 and b"demo" in dashboard.data
    # the session reads the API; a change made with it needs the CSRF header
    assert client.get("/api/v1/me").json["email"] == "ann@example.com"
    no_csrf = client.post("/api/v1/tokens", json={})
    assert no_csrf.status_code == 403 and "X-CSRF-Token" in no_csrf.json["error"]
    made = client.post("/api/v1/tokens", json={}, headers={"X-CSRF-Token": _csrf(dashboard.data)})
    assert made.status_code == 201
    out = client.post("/logout", data={"csrf_token": _csrf(dashboard.data)})
    assert out.status_code == 302
    assert client.get("/api/v1/me").status_code == 401


def test_secure_cookies_can_be_turned_off(make_cortex):
    cortex = make_cortex(web={"secure_cookies": False})
    make_user(cortex, "ann@example.com", "demo", "viewer")
    token = _csrf(cortex.client.get("/login").data)
    good = cortex.client.post("/login", data={"email": "ann@example.com", "password": PASSWORD, "csrf_token": token})
    assert good.status_code == 302 and "Secure" not in good.headers["Set-Cookie"]


def test_account_admins_may_make_data_subject_requests(cortex):
    admin = make_user(cortex, "boss@example.com", "demo", "admin")
    analyst = make_user(cortex, "ann@example.com", "demo", "analyst")
    body = {"org": "demo", "device_tag": "device-1"}
    allowed = cortex.client.post("/api/v1/privacy/export", json=body, headers={"Authorization": f"Bearer {admin}"})
    assert allowed.status_code == 200
    refused = cortex.client.post("/api/v1/privacy/export", json=body, headers={"Authorization": f"Bearer {analyst}"})
    assert refused.status_code == 403
    cortex.state.control.create_org("other")
    elsewhere = cortex.client.post("/api/v1/privacy/export", json={**body, "org": "other"},
                                   headers={"Authorization": f"Bearer {admin}"})
    assert elsewhere.status_code == 404 and elsewhere.json == {"error": "no such org"}
