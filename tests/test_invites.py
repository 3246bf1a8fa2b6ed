"""One-time invitation and reset links: single use, 24-hour expiry, newer replaces older,
the CLI's create-user, and the /invite/<token> page's form errors."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, Role, User, UserInvite
from app.models.types import utcnow
from app.security import verify_password
from app.services import invites, users
from app.services.audit import Actor
from app.services.errors import Conflict, ValidationFailed
from tests.factories import csrf_token

ADMIN = Actor.system("test")
NEW_PASSWORD = "a fine new password"


def _invite(username="ops1", role="operator", now=None):
    user, link, token = invites.invite_user(
        username, role, actor=ADMIN, client_address=None, now=now or utcnow()
    )
    db.session.commit()
    return user, link, token


def _post(client, token, password=NEW_PASSWORD, confirm=None):
    page = client.get(f"/invite/{token}")
    assert page.status_code == 200, page.status_code
    return client.post(
        f"/invite/{token}",
        data={
            "csrf_token": csrf_token(page.get_data(as_text=True)),
            "password": password,
            "confirm": password if confirm is None else confirm,
        },
    )


def test_a_link_works_once(app):
    user, _, token = _invite()
    accepted = invites.accept(token, NEW_PASSWORD, client_address=None, now=utcnow())
    assert accepted.id == user.id and verify_password(user.password_hash, NEW_PASSWORD)
    db.session.commit()
    with pytest.raises(ValidationFailed) as refused:
        invites.accept(token, "another password here", client_address=None, now=utcnow())
    assert refused.value.code == "invalid_link"
    db.session.rollback()
    assert verify_password(user.password_hash, NEW_PASSWORD)


def test_a_link_expires_after_24_hours(app, client):
    start = utcnow() - timedelta(hours=24, seconds=1)
    _, link, token = _invite(now=start)
    assert link.expires_at == start + timedelta(hours=24)
    assert invites.find_link(token, now=start + timedelta(hours=23)) is not None
    assert invites.find_link(token, now=utcnow()) is None
    with pytest.raises(ValidationFailed):
        invites.accept(token, NEW_PASSWORD, client_address=None, now=utcnow())
    page = client.get(f"/invite/{token}")
    assert page.status_code == 404
    assert "not valid" in page.get_data(as_text=True)


def test_the_page_sets_the_password_and_signs_in(app, client):
    user, _, token = _invite()
    mismatch = _post(client, token, confirm="something else entirely")
    assert mismatch.status_code == 422
    assert "The two passwords differ." in mismatch.get_data(as_text=True)
    short = _post(client, token, password="short")
    assert short.status_code == 422
    assert "at least 10 characters" in short.get_data(as_text=True)
    same = _post(client, token, password="ops1")
    assert same.status_code == 422
    db.session.expire_all()
    assert user.password_hash is None  # nothing set by the refusals
    done = _post(client, token)
    assert done.status_code == 302
    me = client.get("/api/v1/me").get_json()
    assert me["username"] == "ops1"
    assert client.get(f"/invite/{token}").status_code == 404
    actions = list(db.session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
    assert "user.password_set" in actions


def test_an_unknown_or_odd_token_is_a_clear_404(client):
    for token in ("nope", "rminv_" + "x" * 43, "rminv_" + "y" * 500):
        page = client.get(f"/invite/{token}")
        assert page.status_code == 404
        assert "not valid" in page.get_data(as_text=True)


def test_reset_replaces_older_links_and_ends_sessions(app, make_user):
    user = make_user(Role.viewer)
    first, first_token = invites.reset_link(user, actor=ADMIN, client_address=None, now=utcnow())
    second, second_token = invites.reset_link(user, actor=ADMIN, client_address=None, now=utcnow())
    db.session.commit()
    assert first.purpose == "reset"
    assert invites.find_link(first_token, now=utcnow()) is None
    assert invites.pending_link(user, now=utcnow()).id == second.id
    users.start_session(user, now=utcnow(), hours=1, client_address="x", user_agent="")
    invites.accept(second_token, NEW_PASSWORD, client_address=None, now=utcnow())
    db.session.commit()
    assert users.active_sessions(user, now=utcnow()) == []


def test_a_disabled_users_link_does_not_work(app, make_user):
    boss = make_user(Role.admin)
    user, _, token = _invite()
    users.set_disabled(user, True, actor=Actor.for_user(boss), client_address=None, now=utcnow())
    db.session.commit()
    assert invites.find_link(token, now=utcnow()) is None


def test_an_oidc_user_gets_no_reset_link(app, make_user):
    user = make_user(Role.viewer)
    user.auth_source = "oidc"
    db.session.commit()
    with pytest.raises(Conflict):
        invites.reset_link(user, actor=ADMIN, client_address=None, now=utcnow())


def test_no_secret_in_the_audit(app):
    _, _, token = _invite()
    invites.accept(token, NEW_PASSWORD, client_address=None, now=utcnow())
    db.session.commit()
    for row in db.session.scalars(select(AuditLog)):
        text = str(row.payload)
        assert token not in text and NEW_PASSWORD not in text
        assert token[6:20] not in text
    stored = db.session.scalar(select(UserInvite))
    assert token not in stored.token_hash


def test_create_user_command_prints_a_link(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-user", "--username", "Viewer9", "--role", "viewer"])
    assert result.exit_code == 0, result.output
    link = result.output.strip().splitlines()[-1]
    assert link.startswith("http://127.0.0.1:8080/invite/rminv_")
    user = db.session.scalar(select(User).where(User.username == "viewer9"))
    assert user.role == "viewer" and user.password_hash is None
    assert invites.find_link(link.rsplit("/", 1)[1], now=utcnow()) is not None
    again = runner.invoke(args=["create-user", "--username", "viewer9", "--role", "viewer"])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(args=["create-user", "--username", "x", "--role", "root"])
    assert bad.exit_code == 2


def test_odd_passwords_on_the_invite_page_are_form_errors(app, client):
    user, _, token = _invite()
    for password in ("nul\x00in the password", "p" * 5000):
        response = _post(client, token, password=password)
        assert response.status_code in (400, 422), response.status_code
    db.session.expire_all()
    assert user.password_hash is None
    assert invites.find_link(token, now=utcnow()) is not None  # still usable
