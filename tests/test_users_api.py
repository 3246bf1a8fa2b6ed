"""/api/v1/users (admin) and the self-service /api/v1/me/password and /me/sessions."""

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, Role, User, UserInvite
from app.security import verify_password
from tests.factories import TEST_PASSWORD, bearer_headers, csrf_token, form_token, login


@pytest.fixture
def admin(app, make_user):
    user = make_user(Role.admin, username="boss")
    return user, bearer_headers(user)


def _invite(client, headers, username="ops1", role="operator"):
    return client.post("/api/v1/users", json={"username": username, "role": role}, headers=headers)


def _csrf(browser) -> dict:
    """A session write to /api/v1 carries the page's CSRF token."""
    return {"X-CSRFToken": form_token(browser, "/settings/tokens")}


def _token_of(url: str) -> str:
    return url.rsplit("/invite/", 1)[1]


def test_invite_answers_the_contract_and_the_link_signs_in(app, client, admin):
    _, headers = admin
    response = _invite(client, headers)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "username", "role", "disabled", "invite_url", "invite_expires_at"}
    assert body["username"] == "ops1" and body["role"] == "operator" and body["disabled"] is False
    assert body["invite_url"].startswith("http://localhost/invite/rminv_")
    user = db.session.get(User, body["id"])
    assert user.password_hash is None
    token = _token_of(body["invite_url"])
    assert db.session.scalar(select(UserInvite)).token_hash != token

    listed = client.get("/api/v1/users", headers=headers).get_json()["items"]
    ops = next(item for item in listed if item["username"] == "ops1")
    assert ops["invite_pending"] is True and ops["auth_source"] == "local"
    assert ops["last_login_at"] is None

    browser = app.test_client()
    page = browser.get(f"/invite/{token}")
    assert page.status_code == 200 and "ops1" in page.get_data(as_text=True)
    done = browser.post(
        f"/invite/{token}",
        data={
            "csrf_token": csrf_token(page.get_data(as_text=True)),
            "password": "a fine new password",
            "confirm": "a fine new password",
        },
    )
    assert done.status_code == 302
    me = browser.get("/api/v1/me").get_json()
    assert me["username"] == "ops1" and me["role"] == "operator"
    # single use: the same link is dead now
    assert browser.get(f"/invite/{token}").status_code == 404
    got = client.get(f"/api/v1/users/{body['id']}", headers=headers).get_json()
    assert got["invite_pending"] is False and got["last_login_at"] is not None
    rows = list(db.session.scalars(select(AuditLog)))
    assert all(token not in str(row.payload) for row in rows)
    assert all("a fine new password" not in str(row.payload) for row in rows)


def test_role_change_and_viewers_cannot_manage_users(app, client, admin, make_user):
    _, headers = admin
    created = _invite(client, headers, "v1", "viewer").get_json()
    response = client.patch(
        f"/api/v1/users/{created['id']}", json={"role": "operator"}, headers=headers
    )
    assert response.status_code == 200 and response.get_json()["role"] == "operator"
    viewer = make_user(Role.viewer)
    refused = app.test_client().get("/api/v1/users", headers=bearer_headers(viewer))
    assert refused.status_code == 403
    operator = make_user(Role.operator)
    refused = app.test_client().post(
        "/api/v1/users", json={"username": "x", "role": "admin"}, headers=bearer_headers(operator)
    )
    assert refused.status_code == 403
    assert db.session.scalar(select(User).where(User.username == "x")) is None


@pytest.mark.parametrize(
    "body, field",
    [
        ({"username": "ops1", "role": "root"}, "role"),
        ({"username": "", "role": "viewer"}, "username"),
        ({"username": "Bad Name!", "role": "viewer"}, "username"),
        ({"username": "ops1"}, "role"),
        ({"username": 5, "role": "viewer"}, "username"),
        ({"username": "a\u0000b", "role": "viewer"}, "username"),
        ({"username": "ops1", "role": "viewer", "password": "x"}, "password"),
        ({"username": "x" * 100000, "role": "viewer"}, "username"),
    ],
)
def test_bad_invites_are_422_and_change_nothing(client, admin, body, field):
    _, headers = admin
    response = client.post("/api/v1/users", json=body, headers=headers)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["fields"]
    assert db.session.scalar(select(User).where(User.username != "boss")) is None


@pytest.mark.parametrize(
    "body",
    [{"role": "god"}, {"disabled": "yes"}, {"disabled": 1}, {"role": None}, {"name": "x"}],
)
def test_bad_patch_is_422(client, admin, make_user, body):
    _, headers = admin
    other = make_user(Role.viewer)
    response = client.patch(f"/api/v1/users/{other.id}", json=body, headers=headers)
    assert response.status_code == 422, response.get_json()
    db.session.expire_all()
    assert other.role == "viewer" and other.disabled_at is None


def test_duplicate_username_is_409(client, admin):
    _, headers = admin
    assert _invite(client, headers).status_code == 201
    again = _invite(client, headers, "OPS1")
    assert again.status_code == 409
    assert "username" in again.get_json()["fields"]


def test_unknown_user_is_404(client, admin):
    _, headers = admin
    assert client.get("/api/v1/users/999", headers=headers).status_code == 404
    assert client.patch("/api/v1/users/999", json={}, headers=headers).status_code == 404
    assert client.delete("/api/v1/users/999", headers=headers).status_code == 404
    assert client.post("/api/v1/users/999/reset", headers=headers).status_code == 404


