from datetime import timedelta

from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, LoginFailure, Role, UserSession
from app.models.types import utcnow
from app.services import users
from tests.factories import TEST_PASSWORD, csrf_token, form_token, login


def test_login_sets_hardened_cookie_and_opens_dashboard(client, make_user):
    user = make_user(Role.viewer)
    response = login(client, user.username)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP in tests
    page = client.get("/")
    assert page.status_code == 200
    assert user.username in page.get_data(as_text=True)


def test_cookie_is_secure_over_https(app, make_user):
    user = make_user(Role.viewer)
    browser = app.test_client()
    token = csrf_token(browser.get("/login", base_url="https://localhost").get_data(as_text=True))
    response = browser.post(
        "/login",
        base_url="https://localhost",
        headers={"Referer": "https://localhost/login"},  # browsers send it; HTTPS CSRF needs it
        data={"csrf_token": token, "username": user.username, "password": TEST_PASSWORD},
    )
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


def test_wrong_password_is_refused_with_message_and_audited(client, make_user):
    user = make_user(Role.viewer)
    response = login(client, user.username, "not the password")
    assert response.status_code == 401
    assert "Wrong username or password" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302
    failed = db.session.scalars(select(AuditLog).where(AuditLog.action == "user.login_failed"))
    (entry,) = failed
    assert entry.payload == {"username": user.username}
    assert "not the password" not in str(entry.payload)


def test_unknown_user_gets_the_same_answer(client, make_user):
    make_user(Role.viewer)
    response = login(client, "nobody", "whatever password")
    assert response.status_code == 401
    assert "Wrong username or password" in response.get_data(as_text=True)


def test_username_is_case_insensitive(client, make_user):
    make_user(Role.viewer, username="alice")
    assert login(client, "ALICE").status_code == 302


def test_next_parameter_stays_on_site(client, make_user):
    user = make_user(Role.viewer)
    page = client.get("/login?next=https://evil.example/")
    token = csrf_token(page.get_data(as_text=True))
    response = client.post(
        "/login?next=https://evil.example/",
        data={"csrf_token": token, "username": user.username, "password": TEST_PASSWORD},
    )
    assert response.headers["Location"] == "/"


def test_anonymous_page_redirects_to_login_with_next(client, make_user):
    make_user()
    response = client.get("/settings/tokens")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=/settings/tokens")


def test_logout_revokes_the_session_row_at_once(client, make_user):
    user = make_user(Role.viewer)
    login(client, user.username)
    stolen_cookie = client.get_cookie("rm_session").value
    token = form_token(client, "/")
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302
    row = db.session.scalar(select(UserSession).where(UserSession.user_id == user.id))
    assert row.revoked_at is not None
    # Replaying the old cookie gets nowhere: the row is revoked server-side.
    client.set_cookie("rm_session", stolen_cookie)
    assert client.get("/").status_code == 302


def test_disabling_a_user_ends_their_session_at_once(client, make_user):
    user = make_user(Role.operator)
    login(client, user.username)
    assert client.get("/").status_code == 200
    users.disable_user(user, now=utcnow())
    db.session.commit()
    assert client.get("/").status_code == 302
    assert client.get("/api/v1/hosts").status_code == 401
    assert login(client, user.username).status_code == 401


def test_expired_session_is_refused(client, make_user):
    user = make_user(Role.viewer)
    login(client, user.username)
    row = db.session.scalar(select(UserSession).where(UserSession.user_id == user.id))
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert client.get("/").status_code == 302


def test_login_rotates_the_session_cookie(client, make_user):
    user = make_user(Role.viewer)
    client.get("/login")
    before = client.get_cookie("rm_session")
    login(client, user.username)
    after = client.get_cookie("rm_session")
    assert after is not None
    assert before is None or before.value != after.value


def test_rate_limit_per_username(app_factory):
    app = app_factory(RM_LOGIN_MAX_FAILURES_PER_USER=3)
    with app.app_context():
        users.create_user("carol", TEST_PASSWORD, Role.viewer)
        db.session.commit()
        client = app.test_client()
        for _ in range(3):
            assert login(client, "carol", "wrong password!").status_code == 401
        # Locked even with the right password, and the message says so and for how long.
        response = login(client, "carol")
        assert response.status_code == 429
        body = response.get_data(as_text=True)
        assert "Too many failed sign-in attempts for this account" in body
        assert "Try again in 15 minutes" in body
        assert int(response.headers["Retry-After"]) > 800
        # Another account from the same address is not locked.
        users.create_user("dave", TEST_PASSWORD, Role.viewer)
        db.session.commit()
        assert login(client, "dave").status_code == 302


def test_rate_limit_per_address(app_factory):
    app = app_factory(RM_LOGIN_MAX_FAILURES_PER_ADDRESS=4, RM_LOGIN_MAX_FAILURES_PER_USER=100)
    with app.app_context():
        users.create_user("erin", TEST_PASSWORD, Role.viewer)
        db.session.commit()
        client = app.test_client()
        for number in range(4):
            assert login(client, f"guess{number}", "wrong password!").status_code == 401
        response = login(client, "erin")
        assert response.status_code == 429
        assert "from your address" in response.get_data(as_text=True)


def test_rate_limit_window_expires(app_factory):
    app = app_factory(RM_LOGIN_MAX_FAILURES_PER_USER=2)
    with app.app_context():
        users.create_user("frank", TEST_PASSWORD, Role.viewer)
        db.session.commit()
        client = app.test_client()
        login(client, "frank", "wrong password!")
        login(client, "frank", "wrong password!")
        assert login(client, "frank").status_code == 429
        old = utcnow() - timedelta(hours=1)
        for failure in db.session.scalars(select(LoginFailure)):
            failure.attempted_at = old
        db.session.commit()
        assert login(client, "frank").status_code == 302
        remaining = db.session.scalar(
            select(func.count()).select_from(LoginFailure).where(LoginFailure.key == "frank")
        )
        assert remaining == 0


def test_post_without_csrf_token_is_refused(client, make_user):
    user = make_user(Role.viewer)
    response = client.post("/login", data={"username": user.username, "password": TEST_PASSWORD})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_session_api_post_needs_csrf_but_bearer_does_not(login_as):
    browser = login_as(Role.viewer)
    response = browser.post("/settings/tokens", data={"name": "x"})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)


def test_password_rules_are_enforced_with_clear_messages(app):
    from app.services.errors import ValidationFailed

    try:
        users.create_user("grace", "short", Role.viewer)
    except ValidationFailed as refused:
        assert refused.fields["password"] == [
            "Password must be at least 10 characters (this one has 5)."
        ]
    else:
        raise AssertionError("short password accepted")
    try:
        users.create_user("has space", TEST_PASSWORD, Role.viewer)
    except ValidationFailed as refused:
        assert "username" in refused.fields
    else:
        raise AssertionError("bad username accepted")
    assert db.session.scalar(select(func.count()).select_from(UserSession)) == 0
