"""Repository maintenance, bandwidth and admin credential: the API and the Repository tab."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import current_app
from sqlalchemy import select

from app.extensions import db
from app.models import (
    AuditLog,
    Command,
    Host,
    HostCredential,
    Job,
    RepoMaintenance,
    Role,
    Snapshot,
    SourceGroup,
)
from app.models.types import utcnow
from app.services import backends, commands, repository
from tests.factories import form_token

ADMIN_PASSWORD = "prune-Everything-42"


@pytest.fixture
def host(app):
    host = Host(hostname="web1", last_seen_at=utcnow())
    db.session.add(host)
    db.session.flush()
    db.session.add(SourceGroup(host=host, name="default", includes=["/etc"]))
    repository.save_credentials(
        app.extensions["secretbox"],
        host,
        backends.Settings(
            url="rest:https://backup.example/web1", username="web1", password="everyday-Secret-1"
        ),
        now=utcnow(),
    )
    db.session.commit()
    return host


def _commands(host, type_="config.update"):
    return list(
        db.session.scalars(
            select(Command)
            .where(Command.host_id == host.id, Command.type == type_)
            .order_by(Command.created_at)
        )
    )


def _actions():
    return [entry.action for entry in db.session.scalars(select(AuditLog).order_by(AuditLog.id))]


# --- maintenance ---------------------------------------------------------------------------


def test_maintenance_defaults_to_nothing_scheduled(api, host):
    body = api(Role.viewer).get(f"/api/v1/hosts/{host.id}/repo-maintenance").get_json()
    assert body["enabled"] is True
    assert (body["forget_cron"], body["prune_cron"], body["check_cron"]) == (None, None, None)
    assert body["tasks"]["prune"] == {
        "cron": None,
        "description": None,
        "next_run_at": None,
        "last_job": None,
    }


def test_operator_sets_cadences(api, host):
    response = api().put(
        f"/api/v1/hosts/{host.id}/repo-maintenance",
        json={
            "forget_cron": "0 2 * * *",
            "prune_cron": "0  3 * * 0",
            "check_cron": None,
            "check_subset_percent": 2.5,
            "enabled": True,
        },
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["prune_cron"] == "0 3 * * 0"
    assert body["tasks"]["forget"]["description"] == "every day at 02:00"
    assert body["tasks"]["forget"]["next_run_at"].endswith("T02:00:00Z")
    assert body["check_subset_percent"] == 2.5
    assert "host.maintenance_updated" in _actions()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"prune_cron": "every day"}, "prune_cron"),
        ({"check_cron": "0 0 0 * * *"}, "check_cron"),
        ({"check_subset_percent": 0}, "check_subset_percent"),
        ({"check_subset_percent": 101}, "check_subset_percent"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_bad_maintenance_is_refused_with_the_field(api, host, change, field):
    response = api().put(f"/api/v1/hosts/{host.id}/repo-maintenance", json=change)
    assert response.status_code == 422
    assert field in response.get_json()["fields"]


def test_viewer_cannot_change_maintenance(api, host):
    response = api(Role.viewer).put(f"/api/v1/hosts/{host.id}/repo-maintenance", json={})
    assert response.status_code == 403


# --- bandwidth -----------------------------------------------------------------------------


def test_bandwidth_caps_round_trip_and_bump_the_schedule_version(api, host):
    before = host.schedule_version
    response = api().put(
        f"/api/v1/hosts/{host.id}/bandwidth", json={"upload_kib": 2048, "download_kib": None}
    )
    assert response.status_code == 200
    assert response.get_json() == {"upload_kib": 2048, "download_kib": None}
    db.session.refresh(host)
    assert (host.limit_upload_kib, host.limit_download_kib) == (2048, None)
    assert host.schedule_version == before + 1
    assert "host.bandwidth_updated" in _actions()


@pytest.mark.parametrize("value", [0, -5, 10_000_001, "fast", 1.5, True])
def test_bad_bandwidth_is_refused(api, host, value):
    response = api().put(f"/api/v1/hosts/{host.id}/bandwidth", json={"upload_kib": value})
    assert response.status_code == 422
    assert "upload_kib" in response.get_json()["fields"]


# --- admin credential ----------------------------------------------------------------------


def test_admin_credential_is_sealed_pushed_and_never_returned(app, api, host):
    admin = api(Role.admin)
    response = admin.put(
        f"/api/v1/hosts/{host.id}/admin-credential",
        json={"username": "web1-admin", "password": ADMIN_PASSWORD},
    )
    assert response.status_code == 200
    assert ADMIN_PASSWORD not in response.get_data(as_text=True)
    assert response.get_json()["admin_set"] is True
    credential = repository.credential_of(host, "admin")
    assert ADMIN_PASSWORD.encode() not in credential.sealed_password
    box = app.extensions["secretbox"]
    opened = box.open(
        credential.sealed_password,
        table="host_credentials",
        column="password",
        row_id=credential.id,
    )
    assert opened == ADMIN_PASSWORD
    push = _commands(host)[-1]
    assert ADMIN_PASSWORD not in str(push.payload)
    assert commands.delivery_json(box, push)["payload"] == {
        "admin_repository": {
            "url": "rest:https://backup.example/web1",
            "username": "web1-admin",
            "password": ADMIN_PASSWORD,
        }
    }
    assert ADMIN_PASSWORD not in str(
        [entry.payload for entry in db.session.scalars(select(AuditLog))]
    )

    assert admin.delete(f"/api/v1/hosts/{host.id}/admin-credential").status_code == 204
    assert repository.credential_of(host, "admin") is None
    assert _commands(host)[-1].payload == {"admin_repository": None}
    assert admin.delete(f"/api/v1/hosts/{host.id}/admin-credential").status_code == 404
    assert {"host.admin_credential_set", "host.admin_credential_removed"} <= set(_actions())


def test_only_admins_touch_the_admin_credential(api, host):
    operator = api(Role.operator)
    body = {"username": "x", "password": ADMIN_PASSWORD}
    assert operator.put(f"/api/v1/hosts/{host.id}/admin-credential", json=body).status_code == 403
    assert operator.delete(f"/api/v1/hosts/{host.id}/admin-credential").status_code == 403


def test_admin_credential_needs_a_password_and_a_repository(api, app):
    bare = Host(hostname="bare", last_seen_at=utcnow())
    db.session.add(bare)
    db.session.commit()
    admin = api(Role.admin)
    response = admin.put(
        f"/api/v1/hosts/{bare.id}/admin-credential", json={"password": ADMIN_PASSWORD}
    )
    assert response.status_code == 409
    assert db.session.scalars(select(HostCredential)).all() == []


def test_admin_credential_password_is_required(api, host):
    response = api(Role.admin).put(
        f"/api/v1/hosts/{host.id}/admin-credential", json={"username": "x"}
    )
    assert response.status_code == 422
    assert "password" in response.get_json()["fields"]


# --- the Repository tab --------------------------------------------------------------------


def _post(browser, host, path, data):
    token = form_token(browser, f"/hosts/{host.id}/repo")
    return browser.post(f"/hosts/{host.id}/repo/{path}", data={"csrf_token": token, **data})


def test_repository_tab_shows_everything_and_no_password(app, login_as, host):
    db.session.add_all(
        [
            Snapshot(
                host_id=host.id,
                snapshot_id=f"{number:064x}",
                short_id=f"{number:08x}",
                time=utcnow() - timedelta(days=number),
                tags=tags,
                paths=["/etc"],
                reported_at=utcnow(),
            )
            for number, tags in ((1, ["default"]), (2, ["default"]), (3, ["databases"]), (4, []))
        ]
    )
    db.session.commit()
    browser = login_as(Role.admin)
    assert (
        _post(
            browser, host, "admin-credential", {"username": "root", "password": ADMIN_PASSWORD}
        ).status_code
        == 302
    )
    page = browser.get(f"/hosts/{host.id}/repo").get_data(as_text=True)
    for text in ("Maintenance", "Bandwidth", "Admin credential", "Snapshots by tag", "Danger zone"):
        assert text in page
    assert 'aria-current="page">Repository' in page
    assert "set (user root)" in page
    assert ADMIN_PASSWORD not in page and "everyday-Secret-1" not in page
    assert "databases" in page and "untagged" in page


def test_viewer_sees_the_tab_without_forms(login_as, host):
    page = login_as(Role.viewer).get(f"/hosts/{host.id}/repo").get_data(as_text=True)
    assert "Save maintenance" not in page and "Danger zone" not in page
    assert "not set" in page


def test_operator_saves_maintenance_and_bandwidth_from_the_tab(login_as, host):
    browser = login_as(Role.operator)
    response = _post(
        browser,
        host,
        "maintenance",
        {"prune_cron": "0 3 * * 0", "check_cron": "", "check_subset_percent": "5", "enabled": "y"},
    )
    assert response.status_code == 302
    page = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert "at 03:00 on Sunday" in page or "0 3 * * 0" in page
    settings = db.session.get(RepoMaintenance, host.id)
    assert (settings.prune_cron, settings.check_subset_percent) == ("0 3 * * 0", 5.0)
    assert (
        _post(browser, host, "bandwidth", {"upload_kib": "512", "download_kib": ""}).status_code
        == 302
    )
    db.session.refresh(host)
    assert (host.limit_upload_kib, host.limit_download_kib) == (512, None)


def test_bad_values_come_back_next_to_their_fields(login_as, host):
    browser = login_as(Role.operator)
    response = _post(browser, host, "maintenance", {"prune_cron": "sometimes"})
    assert response.status_code == 422
    assert "field--error" in response.get_data(as_text=True)
    response = _post(browser, host, "bandwidth", {"upload_kib": "lots"})
    assert response.status_code == 422


def test_operator_cannot_set_the_admin_credential(login_as, host):
    browser = login_as(Role.operator)
    response = _post(browser, host, "admin-credential", {"password": ADMIN_PASSWORD})
    assert response.status_code == 403


def test_reinit_needs_the_host_name_and_is_audited(login_as, host):
    browser = login_as(Role.operator)
    response = _post(browser, host, "reinit", {"confirm_hostname": "web2"})
    assert response.status_code == 422
    assert db.session.scalars(select(Job)).all() == []
    response = _post(browser, host, "reinit", {"confirm_hostname": "web1"})
    assert response.status_code == 302
    [job] = db.session.scalars(select(Job)).all()
    assert job.kind == "init"
    assert "host.repo_reinit" in _actions()


def test_the_connection_can_be_changed_from_the_repository_tab(app, login_as, host):
    admin = login_as(Role.admin)
    page = admin.get(f"/hosts/{host.id}/repo").get_data(as_text=True)
    assert "Change the connection" in page and 'name="return_to" value="repo"' in page
    token = form_token(admin, f"/hosts/{host.id}/repo")
    saved = admin.post(
        f"/hosts/{host.id}/repository",
        data={
            "csrf_token": token,
            "return_to": "repo",
            "repo_url": "/srv/restic/moved",
            "repo_username": "",
            "repo_password": "moved-Secret-77",
        },
    )
    assert saved.status_code == 302
    assert saved.headers["Location"].endswith(f"/hosts/{host.id}/repo")
    assert "moved-Secret-77" not in admin.get(f"/hosts/{host.id}/repo").get_data(as_text=True)
    db.session.expire_all()
    credential = repository.credential_of(db.session.get(Host, host.id))
    assert credential.repo_url_redacted == "/srv/restic/moved"
    assert repository.repo_url_of(current_app.extensions["secretbox"], credential) == (
        "/srv/restic/moved"
    )
    operator_page = login_as(Role.operator).get(f"/hosts/{host.id}/repo").get_data(as_text=True)
    assert "Change the connection" not in operator_page
