"""Repository backends in the pages (issue 16): the Add host form, the Repository tab, the
Overview's connection form and Test connection.

The services and the API are in tests/test_repo_backends.py; these check what an admin sees
and posts: every backend's fields, values sealed and never shown again, an empty secret
field keeping the saved value, Test connection's answer (and its refusals).
"""

from __future__ import annotations

import json
import re

import pytest
import requests
from flask import current_app
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, EnrollmentToken, Host, HostCredential, Role
from app.models.types import utcnow
from app.services import backends, repository
from tests.factories import TEST_PASSWORD, csrf_token, form_token, make_host, make_user
from tests.test_restore_api import FakeAgent

SECRET_KEY = "s3-Secret-Key-shown-nowhere-40"
NEW_ACCESS_KEY = "AKIANEWKEY"
REPO_PASSWORD = "repo-Password-pages-61"
S3_URL = "s3:https://minio.example.com:9000/bucket/web-1"


def _add_host(browser, **fields):
    data = {
        "csrf_token": form_token(browser, "/hosts/new"),
        "hostname": "web-1",
        "repo_url": "",
        "repo_username": "",
        "repo_password": REPO_PASSWORD,
        "paths": "/etc",
    }
    data.update(fields)
    return browser.post("/hosts/new", data=data)


def _save_s3(host: Host, **extra) -> None:
    """An S3 connection saved as the Repository tab would (keys, an option, insecure TLS)."""
    connection = backends.settings(
        S3_URL,
        None,
        REPO_PASSWORD,
        {"AWS_ACCESS_KEY_ID": "AKIAOLD", "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        ["s3.bucket-lookup=path"],
        None,
        extra.get("insecure_tls", True),
    )
    repository.save_credentials(current_app.extensions["secretbox"], host, connection, now=utcnow())
    db.session.commit()


def _saved(host_id: int) -> backends.Settings:
    db.session.expire_all()
    credential = db.session.scalar(
        select(HostCredential).where(
            HostCredential.host_id == host_id, HostCredential.kind == "everyday"
        )
    )
    return repository.connection_of(current_app.extensions["secretbox"], credential)


def _repo_post(browser, host, path="repository", **fields):
    data = {
        "csrf_token": form_token(browser, f"/hosts/{host.id}/repo"),
        "return_to": "repo",
        "repo_url": S3_URL,
        "repo_username": "",
        "repo_password": REPO_PASSWORD,
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "repo_options": "s3.bucket-lookup=path",
        "cacert": "",
    }
    data.update(fields)
    return browser.post(f"/hosts/{host.id}/{path}", data=data)


# --- Add host --------------------------------------------------------------------------------


def test_the_add_host_form_has_every_backends_fields(login_as):
    page = login_as(Role.admin).get("/hosts/new").get_data(as_text=True)
    for backend in backends.catalog():
        assert f'data-backend="{backend["key"]}"' in page
        assert f'<option value="{backend["key"]}"' in page
        for example in backend["examples"]:
            assert f"<code>{example}</code>" in page
        for variable in backend["variables"]:
            if variable["name"] == "RESTIC_REST_USERNAME":
                continue  # the Username field is the REST user
            assert f'name="{variable["name"]}"' in page, variable["name"]
            assert variable["label"] in page
    # Without the script every fieldset says which URLs it is for; secrets are password
    # fields, files are text areas.
    assert "only for <code>s3:</code> URLs" in page
    assert re.search(r'<input[^>]*name="AWS_SECRET_ACCESS_KEY"[^>]*type="password"', page)
    assert re.search(r'<textarea[^>]*name="SFTP_PRIVATE_KEY"', page)
    # The REST user sits in the REST fieldset; the advanced part warns about insecure TLS.
    rest = page[page.index('data-backend="rest"') : page.index('data-backend="s3"')]
    assert 'name="repo_username"' in rest and 'name="RESTIC_REST_PASSWORD"' in rest
    assert 'name="repo_options"' in page and 'name="cacert"' in page
    assert 'name="insecure_tls"' in page and "TLS verification is off" in page
    assert "js/backends.js" in page and "css/backends.css" in page


def test_an_s3_host_seals_its_keys_in_the_token_and_never_shows_them(login_as):
    admin = login_as(Role.admin)
    response = _add_host(
        admin,
        repo_url=S3_URL,
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION="eu-central-1",
        repo_options="s3.bucket-lookup=path",
        # Fields of other backends are not taken: only the URL's backend counts.
        B2_ACCOUNT_KEY="b2-key-never-taken",
    )
    assert response.status_code == 201, response.get_data(as_text=True)[:2000]
    page = response.get_data(as_text=True)
    assert SECRET_KEY not in page and "b2-key-never-taken" not in page
    token = db.session.scalar(select(EnrollmentToken))
    assert SECRET_KEY.encode() not in token.sealed_credentials
    sealed = json.loads(
        current_app.extensions["secretbox"].open(
            token.sealed_credentials,
            table="enrollment_tokens",
            column="credentials",
            row_id=token.id,
        )
    )
    text = json.dumps(sealed)
    assert SECRET_KEY in text and "AKIAEXAMPLE" in text and "eu-central-1" in text
    assert "s3.bucket-lookup=path" in text
    assert "b2-key-never-taken" not in text
    listing = admin.get("/hosts/new").get_data(as_text=True)
    assert SECRET_KEY not in listing
    audit = db.session.scalars(select(AuditLog)).all()
    assert all(SECRET_KEY not in json.dumps(row.payload) for row in audit)


def test_a_missing_secret_key_is_named_under_its_field(login_as):
    admin = login_as(Role.admin)
    response = _add_host(admin, repo_url=S3_URL, AWS_ACCESS_KEY_ID="AKIAEXAMPLE")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    errors = re.search(r'id="AWS_SECRET_ACCESS_KEY-errors"[^>]*>(.*?)</ul>', page, re.S)
    assert errors and "AWS_SECRET_ACCESS_KEY" in errors.group(1)
    assert "is needed for S3-compatible" in errors.group(1)
    assert 'value="AKIAEXAMPLE"' in page  # a plain value typed stays
    assert db.session.scalar(select(func.count()).select_from(EnrollmentToken)) == 0


def test_a_refused_file_secret_is_not_echoed(login_as):
    admin = login_as(Role.admin)
    typed = "not-a-key-but-secret-text-93"
    response = _add_host(admin, repo_url="sftp:backup@nas:/srv/restic", SFTP_PRIVATE_KEY=typed)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "must be a private key in OpenSSH or PEM format" in page
    assert typed not in page


def test_a_username_for_another_backend_is_refused_under_the_username(login_as):
    response = _add_host(login_as(Role.admin), repo_url=S3_URL, repo_username="bob")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="repo_username-errors"' in page
    assert "REST server&#39;s user" in page


# --- the Repository tab ---------------------------------------------------------------------


@pytest.fixture
def s3_host(app):
    host = make_host("web-1")
    _save_s3(host)
    return host


def test_the_tab_shows_saved_names_never_values(login_as, s3_host):
    page = login_as(Role.admin).get(f"/hosts/{s3_host.id}/repo").get_data(as_text=True)
    assert SECRET_KEY not in page and "AKIAOLD" not in page
    summary = page[page.index('id="connection"') : page.index('id="repository-connection"')]
    assert "S3-compatible" in summary
    assert "AWS_ACCESS_KEY_ID" in summary and "AWS_SECRET_ACCESS_KEY" in summary
    assert "-o s3.bucket-lookup=path" in summary
    assert "insecure TLS" in summary
    # The form: the saved fields say so, the options and insecure TLS come prefilled.
    assert page.count('placeholder="set — leave empty to keep"') == 2
    assert re.search(r'name="AWS_SECRET_ACCESS_KEY"[^>]*placeholder="set — leave empty', page)
    assert "s3.bucket-lookup=path</textarea>" in page
    assert re.search(r'<input[^>]*\bchecked\b[^>]*name="insecure_tls"', page)
    assert "Test connection" in page
    # A viewer sees the summary, never the form.
    viewer = login_as(Role.viewer).get(f"/hosts/{s3_host.id}/repo").get_data(as_text=True)
    assert "AWS_SECRET_ACCESS_KEY" in viewer and 'name="repo_url"' not in viewer
    assert SECRET_KEY not in viewer


def test_saving_with_an_empty_secret_field_keeps_the_saved_value(login_as, s3_host):
    admin = login_as(Role.admin)
    response = _repo_post(admin, s3_host, AWS_ACCESS_KEY_ID=NEW_ACCESS_KEY)
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    saved = _saved(s3_host.id)
    assert saved.env == {"AWS_ACCESS_KEY_ID": NEW_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    assert saved.options == ["s3.bucket-lookup=path"]
    assert saved.insecure_tls is False  # the box was not ticked this time
    page = admin.get(f"/hosts/{s3_host.id}/repo").get_data(as_text=True)
    assert "Repository connection saved" in page
    assert SECRET_KEY not in page and NEW_ACCESS_KEY not in page


def test_the_overview_form_keeps_options_and_secrets_too(login_as, s3_host):
    admin = login_as(Role.admin)
    page = admin.get(f"/hosts/{s3_host.id}").get_data(as_text=True)
    assert 'name="AWS_SECRET_ACCESS_KEY"' in page and "set — leave empty to keep" in page
    assert SECRET_KEY not in page
    data = {
        "csrf_token": csrf_token(page),
        "repo_url": S3_URL,
        "repo_password": REPO_PASSWORD,
        "repo_options": "s3.bucket-lookup=path",
        "insecure_tls": "y",
    }
    assert admin.post(f"/hosts/{s3_host.id}/repository", data=data).status_code == 302
    saved = _saved(s3_host.id)
    assert saved.env["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY and saved.insecure_tls is True


def test_a_refused_save_names_the_field_and_keeps_the_old_connection(login_as, s3_host):
    admin = login_as(Role.admin)
    response = _repo_post(admin, s3_host, repo_options="sftp.command=sh")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="repo_options-errors"' in page and "sftp.command is not allowed" in page
    assert '<details class="details repoform" id="repository-connection" open' in page
    assert _saved(s3_host.id).options == ["s3.bucket-lookup=path"]


def test_test_connection_of_an_offline_host_says_so_and_saves_nothing(login_as, app):
    host = make_host("web-1", seen_seconds_ago=3600)
    _save_s3(host)
    admin = login_as(Role.admin)
    response = _repo_post(
        admin, host, "repository/test", AWS_SECRET_ACCESS_KEY="typed-secret-not-saved-7"
    )
    assert response.status_code == 409
    page = response.get_data(as_text=True)
    assert "web-1 is offline" in page and "Start the agent and try again." in page
    assert "typed-secret-not-saved-7" not in page
    assert f'value="{S3_URL}"' in page  # the form as typed, left open
    assert '<details class="details repoform" id="repository-connection" open' in page
    assert _saved(host.id).env["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY


def test_test_connection_refuses_bad_settings_under_their_fields(login_as, s3_host):
    admin = login_as(Role.admin)
    response = _repo_post(admin, s3_host, "repository/test", repo_url="swift:c:/x")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="repo_url-errors"' in page and "OpenStack Swift" in page


@pytest.mark.parametrize("role", [Role.viewer, Role.operator])
@pytest.mark.parametrize("path", ["repository", "repository/test"])
def test_only_admins_may_post_the_connection(login_as, s3_host, role, path):
    browser = login_as(role)
    token = form_token(browser, f"/hosts/{s3_host.id}/repo")
    data = {"csrf_token": token, "repo_url": S3_URL, "repo_password": REPO_PASSWORD}
    assert browser.post(f"/hosts/{s3_host.id}/{path}", data=data).status_code == 403
    assert _saved(s3_host.id).env["AWS_ACCESS_KEY_ID"] == "AKIAOLD"


# --- Test connection answered by a (protocol-level) agent ------------------------------------


@pytest.fixture
def live(app_factory):
    from tests.conftest import LiveServer
    from tests.factories import make_enrolled_host

    app = app_factory(RM_RPC_WAIT_SECONDS=3, RM_POLL_WAIT_SECONDS=1)
    server = LiveServer(app)
    server.start()
    with app.app_context():
        host, token = make_enrolled_host()
        _save_s3(host)
        make_user(Role.admin, username="boss")
        host_id = host.id
    yield server, app, host_id, token
    server.stop()


def test_test_connection_shows_the_agents_answer_and_saves_nothing(live):
    server, app, host_id, token = live
    seen = []

    def answer(agent, command):
        section = command["payload"]["repository"]
        seen.append(section)
        ok = section["env"]["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
        detail = (
            "repository reachable (id 1234abcd)" if ok else "authentication refused: Access Denied."
        )
        agent.post(
            command["payload"]["rpc_id"], json={"ok": True, "result": {"ok": ok, "detail": detail}}
        )

    agent = FakeAgent(server.url, token, answer)
    agent.start()
    browser = requests.Session()
    try:
        login = browser.get(f"{server.url}/login", timeout=10).text
        browser.post(
            f"{server.url}/login",
            data={"csrf_token": csrf_token(login), "username": "boss", "password": TEST_PASSWORD},
            timeout=10,
        )
        tab = f"{server.url}/hosts/{host_id}/repo"
        base = {
            "return_to": "repo",
            "repo_url": S3_URL,
            "repo_password": REPO_PASSWORD,
            "repo_options": "s3.bucket-lookup=path",
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
        }
        # The saved secret is used when its field is left empty.
        good = browser.post(
            f"{server.url}/hosts/{host_id}/repository/test",
            data={**base, "csrf_token": csrf_token(browser.get(tab, timeout=10).text)},
            timeout=20,
        )
        assert good.status_code == 200, good.text[:2000]
        assert "testresult--ok" in good.text and "Repository reachable" in good.text
        assert "repository reachable (id 1234abcd)" in good.text
        typed = "wrong-secret-typed-88"
        bad = browser.post(
            f"{server.url}/hosts/{host_id}/repository/test",
            data={
                **base,
                "AWS_SECRET_ACCESS_KEY": typed,
                "csrf_token": csrf_token(browser.get(tab, timeout=10).text),
            },
            timeout=20,
        )
        assert bad.status_code == 200
        assert (
            "testresult--failed" in bad.text
            and "authentication refused: Access Denied." in bad.text
        )
        assert typed not in bad.text and SECRET_KEY not in bad.text
        assert f'value="{S3_URL}"' in bad.text
    finally:
        agent.stop.set()
        agent.join(5)
    assert [section["env"]["AWS_SECRET_ACCESS_KEY"] for section in seen] == [SECRET_KEY, typed]
    with app.app_context():
        saved = _saved(host_id)
        assert saved.env["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY  # nothing saved
        audited = db.session.scalars(
            select(AuditLog).where(AuditLog.action == "host.repository_tested")
        ).all()
        assert [row.payload["ok"] for row in audited] == [True, False]
