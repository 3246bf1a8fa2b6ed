"""Add host page: mint an install command, list, regenerate and revoke tokens."""

import re

from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, EnrollmentToken, Role
from tests.factories import form_token

TOKEN = re.compile(r"--token (rme_[A-Za-z0-9_-]+)")


def _submit(browser, **fields):
    data = {
        "csrf_token": form_token(browser, "/hosts/new"),
        "hostname": "",
        "repo_url": "",
        "repo_username": "",
        "repo_password": "",
        "paths": "",
    }
    data.update(fields)
    return browser.post("/hosts/new", data=data)


def test_add_host_shows_the_install_command_once(login_as):
    admin = login_as(Role.admin)
    response = _submit(
        admin,
        hostname="web-1",
        repo_url="sftp:backup@nas:/restic/web-1",
        repo_password="very secret repo pw",
        paths="/etc\n/home\n",
    )
    assert response.status_code == 201
    page = response.get_data(as_text=True)
    assert "curl -fsSL" in page and "/install/install.sh" in page
    (token,) = set(TOKEN.findall(page))
    assert "restic-manager-agent enroll --server" in page
    assert "very secret repo pw" not in page
    listing = admin.get("/hosts/new").get_data(as_text=True)
    assert "web-1" in listing and "/etc, /home" in listing
    assert token not in listing  # shown once
    row = db.session.scalar(select(EnrollmentToken))
    assert row.paths == ["/etc", "/home"]
    assert b"very secret repo pw" not in row.sealed_credentials
    audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "enrollment_token.created"))
    assert "very secret repo pw" not in str(audit.payload)


def test_add_host_reports_every_problem_at_once_and_keeps_nothing(login_as):
    admin = login_as(Role.admin)
    response = _submit(admin, hostname="bad name!", paths="relative/path\n/etc\nalso/relative")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Hostname may contain letters" in page
    assert "Give the repository URL" in page
    assert "restic encrypts every repository with a password." in page
    assert "&#39;relative/path&#39; is not an absolute path" in page
    assert "&#39;also/relative&#39; is not an absolute path" in page
    assert "fix the 4 highlighted fields" in page
    assert 'value="bad name!"' in page  # what was typed stays
    assert db.session.scalar(select(func.count()).select_from(EnrollmentToken)) == 0


def test_regenerate_and_revoke_outstanding_tokens(login_as):
    admin = login_as(Role.admin)
    first = TOKEN.search(
        _submit(admin, repo_url="/srv/r", repo_password="pw").get_data(as_text=True)
    ).group(1)
    token_id = db.session.scalar(select(EnrollmentToken.id))
    regenerated = admin.post(
        f"/hosts/enrollment-tokens/{token_id}/regenerate",
        data={"csrf_token": form_token(admin, "/hosts/new")},
    )
    assert regenerated.status_code == 201
    second = TOKEN.search(regenerated.get_data(as_text=True)).group(1)
    assert second != first
    revoked = admin.post(
        f"/hosts/enrollment-tokens/{token_id}/revoke",
        data={"csrf_token": form_token(admin, "/hosts/new")},
    )
    assert revoked.status_code == 302
    assert "No outstanding tokens" in admin.get("/hosts/new").get_data(as_text=True)
    again = admin.post(
        f"/hosts/enrollment-tokens/{token_id}/revoke",
        data={"csrf_token": form_token(admin, "/hosts/new")},
    )
    assert again.status_code == 404


def test_only_admins_add_hosts(login_as):
    operator = login_as(Role.operator)
    assert operator.get("/hosts/new").status_code == 403
    dashboard = operator.get("/").get_data(as_text=True)
    assert "/hosts/new" not in dashboard
