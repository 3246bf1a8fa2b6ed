"""Settings → Users (admin) and Settings → Account (everyone), through the pages."""

import re

from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, Role, User
from app.security import verify_password
from tests.factories import TEST_PASSWORD, bearer_headers, csrf_token, form_token, login

LINK = re.compile(
    r'<code id="invite-link" class="secret__value">(http[^<]+/invite/rminv_[^<]+)</code>'
)


def test_invite_through_the_page_shows_the_link_once(app, login_as):
    browser = login_as(Role.admin)
    page = browser.get("/settings/users")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Invite a user" in html and browser.user.username in html
    response = browser.post(
        "/settings/users",
        data={
            "csrf_token": csrf_token(html),
            "username": "Ops7",
            "role": "operator",
            "request_id": "r1",
        },
    )
    assert response.status_code == 201
    match = LINK.search(response.get_data(as_text=True))
    assert match, "link not shown"
    url = match.group(1)
    listing = browser.get("/settings/users").get_data(as_text=True)
    assert "ops7" in listing and url not in listing and "Invited" in listing
    again = browser.post(
        "/settings/users",
        data={
            "csrf_token": csrf_token(html),
            "username": "Ops7",
            "role": "operator",
            "request_id": "r1",
        },
    )
    assert again.status_code == 303  # a reload does not invite twice nor show the link again
    user = db.session.scalar(select(User).where(User.username == "ops7"))
    assert user.role == "operator"


def test_invite_form_errors(login_as):
    browser = login_as(Role.admin)
    token = form_token(browser, "/settings/users")
    bad = browser.post(
        "/settings/users", data={"csrf_token": token, "username": "bad name!", "role": "admin"}
    )
    assert bad.status_code == 422
    assert "letters, digits" in bad.get_data(as_text=True)
    bad_role = browser.post(
        "/settings/users", data={"csrf_token": token, "username": "fine", "role": "root"}
    )
    assert bad_role.status_code == 422
    assert db.session.scalar(select(User).where(User.username == "fine")) is None


def test_role_disable_enable_reset_delete_and_the_guard(app, login_as, make_user):
    browser = login_as(Role.admin)
    me = browser.user
    other = make_user(Role.viewer, username="pat")
    token = form_token(browser, "/settings/users")
    browser.post(f"/settings/users/{other.id}/role", data={"csrf_token": token, "role": "operator"})
    db.session.expire_all()
    assert other.role == "operator"
    headers = bearer_headers(other)
    browser.post(f"/settings/users/{other.id}/disable", data={"csrf_token": token})
    assert app.test_client().get("/api/v1/me", headers=headers).status_code == 401
    browser.post(f"/settings/users/{other.id}/enable", data={"csrf_token": token})
    assert app.test_client().get("/api/v1/me", headers=headers).status_code == 200
    reset = browser.post(f"/settings/users/{other.id}/reset", data={"csrf_token": token})
    assert reset.status_code == 200 and LINK.search(reset.get_data(as_text=True))
    # the guard: the only admin cannot demote, disable or delete themselves
    for path, data in (
        (f"/settings/users/{me.id}/role", {"role": "viewer"}),
        (f"/settings/users/{me.id}/disable", {}),
        (f"/settings/users/{me.id}/delete", {}),
    ):
        answer = browser.post(path, data={"csrf_token": token, **data}, follow_redirects=True)
        assert "last active administrator" in answer.get_data(as_text=True)
    db.session.expire_all()
    assert me.role == "admin" and me.is_active
    gone = browser.post(f"/settings/users/{other.id}/delete", data={"csrf_token": token})
    assert gone.status_code == 302
    assert db.session.scalar(select(User).where(User.username == "pat")) is None
    assert (
        db.session.scalar(select(AuditLog).where(AuditLog.action == "user.deleted")).payload[
            "username"
        ]
        == "pat"
    )


def test_non_admins_see_no_users_tab(login_as):
    browser = login_as(Role.operator)
    html = browser.get("/settings/account").get_data(as_text=True)
    assert "/settings/users" not in html
    assert browser.get("/settings/users").status_code == 403


def test_account_password_and_sessions(app, make_user):
    user = make_user(Role.viewer)
    browser, other = app.test_client(), app.test_client()
    login(browser, user.username)
    login(other, user.username)
    page = browser.get("/settings/account")
    html = page.get_data(as_text=True)
    assert "this session" in html and "Sign out all other sessions" in html
    token = csrf_token(html)
    wrong = browser.post(
        "/settings/account/password",
        data={
            "csrf_token": token,
            "current_password": "wrong wrong wrong",
            "new_password": "new and long enough",
            "confirm": "new and long enough",
        },
    )
    assert wrong.status_code == 422
    assert "current password is not correct" in wrong.get_data(as_text=True)
    db.session.expire_all()
    assert verify_password(user.password_hash, TEST_PASSWORD)
    done = browser.post(
        "/settings/account/password",
        data={
            "csrf_token": token,
            "current_password": TEST_PASSWORD,
            "new_password": "new and long enough",
            "confirm": "new and long enough",
        },
    )
    assert done.status_code == 302
    assert other.get("/settings/account").status_code == 302  # signed out
    login(other, user.username, "new and long enough")
    ended = browser.post("/settings/account/sessions/end-others", data={"csrf_token": token})
    assert ended.status_code == 302
    assert other.get("/settings/account").status_code == 302
    assert browser.get("/settings/account").status_code == 200


def test_odd_input_is_a_form_error_never_a_500(app, login_as, make_user):
    browser = login_as(Role.admin)
    other = make_user(Role.viewer)
    token = form_token(browser, "/settings/users")
    for data in (
        {"username": "nul\x00name", "role": "viewer"},
        {"username": "x" * 5000, "role": "viewer"},
        {"username": "fine2", "role": "vie\x00wer"},
        {"username": "", "role": ""},
    ):
        response = browser.post("/settings/users", data={"csrf_token": token, **data})
        assert response.status_code in (400, 422), (data, response.status_code)
    odd_role = browser.post(
        f"/settings/users/{other.id}/role",
        data={"csrf_token": token, "role": "x" * 5000},
        follow_redirects=True,
    )
    assert odd_role.status_code == 200 and "Role must be one of" in odd_role.get_data(as_text=True)
    assert (
        browser.post("/settings/users/99999/delete", data={"csrf_token": token}).status_code == 404
    )
    assert (
        browser.post("/settings/users/99999/reset", data={"csrf_token": token}).status_code == 404
    )
    page = browser.get("/settings/account")
    wrong = browser.post(
        "/settings/account/password",
        data={
            "csrf_token": csrf_token(page.get_data(as_text=True)),
            "current_password": "a\x00b",
            "new_password": "n" * 5000,
            "confirm": "n" * 5000,
        },
    )
    assert wrong.status_code in (400, 422)
    ended = browser.post("/settings/account/sessions/99999/end", data={"csrf_token": token})
    assert ended.status_code == 404
    assert db.session.scalar(select(User).where(User.username == "fine2")) is None
