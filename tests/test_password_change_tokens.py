"""A password change ends the user's other browser sessions but not their personal API
tokens (separate credentials, revoked under Settings → API tokens), and the Account page
says so next to the password form."""

from __future__ import annotations

from app.models import Role
from tests.factories import TEST_PASSWORD, bearer_headers, csrf_token, login

NEW_PASSWORD = "new and long enough"


def test_a_password_change_keeps_api_tokens_and_says_so(app, make_user):
    user = make_user(Role.viewer)
    headers = bearer_headers(user)
    browser, other = app.test_client(), app.test_client()
    login(browser, user.username)
    login(other, user.username)
    page = browser.get("/settings/account").get_data(as_text=True)
    assert "Your API tokens stay valid" in page
    assert 'href="/settings/tokens"' in page
    done = browser.post(
        "/settings/account/password",
        data={
            "csrf_token": csrf_token(page),
            "current_password": TEST_PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirm": NEW_PASSWORD,
        },
    )
    assert done.status_code == 302
    assert other.get("/settings/account").status_code == 302  # the other session ended
    assert browser.get("/settings/account").status_code == 200  # this one did not
    assert app.test_client().get("/api/v1/me", headers=headers).status_code == 200


def test_a_password_change_through_the_api_keeps_the_token_it_used(app, make_user):
    user = make_user(Role.viewer)
    headers = bearer_headers(user)
    client = app.test_client()
    changed = client.put(
        "/api/v1/me/password",
        json={"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 204, changed.get_data(as_text=True)
    assert client.get("/api/v1/me", headers=headers).status_code == 200
