"""First run: the one-time setup token, the setup form and the CLI alternatives."""

from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Role, SetupToken, User
from app.models.types import utcnow
from app.services import users
from tests.factories import TEST_PASSWORD, csrf_token


def _setup(client, token, username="admin", password=TEST_PASSWORD, confirm=None):
    page = client.get(f"/login?setup_token={token}")
    return client.post(
        "/setup",
        data={
            "csrf_token": csrf_token(page.get_data(as_text=True)),
            "token": token,
            "username": username,
            "password": password,
            "confirm": password if confirm is None else confirm,
        },
    )


def test_login_page_shows_setup_form_with_rules_while_no_user(client):
    token = users.issue_setup_token(now=utcnow())
    db.session.commit()
    page = client.get(f"/login?setup_token={token}").get_data(as_text=True)
    assert "Create the administrator" in page
    assert f'value="{token}"' in page  # pre-filled from the printed URL
    assert "At least 10 characters" in page  # rules shown, not silently enforced


def test_setup_creates_admin_and_signs_in(client):
    token = users.issue_setup_token(now=utcnow())
    db.session.commit()
    response = _setup(client, token, username="Root-Admin")
    assert response.status_code == 302
    dashboard = client.get("/").get_data(as_text=True)
    assert "root-admin" in dashboard
    assert "Add your first host" in dashboard
    admin = db.session.scalar(select(User))
    assert admin.role == Role.admin.value
    assert admin.password_hash.startswith("$argon2id$")
    assert db.session.scalar(select(AuditLog.action)) == "setup.completed"
    # For everyone else the login page is a login page again, and the token is spent.
    other = client.application.test_client()
    assert "Sign in" in other.get("/login").get_data(as_text=True)
    second = _setup(other, token, username="intruder")
    assert second.status_code == 302
    assert second.headers["Location"] == "/login"
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


def test_setup_refuses_wrong_token_and_keeps_nothing(client):
    users.issue_setup_token(now=utcnow())
    db.session.commit()
    response = _setup(client, "rmsetup_guessed")
    assert response.status_code == 422
    assert "Setup token not valid" in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(User)) == 0
    assert db.session.scalar(select(SetupToken.used_at)) is None


def test_setup_shows_password_problems_next_to_the_field(client):
    token = users.issue_setup_token(now=utcnow())
    db.session.commit()
    response = _setup(client, token, password="short")
    assert response.status_code == 422
    assert "Password must be at least 10 characters (this one has 5)." in response.get_data(
        as_text=True
    )
    mismatch = _setup(client, token, confirm="something else entirely")
    assert "The two passwords differ." in mismatch.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(User)) == 0
    # The token was not spent by the failed attempts.
    assert _setup(client, token).status_code == 302


def test_issuing_a_new_token_invalidates_the_old_one(client):
    first = users.issue_setup_token(now=utcnow())
    second = users.issue_setup_token(now=utcnow())
    db.session.commit()
    assert _setup(client, first).status_code == 422
    assert _setup(client, second).status_code == 302


def test_no_setup_token_once_a_user_exists(app, make_user):
    make_user(Role.viewer)
    assert users.issue_setup_token(now=utcnow()) is None


def test_setup_url_and_create_admin_commands(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["setup-url"])
    assert result.exit_code == 0, result.output
    assert "/login?setup_token=rmsetup_" in result.output

    result = runner.invoke(
        args=["create-admin", "--username", "ops", "--password-stdin"],
        input=TEST_PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    assert TEST_PASSWORD not in result.output
    admin = users.find_user("ops")
    assert admin.role == "admin"

    again = runner.invoke(
        args=["create-admin", "--username", "ops", "--password-stdin"], input=TEST_PASSWORD
    )
    assert again.exit_code == 1
    assert "already exists" in again.output

    weak = runner.invoke(
        args=["create-admin", "--username", "ops2", "--password-stdin"], input="short\n"
    )
    assert weak.exit_code == 1
    assert "at least 10 characters" in weak.output

    assert runner.invoke(args=["setup-url"]).exit_code == 1