def test_last_admin_guard_on_every_path(client, admin):
    boss, headers = admin
    for method, body in (
        ("patch", {"role": "operator"}),
        ("patch", {"role": "viewer"}),
        ("patch", {"disabled": True}),
        ("delete", None),
    ):
        response = getattr(client, method)(f"/api/v1/users/{boss.id}", json=body, headers=headers)
        assert response.status_code == 409, (method, body)
        answer = response.get_json()
        assert answer["error"] == "last_admin"
        assert "last active administrator" in answer["message"]
    db.session.expire_all()
    assert boss.role == "admin" and boss.disabled_at is None
    # with a second active admin, demotion works; a disabled admin does not count
    second = _invite(client, headers, "second", "admin").get_json()
    client.patch(f"/api/v1/users/{second['id']}", json={"disabled": True}, headers=headers)
    refused = client.patch(f"/api/v1/users/{boss.id}", json={"role": "viewer"}, headers=headers)
    assert refused.status_code == 409
    client.patch(f"/api/v1/users/{second['id']}", json={"disabled": False}, headers=headers)
    allowed = client.patch(f"/api/v1/users/{boss.id}", json={"role": "viewer"}, headers=headers)
    assert allowed.status_code == 200


def test_disable_revokes_sessions_and_tokens_at_once(app, client, admin, make_user):
    _, headers = admin
    victim = make_user(Role.operator)
    victim_headers = bearer_headers(victim)
    browser = app.test_client()
    assert login(browser, victim.username).status_code == 302
    assert browser.get("/api/v1/me").status_code == 200
    assert client.get("/api/v1/me", headers=victim_headers).status_code == 200

    response = client.patch(f"/api/v1/users/{victim.id}", json={"disabled": True}, headers=headers)
    assert response.status_code == 200 and response.get_json()["disabled"] is True
    assert client.get("/api/v1/me", headers=victim_headers).status_code == 401
    assert browser.get("/api/v1/me").status_code == 401
    assert login(app.test_client(), victim.username).status_code == 401

    enabled = client.patch(f"/api/v1/users/{victim.id}", json={"disabled": False}, headers=headers)
    assert enabled.get_json()["disabled"] is False
    assert login(app.test_client(), victim.username).status_code == 302
    actions = list(
        db.session.scalars(select(AuditLog.action).where(AuditLog.target_id == str(victim.id)))
    )
    assert "user.disabled" in actions and "user.enabled" in actions


def test_delete_keeps_the_name_in_the_audit(client, admin, make_user):
    _, headers = admin
    doomed = make_user(Role.viewer, username="leaver")
    doomed_id = doomed.id
    bearer_headers(doomed)
    assert client.delete(f"/api/v1/users/{doomed_id}", headers=headers).status_code == 204
    db.session.expire_all()
    assert db.session.get(User, doomed_id) is None
    row = db.session.scalar(select(AuditLog).where(AuditLog.action == "user.deleted"))
    assert row.payload["username"] == "leaver"
    assert client.get(f"/api/v1/users/{doomed_id}", headers=headers).status_code == 404


def test_reset_gives_a_new_link_and_the_old_one_dies(app, client, admin, make_user):
    _, headers = admin
    user = make_user(Role.viewer)
    first = client.post(f"/api/v1/users/{user.id}/reset", headers=headers).get_json()
    second = client.post(f"/api/v1/users/{user.id}/reset", headers=headers).get_json()
    assert set(second) == {"invite_url", "invite_expires_at"}
    browser = app.test_client()
    assert browser.get(first["invite_url"].replace("http://localhost", "")).status_code == 404
    assert browser.get(second["invite_url"].replace("http://localhost", "")).status_code == 200


def test_change_own_password_needs_the_current_one(app, make_user):
    user = make_user(Role.viewer)
    browser = app.test_client()
    login(browser, user.username)
    other = app.test_client()
    login(other, user.username)
    wrong = browser.put(
        "/api/v1/me/password",
        json={"current_password": "not it at all", "new_password": "brand new secret"},
        headers=_csrf(browser),
    )
    assert wrong.status_code == 422
    assert "current_password" in wrong.get_json()["fields"]
    short = browser.put(
        "/api/v1/me/password",
        json={"current_password": TEST_PASSWORD, "new_password": "x"},
        headers=_csrf(browser),
    )
    assert short.status_code == 422 and "new_password" in short.get_json()["fields"]
    db.session.expire_all()
    assert verify_password(user.password_hash, TEST_PASSWORD)
    done = browser.put(
        "/api/v1/me/password",
        json={"current_password": TEST_PASSWORD, "new_password": "brand new secret"},
        headers=_csrf(browser),
    )
    assert done.status_code == 204
    db.session.expire_all()
    assert verify_password(user.password_hash, "brand new secret")
    assert browser.get("/api/v1/me").status_code == 200  # this session stays
    assert other.get("/api/v1/me").status_code == 401  # the others end
    rows = list(db.session.scalars(select(AuditLog)))
    assert all("brand new secret" not in str(row.payload) for row in rows)


def test_own_sessions_list_and_end(app, make_user):
    user = make_user(Role.viewer)
    browser, other = app.test_client(), app.test_client()
    login(browser, user.username)
    login(other, user.username)
    items = browser.get("/api/v1/me/sessions").get_json()["items"]
    assert len(items) == 2
    current = [item for item in items if item["current"]]
    assert len(current) == 1
    mine = current[0]["id"]
    theirs = next(item["id"] for item in items if not item["current"])
    assert (
        browser.delete(f"/api/v1/me/sessions/{theirs}", headers=_csrf(browser)).status_code == 204
    )
    assert other.get("/api/v1/me").status_code == 401
    assert (
        browser.delete(f"/api/v1/me/sessions/{theirs}", headers=_csrf(browser)).status_code == 404
    )
    stranger = make_user(Role.viewer)
    third = app.test_client()
    login(third, stranger.username)
    assert third.delete(f"/api/v1/me/sessions/{mine}", headers=_csrf(third)).status_code == 404
    assert browser.get("/api/v1/me").status_code == 200
