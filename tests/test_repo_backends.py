"""Repository backends on the server: the allow-list, sealing, the API contract (issue 16).

The agent side (the same allow-list enforced again, files, masking) is in
tests/agent/test_agent_backends.py; real S3/REST/SFTP servers in the e2e tests.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, Command, HostCredential, RpcCall
from app.models.user import Role
from app.services import backends, commands, repository
from app.services.errors import ValidationFailed
from tests.factories import enroll_agent
from tests.test_restore_api import FakeAgent, live_headers

SECRET_KEY = "s3-Secret-Key-nobody-may-see-91"
REST_PASSWORD = "rest-Password-nobody-may-see-52"
REPO_PASSWORD = "repo-Password-77-backends"
S3 = {
    "repo_url": "s3:http://127.0.0.1:9/bucket/web-1",
    "repo_password": REPO_PASSWORD,
    "repo_env": {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "eu-central-1",
    },
    "repo_options": ["s3.bucket-lookup=path"],
}


def _refusal(call) -> dict:
    with pytest.raises(ValidationFailed) as refused:
        call()
    return refused.value.fields


def _ed25519_key(passphrase: str = "") -> str:
    """A key made by ssh-keygen itself (with a passphrase when one is given)."""
    if not passphrase:
        key = ed25519.Ed25519PrivateKey.generate()
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True
        )
        return path.read_text()


# --- the allow-list ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("/srv/restic", "local"),
        ("local:/srv/restic", "local"),
        ("rest:https://h/x", "rest"),
        ("s3:s3.amazonaws.com/b", "s3"),
        ("b2:bucket:p", "b2"),
        ("azure:c:/p", "azure"),
        ("gs:b:/p", "gs"),
        ("sftp:u@h:/p", "sftp"),
        ("rclone:remote:p", "rclone"),
    ],
)
def test_the_backend_comes_from_the_url(url, key):
    assert backends.backend_of(url).key == key


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "RESTIC_PASSWORD_COMMAND", "PATH", "B2_ACCOUNT_KEY", "a" * 300]
)
def test_a_name_outside_the_backends_list_is_refused_by_name(name):
    fields = _refusal(
        lambda: backends.settings(S3["repo_url"], None, "pw", {name: "x", **S3["repo_env"]})
    )
    (field,) = fields
    assert field.startswith("repo_env.") and len(field) < 70
    message = fields[field][0]
    assert "not allowed for a S3-compatible" in message or "not allowed" in message
    assert "AWS_SECRET_ACCESS_KEY" in message  # what is allowed


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (5, "must be a string"),
        ("a\x00b", "NUL"),
        ("two\nlines", "one line"),
        ("x" * 5000, "at most 4096"),
    ],
)
def test_bad_values_are_refused_under_their_field(value, words):
    env = {**S3["repo_env"], "AWS_SECRET_ACCESS_KEY": value}
    fields = _refusal(lambda: backends.settings(S3["repo_url"], None, "pw", env))
    assert words in fields["repo_env.AWS_SECRET_ACCESS_KEY"][0]


def test_s3_takes_both_keys_or_none():
    fields = _refusal(
        lambda: backends.settings(S3["repo_url"], None, "pw", {"AWS_ACCESS_KEY_ID": "A"})
    )
    assert "Secret access key" in fields["repo_env.AWS_SECRET_ACCESS_KEY"][0]
    # None at all: the host's instance role may grant access.
    assert backends.settings(S3["repo_url"], None, "pw", {}).env == {}


def test_the_username_is_the_rest_servers_user_only():
    assert backends.settings("rest:http://h/", "u", "pw").username == "u"
    fields = _refusal(lambda: backends.settings(S3["repo_url"], "u", "pw", S3["repo_env"]))
    assert "REST server's user" in fields["repo_username"][0]


def test_options_come_from_the_backends_allow_list():
    assert backends.check_options(backends.BACKENDS["s3"], "s3.region=eu-west-1\n") == [
        "s3.region=eu-west-1"
    ]
    for option, words in [
        ("sftp.command=sh -c id", "not allowed"),
        ("rclone.program=/bin/sh", "not allowed"),
        ("s3.bucket-lookup=other", "auto, dns or path"),
        ("s3.connections=0", "1 to 128"),
        ("s3.region=eu;rm", "letters, digits"),
        ("garbage", "key=value"),
    ]:
        fields = _refusal(lambda o=option: backends.check_options(backends.BACKENDS["s3"], [o]))
        assert words in fields["repo_options"][0], option
    sftp = backends.BACKENDS["sftp"]
    fields = _refusal(lambda: backends.check_options(sftp, ["sftp.command=ssh evil"]))
    assert "sftp.connections" in fields["repo_options"][0]


def test_file_secrets_are_checked_before_they_reach_a_host():
    sftp_url = "sftp:backup@nas:/restic"
    good = backends.settings(sftp_url, None, "pw", {"SFTP_PRIVATE_KEY": _ed25519_key()})
    assert good.agent_section()["files"]["SFTP_PRIVATE_KEY"].startswith("-----BEGIN OPENSSH")
    assert "env" not in good.agent_section()
    fields = _refusal(
        lambda: backends.settings(
            sftp_url, None, "pw", {"SFTP_PRIVATE_KEY": _ed25519_key("passphrase")}
        )
    )
    assert "passphrase" in fields["repo_env.SFTP_PRIVATE_KEY"][0]
    fields = _refusal(
        lambda: backends.settings(sftp_url, None, "pw", {"SFTP_PRIVATE_KEY": "not a key"})
    )
    assert "OpenSSH or PEM" in fields["repo_env.SFTP_PRIVATE_KEY"][0]
    gcs = {"GOOGLE_APPLICATION_CREDENTIALS": "{not json"}
    fields = _refusal(lambda: backends.settings("gs:b:/p", None, "pw", gcs))
    assert "JSON key" in fields["repo_env.GOOGLE_APPLICATION_CREDENTIALS"][0]
    fields = _refusal(lambda: backends.check_cacert("-----BEGIN CERTIFICATE-----\nxx\n"))
    assert "PEM" in fields["cacert"][0]


def test_swift_is_refused_with_the_way_out():
    fields = _refusal(lambda: backends.settings("swift:container:/p", None, "pw"))
    assert "S3 API" in fields["repo_url"][0]


# --- the API: sealed, names only, audited without values -----------------------------------


@pytest.fixture
def enrolled(protocol_app):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()
    return agent, host_id


def test_put_repository_seals_the_backend_values_and_returns_only_names(
    protocol_app, api, enrolled
):
    agent, host_id = enrolled
    admin = api(Role.admin)
    answer = admin.put(f"/api/v1/hosts/{host_id}/repository", json=S3)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["backend"] == "s3"
    assert body["repo_env_names"] == [
        "AWS_ACCESS_KEY_ID",
        "AWS_DEFAULT_REGION",
        "AWS_SECRET_ACCESS_KEY",
    ]
    assert body["repo_options"] == ["s3.bucket-lookup=path"]
    got = admin.get(f"/api/v1/hosts/{host_id}/repository")
    for text in (answer.get_data(as_text=True), got.get_data(as_text=True)):
        assert SECRET_KEY not in text and REPO_PASSWORD not in text
        assert "AKIAEXAMPLE" not in text  # names, never values (even the plain ones)
    credential = db.session.scalar(select(HostCredential).where(HostCredential.kind == "everyday"))
    assert SECRET_KEY.encode() not in credential.sealed_backend
    command = db.session.scalars(
        select(Command).where(Command.type == "config.update").order_by(Command.created_at.desc())
    ).first()
    assert SECRET_KEY not in json.dumps(command.payload)  # the clear part
    delivered = agent.poll().get_json()["commands"]
    update = next(c for c in delivered if c["type"] == "config.update")
    section = update["payload"]["repository"]
    assert section["env"]["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    assert section["options"] == ["s3.bucket-lookup=path"] and section["url"] == S3["repo_url"]
    audited = db.session.scalars(select(AuditLog)).all()
    assert all(SECRET_KEY not in json.dumps(row.payload) for row in audited)
    assert any(
        row.action == "host.repository_updated"
        and row.payload["repo_env_names"] == body["repo_env_names"]
        for row in audited
    )


def test_put_repository_refuses_a_name_outside_the_list_and_keeps_the_old_one(
    protocol_app, api, enrolled
):
    _, host_id = enrolled
    admin = api(Role.admin)
    before = admin.get(f"/api/v1/hosts/{host_id}/repository").get_json()
    bad = {**S3, "repo_env": {**S3["repo_env"], "LD_PRELOAD": "/tmp/evil.so"}}
    answer = admin.put(f"/api/v1/hosts/{host_id}/repository", json=bad)
    assert answer.status_code == 422
    assert "LD_PRELOAD" in answer.get_json()["message"]
    assert "repo_env.LD_PRELOAD" in answer.get_json()["fields"]
    assert admin.get(f"/api/v1/hosts/{host_id}/repository").get_json() == before
    # The older spellings of PUT …/repository still work; both at once must agree.
    both = {"url": "/srv/a", "repo_url": "/srv/b", "password": "pw"}
    answer = admin.put(f"/api/v1/hosts/{host_id}/repository", json=both)
    assert answer.status_code == 422 and "repo_url" in answer.get_json()["fields"]


def test_an_operator_cannot_change_the_repository(protocol_app, api, enrolled):
    _, host_id = enrolled
    answer = api(Role.operator).put(f"/api/v1/hosts/{host_id}/repository", json=S3)
    assert answer.status_code == 403


def test_enrollment_carries_the_backend_credentials_to_the_host(protocol_app, api):
    admin = api(Role.admin)
    body = {
        "hostname": "s3-host",
        **S3,
        "repo_env": {**S3["repo_env"]},
        "paths": ["/etc"],
    }
    refused = admin.post(
        "/api/v1/enrollment-tokens",
        json={**body, "repo_env": {"RESTIC_PASSWORD_COMMAND": "id"}},
    )
    assert refused.status_code == 422
    assert "RESTIC_PASSWORD_COMMAND" in refused.get_json()["message"]
    created = admin.post("/api/v1/enrollment-tokens", json=body)
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["repo_backend"] == "s3"
    assert SECRET_KEY not in created.get_data(as_text=True)
    enrolled = protocol_app.test_client().post(
        "/api/agent/v1/enroll",
        json={
            "token": created.get_json()["token"],
            "hostname": "s3-host",
            "os": "linux",
            "arch": "x86_64",
            "agent_version": "0.1.0",
            "restic_version": "0.14.0",
            "protocol_version": 1,
        },
    )
    assert enrolled.status_code == 201
    host_id = enrolled.get_json()["host_id"]
    repo = admin.get(f"/api/v1/hosts/{host_id}/repository").get_json()
    assert repo["backend"] == "s3" and "AWS_SECRET_ACCESS_KEY" in repo["repo_env_names"]
    box = protocol_app.extensions["secretbox"]
    credential = db.session.scalar(select(HostCredential).where(HostCredential.host_id == host_id))
    assert repository.connection_of(box, credential).env["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    command = db.session.scalar(select(Command).where(Command.host_id == host_id))
    delivered = commands.delivery_json(box, command)["payload"]["repository"]
    assert delivered["env"]["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY


def test_the_admin_credential_follows_the_backend_settings(protocol_app, api, enrolled):
    from app.services import repo_settings

    agent, host_id = enrolled
    admin = api(Role.admin)
    assert admin.put(f"/api/v1/hosts/{host_id}/repository", json=S3).status_code == 200
    box = protocol_app.extensions["secretbox"]
    host = db.session.get(repository.Host, host_id)
    repo_settings.save_admin_credential(box, host, None, "admin-Secret-1", now=repository_now())
    db.session.commit()
    updates = [c for c in agent.poll().get_json()["commands"] if c["type"] == "config.update"]
    section = updates[-1]["payload"]["admin_repository"]
    assert section["password"] == "admin-Secret-1"
    assert section["env"]["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    fields = _refusal(
        lambda: repo_settings.save_admin_credential(
            box, host, "someone", "admin-Secret-1", now=repository_now()
        )
    )
    assert "REST" in fields["username"][0]


def repository_now():
    from app.models.types import utcnow

    return utcnow()


# --- Test connection: the rpc, answered by a (protocol-level) agent ------------------------


@pytest.fixture
def live(app_factory):
    from tests.conftest import LiveServer
    from tests.factories import make_enrolled_host

    app = app_factory(RM_RPC_WAIT_SECONDS=3, RM_POLL_WAIT_SECONDS=1)
    server = LiveServer(app)
    server.start()
    with app.app_context():
        host, token = make_enrolled_host()
        host_id = host.id
    yield server, app, host_id, token
    server.stop()


def test_test_connection_sends_the_unsaved_settings_sealed_and_returns_the_answer(live):
    server, app, host_id, token = live
    seen = []

    def answer(agent, command):
        seen.append(command)
        section = command["payload"]["repository"]
        reachable = section["env"]["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
        detail = (
            "repository reachable (id 1234abcd)"
            if reachable
            else "authentication refused: SignatureDoesNotMatch"
        )
        agent.post(
            command["payload"]["rpc_id"],
            json={"ok": True, "result": {"ok": reachable, "detail": detail}},
        )

    agent = FakeAgent(server.url, token, answer)
    agent.start()
    try:
        headers = live_headers(app, Role.admin)
        url = f"{server.url}/api/v1/hosts/{host_id}/repository/test"
        good = requests.post(url, json=S3, headers=headers, timeout=15)
        assert good.status_code == 200, good.text
        assert good.json() == {"ok": True, "detail": "repository reachable (id 1234abcd)"}
        wrong = {**S3, "repo_env": {**S3["repo_env"], "AWS_SECRET_ACCESS_KEY": "wrong"}}
        bad = requests.post(url, json=wrong, headers=headers, timeout=15).json()
        assert bad == {"ok": False, "detail": "authentication refused: SignatureDoesNotMatch"}
        refused = requests.post(
            url, json={**S3, "repo_env": {"LD_PRELOAD": "x"}}, headers=headers, timeout=15
        )
        assert refused.status_code == 422
        operator = requests.post(url, json=S3, headers=live_headers(app, Role.operator), timeout=15)
        assert operator.status_code == 403
    finally:
        agent.stop.set()
        agent.join(5)
    assert len(seen) == 2
    with app.app_context():
        # Nothing saved, no secret stored in the clear anywhere, audited by name.
        assert db.session.scalar(select(HostCredential.sealed_backend)) is None
        for call in db.session.scalars(select(RpcCall)):
            assert SECRET_KEY not in json.dumps(call.params)
        for command in db.session.scalars(select(Command)):
            assert SECRET_KEY not in json.dumps(command.payload)
        audited = db.session.scalars(
            select(AuditLog).where(AuditLog.action == "host.repository_tested")
        ).all()
        assert [row.payload["ok"] for row in audited] == [True, False]
        assert all(SECRET_KEY not in json.dumps(row.payload) for row in audited)


def test_test_connection_of_an_offline_host_says_so(live):
    server, app, host_id, _ = live
    with app.app_context():
        host = db.session.get(repository.Host, host_id)
        host.last_seen_at = None
        db.session.commit()
    headers = live_headers(app, Role.admin)
    answer = requests.post(
        f"{server.url}/api/v1/hosts/{host_id}/repository/test",
        json=S3,
        headers=headers,
        timeout=15,
    )
    assert answer.status_code == 409 and answer.json()["error"] == "host_offline"


def test_an_agent_refusal_is_a_failed_test_not_an_error(live):
    server, app, host_id, token = live

    def answer(agent, command):
        agent.post(
            command["payload"]["rpc_id"],
            json={"ok": False, "detail": "refused by this host: LD_PRELOAD is not allowed"},
        )

    agent = FakeAgent(server.url, token, answer)
    agent.start()
    try:
        answer_ = requests.post(
            f"{server.url}/api/v1/hosts/{host_id}/repository/test",
            json=S3,
            headers=live_headers(app, Role.admin),
            timeout=15,
        )
    finally:
        agent.stop.set()
        agent.join(5)
    assert answer_.status_code == 200
    assert answer_.json() == {
        "ok": False,
        "detail": "refused by this host: LD_PRELOAD is not allowed",
    }
