import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DatabaseError

from app.extensions import db
from app.models import AuditLog, Role
from app.models.audit import AppendOnlyError
from app.services import audit
from app.services.audit import Actor
from tests.factories import login


def test_record_writes_actor_target_address_and_redacted_payload(app, make_user):
    user = make_user(Role.admin)
    entry = audit.record(
        Actor.for_user(user),
        "host.credentials_changed",
        target_type="host",
        target_id=42,
        payload={
            "repo_url": "rest:https://backup.example/host",
            "repo_password": "hunter2-hunter2",
            "nested": {"api_key": "k", "hooks": [{"secret": "s", "name": "pre"}]},
            "Authorization": "Bearer rmp_x",
        },
        client_address="203.0.113.9",
    )
    db.session.commit()
    stored = db.session.get(AuditLog, entry.id)
    assert stored.actor_type == "user" and stored.actor_id == user.id
    assert stored.actor_label == user.username
    assert stored.target_type == "host" and stored.target_id == "42"
    assert stored.client_address == "203.0.113.9"
    assert stored.at.tzinfo is not None
    assert stored.payload == {
        "repo_url": "rest:https://backup.example/host",
        "repo_password": "[redacted]",
        "nested": {"api_key": "[redacted]", "hooks": [{"secret": "[redacted]", "name": "pre"}]},
        "Authorization": "[redacted]",
    }
    for secret in ("hunter2", "rmp_x"):
        assert secret not in str(stored.payload)


def test_audit_log_is_append_only_in_the_orm(app):
    entry = audit.record(Actor.system(), "test.event")
    db.session.commit()
    entry.action = "changed"
    with pytest.raises(AppendOnlyError):
        db.session.commit()
    db.session.rollback()
    db.session.delete(db.session.get(AuditLog, entry.id))
    with pytest.raises(AppendOnlyError):
        db.session.commit()
    db.session.rollback()


def test_audit_log_is_append_only_in_the_database(app):
    entry = audit.record(Actor.system(), "test.event")
    db.session.commit()
    for statement in (
        update(AuditLog).values(action="x"),
        delete(AuditLog),
        text("DELETE FROM audit_log"),
    ):
        with pytest.raises(DatabaseError, match="append-only"):
            db.session.execute(statement)
        db.session.rollback()
    assert db.session.get(AuditLog, entry.id).action == "test.event"


def test_sign_in_and_out_are_audited_with_client_address(client, make_user):
    user = make_user(Role.viewer)
    login(client, user.username)
    rows = list(db.session.scalars(select(AuditLog).order_by(AuditLog.id)))
    assert [row.action for row in rows] == ["user.login"]
    assert rows[0].client_address == "127.0.0.1"
    assert rows[0].actor_label == user.username
