"""Simultaneous first sign-ins through OIDC: the unique constraints on ``users.oidc_subject``
and ``users.username`` decide the race, and both sign-ins succeed (no 500).

Two threads with their own app context and database connection race through
``oidc.sign_in``; a barrier holds both right before the insert, after each has looked up
the subject and the name and found them free, so the race is not left to chance. Runs on
SQLite by default and on PostgreSQL with RM_TEST_DATABASE_URL.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, User
from app.models.types import utcnow
from app.services import oidc

SETTINGS = oidc.Settings(
    issuer="https://sso.example.test",
    client_id="restic-manager",
    client_secret="unused",
    groups_claim="groups",
    role_map={"ops": "operator", "*": "viewer"},
)


@pytest.fixture
def race(app, monkeypatch):
    """``race(claims_a, claims_b)`` signs both in at once; returns [(id, username) or exc]."""
    barrier = threading.Barrier(2, timeout=10)
    first_choice = threading.local()
    free_username = oidc._free_username

    def free_username_then_wait(claims):
        name = free_username(claims)
        if not getattr(first_choice, "done", False):
            first_choice.done = True
            barrier.wait()  # both threads have read "nobody has this subject or name"
        return name

    monkeypatch.setattr(oidc, "_free_username", free_username_then_wait)

    def run(*claim_sets):
        results: list = [None] * len(claim_sets)

        def sign_in(index, claims):
            with app.app_context():
                try:
                    user = oidc.sign_in(SETTINGS, claims, now=utcnow(), client_address="::1")
                    db.session.commit()
                    results[index] = (user.id, user.username)
                except Exception as exc:  # reported by the assertion, not swallowed
                    db.session.rollback()
                    results[index] = exc
                finally:
                    db.session.remove()

        threads = [
            threading.Thread(target=sign_in, args=(index, claims))
            for index, claims in enumerate(claim_sets)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        db.session.expire_all()
        return results

    return run


def _audit_count(action):
    return db.session.scalar(select(func.count()).where(AuditLog.action == action))


def test_the_same_subject_twice_at_once_makes_one_user_and_both_sign_in(race):
    claims = {"sub": "subject-1", "preferred_username": "alice", "groups": ["ops"]}
    results = race(claims, dict(claims))
    assert all(isinstance(result, tuple) for result in results), results
    assert results[0] == results[1]
    users = db.session.scalars(select(User).where(User.oidc_subject == "subject-1")).all()
    assert [(user.username, user.role) for user in users] == [("alice", "operator")]
    assert _audit_count("user.created") == 1
    assert _audit_count("user.oidc_login") == 2


def test_two_people_wanting_one_name_at_once_both_get_an_account(race):
    results = race(
        {"sub": "subject-a", "preferred_username": "bob", "groups": []},
        {"sub": "subject-b", "preferred_username": "bob", "groups": ["ops"]},
    )
    assert all(isinstance(result, tuple) for result in results), results
    users = {
        user.oidc_subject: user.username
        for user in db.session.scalars(select(User).where(User.auth_source == "oidc"))
    }
    assert set(users) == {"subject-a", "subject-b"}
    assert sorted(users.values()) == ["bob", "bob-2"]
    assert {username for _, username in results} == {"bob", "bob-2"}
    assert _audit_count("user.created") == 2


def test_a_later_sign_in_of_the_raced_subject_finds_the_one_row(race):
    claims = {"sub": "subject-2", "email": "Carol@Example.test", "groups": []}
    race(claims, dict(claims))
    user = oidc.sign_in(SETTINGS, claims, now=utcnow(), client_address="::1")
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(User)) == 1
    assert user.username == "carol@example.test"
