"""/api/v1 notification channels: CRUD, roles, the real test send, and no secret ever echoed."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from app.api.openapi import build_document
from app.extensions import db
from app.models import AuditLog, Notification, NotificationChannel, Role
from app.models.types import utcnow
from app.services import alerts
from tests.factories import make_host
from tests.test_openapi import Conformance

API = "/api/v1"
BIG = 2**64 + 1
BASE_URL = "https://rm.example.com"
HMAC_KEY = "hmac-key-Do-Not-Echo-7f3a9c"
URL_TOKEN = "PathTokenDoNotEcho42"
QUERY_TOKEN = "QueryTokenDoNotEcho77"
SMTP_PASSWORD = "smtp-Password-Do-Not-Echo"
NTFY_TOKEN = "tk_NtfyTokenDoNotEcho"
SECRETS = (HMAC_KEY, URL_TOKEN, QUERY_TOKEN, SMTP_PASSWORD, NTFY_TOKEN)


@pytest.fixture
def app(app_factory):
    app = app_factory(RM_BASE_URL=BASE_URL)
    with app.app_context():
        yield app


class Receiver:
    """A real HTTP server on 127.0.0.1 that records each POST and answers ``status``."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[tuple[str, dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append((self.path, dict(self.headers.items()), body))
                answer = b"ok" if receiver.status < 300 else b"receiver is broken today"
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{URL_TOKEN}?key={QUERY_TOKEN}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.stop()


def _webhook(url: str, **fields) -> dict:
    return {
        "name": "ops",
        "kind": "webhook",
        "config": {"url": url, "secret": HMAC_KEY},
        "min_severity": "warning",
        "tags": [],
        **fields,
    }


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) >= {"error", "message"}, body
    if code:
        assert body["error"] == code, body
    return body


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


def _audit_text() -> str:
    db.session.expire_all()
    rows = db.session.scalars(select(AuditLog).order_by(AuditLog.id))
    return json.dumps([[row.action, row.payload] for row in rows])


def _counts():
    db.session.expire_all()
    return tuple(
        db.session.scalar(select(func.count()).select_from(model))
        for model in (NotificationChannel, Notification, AuditLog)
    )


def _stored_channel(channel_id: int) -> NotificationChannel:
    db.session.expire_all()
    return db.session.get(NotificationChannel, channel_id)


# --- CRUD ------------------------------------------------------------------------------------


def test_create_read_change_delete_a_webhook_channel(api, receiver):
    admin = api(Role.admin)
    created = admin.post(f"{API}/channels", json=_webhook(receiver.hook_url))
    assert created.status_code == 201, created.get_json()
    channel = created.get_json()
    assert set(channel) >= {"id", "name", "kind", "min_severity", "enabled"}
    assert channel["name"] == "ops" and channel["kind"] == "webhook"
    assert channel["min_severity"] == "warning" and channel["enabled"] is True
    assert channel["tags"] == [] and channel["remind_every_hours"] == 24
    assert channel["secrets_set"] == ["secret", "url"]
    assert channel["config"]["url"] == f"http://127.0.0.1:{receiver.port}/…"
    _no_secret(created.get_data(as_text=True))
    row = _stored_channel(channel["id"])
    _no_secret(json.dumps(row.config))  # only the sealed column holds them
    assert row.sealed_secrets and HMAC_KEY.encode() not in row.sealed_secrets

    listing = admin.get(f"{API}/channels")
    assert [item["id"] for item in listing.get_json()["items"]] == [channel["id"]]
    one = admin.get(f"{API}/channels/{channel['id']}")
    assert one.get_json() == channel
    _no_secret(listing.get_data(as_text=True) + one.get_data(as_text=True))

    patched = admin.patch(
        f"{API}/channels/{channel['id']}",
        json={"min_severity": "critical", "tags": ["prod", "db"], "remind_every_hours": 0},
    )
    assert patched.status_code == 200, patched.get_json()
    body = patched.get_json()
    assert body["min_severity"] == "critical" and body["tags"] == ["prod", "db"]
    assert body["remind_every_hours"] == 0 and body["secrets_set"] == ["secret", "url"]
    renamed = admin.patch(f"{API}/channels/{channel['id']}", json={"name": "pager"}).get_json()
    assert renamed["name"] == "pager" and renamed["tags"] == ["prod", "db"]  # the rest kept

    actions = [row.action for row in db.session.scalars(select(AuditLog))]
    assert actions.count("channel.created") == 1 and actions.count("channel.updated") == 2

    deleted = admin.delete(f"{API}/channels/{channel['id']}")
    assert deleted.status_code == 204 and deleted.get_data() == b""
    _error(admin.get(f"{API}/channels/{channel['id']}"), 404, "not_found")
    _error(admin.delete(f"{API}/channels/{channel['id']}"), 404, "not_found")
    assert "channel.deleted" in _audit_text()
    _no_secret(_audit_text())


def test_email_and_ntfy_channels_keep_their_secrets(api):
    admin = api(Role.admin)
    email = admin.post(
        f"{API}/channels",
        json={
            "name": "mail",
            "kind": "email",
            "config": {
                "host": "smtp.example.com",
                "port": 587,
                "security": "starttls",
                "username": "alerts",
                "password": SMTP_PASSWORD,
                "from": "rm@example.com",
                "to": ["ops@example.com", "oncall@example.com"],
            },
            "min_severity": "critical",
        },
    )
    assert email.status_code == 201, email.get_json()
    body = email.get_json()
    assert body["config"]["to"] == ["ops@example.com", "oncall@example.com"]
    assert body["config"]["host"] == "smtp.example.com" and body["secrets_set"] == ["password"]
    ntfy = admin.post(
        f"{API}/channels",
        json={
            "name": "phone",
            "kind": "ntfy",
            "config": {
                "url": "https://ntfy.example.com",
                "topic": "rm-alerts",
                "token": NTFY_TOKEN,
            },
        },
    )
    assert ntfy.status_code == 201, ntfy.get_json()
    assert ntfy.get_json()["config"]["topic"] == "rm-alerts"
    assert ntfy.get_json()["secrets_set"] == ["token"]
    # A change that leaves the password out keeps it.
    kept = admin.patch(
        f"{API}/channels/{body['id']}", json={"config": {"to": ["ops@example.com"]}}
    ).get_json()
    assert kept["secrets_set"] == ["password"] and kept["config"]["to"] == ["ops@example.com"]
    everything = (
        email.get_data(as_text=True)
        + ntfy.get_data(as_text=True)
        + json.dumps(kept)
        + api(Role.admin).get(f"{API}/channels").get_data(as_text=True)
        + _audit_text()
    )
    _no_secret(everything)
    # null removes an optional secret (with the user name it belonged to); "" keeps it.
    removed = admin.patch(
        f"{API}/channels/{body['id']}", json={"config": {"username": "", "password": None}}
    )
    assert removed.status_code == 200, removed.get_json()
    assert removed.get_json()["secrets_set"] == []
    untokened = admin.patch(
        f"{API}/channels/{ntfy.get_json()['id']}", json={"config": {"token": None}}
    ).get_json()
    assert untokened["secrets_set"] == [] and untokened["config"]["topic"] == "rm-alerts"


def test_roles(api, receiver):
    admin = api(Role.admin)
    channel = admin.post(f"{API}/channels", json=_webhook(receiver.hook_url)).get_json()
    for role in (Role.viewer, Role.operator):
        client = api(role)
        _error(client.get(f"{API}/channels"), 403)  # not even where alerts go
        _error(client.get(f"{API}/channels/{channel['id']}"), 403)
        before = _counts()
        _error(client.post(f"{API}/channels", json=_webhook(receiver.hook_url, name="x")), 403)
        _error(client.patch(f"{API}/channels/{channel['id']}", json={"enabled": False}), 403)
        _error(client.delete(f"{API}/channels/{channel['id']}"), 403)
        _error(client.post(f"{API}/channels/{channel['id']}/test"), 403)
        assert _counts() == before
    assert receiver.requests == []
    _error(admin.get(f"{API}/channels/999999"), 404, "not_found")


def test_a_taken_name_is_409(api, receiver):
    admin = api(Role.admin)
    first = admin.post(f"{API}/channels", json=_webhook(receiver.hook_url)).get_json()
    other = admin.post(f"{API}/channels", json=_webhook(receiver.hook_url, name="other"))
    before = _counts()
    _error(admin.post(f"{API}/channels", json=_webhook(receiver.hook_url)), 409, "name_taken")
    _error(
        admin.patch(f"{API}/channels/{other.get_json()['id']}", json={"name": "ops"}),
        409,
        "name_taken",
    )
    assert _counts() == before
    assert _stored_channel(first["id"]).name == "ops"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"extra": 1}, "extra"),
        ({"kind": "carrier-pigeon"}, "kind"),
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": 7}, "name"),
        ({"min_severity": "loud"}, "min_severity"),
        ({"tags": "prod"}, "tags"),
        ({"tags": ["not a tag"]}, "tags"),
        ({"tags": [1]}, "tags"),
        ({"enabled": "yes"}, "enabled"),
        ({"remind_every_hours": BIG}, "remind_every_hours"),
        ({"remind_every_hours": 721}, "remind_every_hours"),
        ({"remind_every_hours": "24"}, "remind_every_hours"),
        ({"remind_every_hours": 1.5}, "remind_every_hours"),
        ({"config": "https://x"}, "config"),
        ({"config": {"url": "ftp://example.com/x", "secret": HMAC_KEY}}, "config.url"),
        ({"config": {"url": "http://example.com/", "secret": "short"}}, "config.secret"),
        ({"config": {"url": "http://example.com/", "secret": HMAC_KEY, "x": 1}}, "config.x"),
        ({"config": {"url": "http://example.com/", "secret": 5}}, "config.secret"),
        ({"config": {"url": "http://example.com/\x00", "secret": HMAC_KEY}}, "config.url"),
        ({"config": {"url": {"a": {"b": {"c": {}}}}, "secret": HMAC_KEY}}, "config.url"),
    ],
)
def test_bad_channels_are_422_and_change_nothing(api, change, field):
    admin = api(Role.admin)
    body = _webhook("http://example.com/hook", **change)
    before = _counts()
    refused = _error(admin.post(f"{API}/channels", json=body), 422)
    assert list(refused["fields"]) == [field], refused
    _no_secret(json.dumps(refused))
    assert _counts() == before


@pytest.mark.parametrize(
    "change, field",
    [
        ({"kind": "email"}, "kind"),
        ({"config": {"port": 25}}, "config.port"),
        ({"config": {"secret": "short"}}, "config.secret"),
        ({"enabled": None}, "enabled"),
        ({"unknown": True}, "unknown"),
        ({"remind_every_hours": -1}, "remind_every_hours"),
    ],
)
def test_bad_changes_are_422_and_change_nothing(api, receiver, change, field):
    admin = api(Role.admin)
    channel = admin.post(f"{API}/channels", json=_webhook(receiver.hook_url)).get_json()
    before = _counts()
    refused = _error(admin.patch(f"{API}/channels/{channel['id']}", json=change), 422)
    assert list(refused["fields"]) == [field], refused
    assert _counts() == before
    assert admin.get(f"{API}/channels/{channel['id']}").get_json() == channel


def test_bodies_of_the_wrong_kind(api):
    admin = api(Role.admin)
    before = _counts()
    _error(admin.post(f"{API}/channels", data="name=ops"), 415, "unsupported_media_type")
    _error(admin.post(f"{API}/channels", json=[1]), 400, "invalid_json")
    nested = "[" * 100_000 + "]" * 100_000
    _error(admin.post(f"{API}/channels", data=nested, content_type="application/json"), 400)
    _error(admin.get(f"{API}/channels/{BIG}"), 404)
    _error(admin.patch(f"{API}/channels/{2**31 - 1}", json={"enabled": True}), 404)
    assert _counts() == before


# --- the test send ---------------------------------------------------------------------------


def test_send_test_reaches_a_real_webhook_signed(api, receiver):
    admin = api(Role.admin)
    channel = admin.post(f"{API}/channels", json=_webhook(receiver.hook_url)).get_json()
    answer = admin.post(f"{API}/channels/{channel['id']}/test")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["ok"] is True, answer.get_json()
    assert "200" in answer.get_json()["detail"]
    _no_secret(answer.get_data(as_text=True))

    ((path, headers, body),) = receiver.requests
    assert path == f"/hook/{URL_TOKEN}?key={QUERY_TOKEN}"
    assert headers["Content-Type"] == "application/json"
    timestamp = headers["X-RM-Timestamp"]
    expected = hmac.new(HMAC_KEY.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    assert headers["X-RM-Signature"] == "sha256=" + expected.hexdigest()
    assert headers["X-RM-Delivery"]
    payload = json.loads(body)
    assert payload["event"] == "test"
    assert payload["alert"]["url"] == f"{BASE_URL}/settings/notifications"
    tested = [row for row in db.session.scalars(select(AuditLog)) if row.action == "channel.tested"]
    assert len(tested) == 1 and tested[0].payload["ok"] is True
    _no_secret(_audit_text())


def test_send_test_reports_a_failing_receiver(api):
    admin = api(Role.admin)
    broken = Receiver(status=500)
    gone = Receiver()
    gone.stop()  # nothing listens on its port any more
    try:
        channel = admin.post(f"{API}/channels", json=_webhook(broken.hook_url)).get_json()
        answer = admin.post(f"{API}/channels/{channel['id']}/test")
        assert answer.status_code == 200
        assert answer.get_json()["ok"] is False
        assert "HTTP 500" in answer.get_json()["detail"]
        assert "receiver is broken today" in answer.get_json()["detail"]
        assert len(broken.requests) == 1
    finally:
        broken.stop()
    channel = admin.post(f"{API}/channels", json=_webhook(gone.hook_url, name="gone")).get_json()
    refused = admin.post(f"{API}/channels/{channel['id']}/test")
    assert refused.status_code == 200 and refused.get_json()["ok"] is False
    assert "refused" in refused.get_json()["detail"]
    _no_secret(answer.get_data(as_text=True) + refused.get_data(as_text=True) + _audit_text())


def test_a_disabled_channel_can_still_be_tested(api, receiver):
    admin = api(Role.admin)
    channel = admin.post(
        f"{API}/channels", json=_webhook(receiver.hook_url, enabled=False)
    ).get_json()
    assert channel["enabled"] is False
    assert admin.post(f"{API}/channels/{channel['id']}/test").get_json()["ok"] is True
    assert len(receiver.requests) == 1
    _error(admin.post(f"{API}/channels/999999/test"), 404, "not_found")


# --- channels and alerts ---------------------------------------------------------------------


def test_a_channel_made_here_gets_the_alerts_outbox(api, receiver):
    admin = api(Role.admin)
    channel = admin.post(
        f"{API}/channels", json=_webhook(receiver.hook_url, tags=["prod"])
    ).get_json()
    prod = make_host("web-1", tags=["prod"], enrolled_at=utcnow())
    lab = make_host("lab-1", tags=["lab"], enrolled_at=utcnow())
    fired = []
    for host in (prod, lab):
        context = alerts.Context(utcnow(), host_ids=[host.id])
        fired.append(alerts.fire(context, host, "backup_failed", "default", "it failed").id)
    db.session.commit()
    on_prod = admin.get(f"{API}/alerts/{fired[0]}").get_json()["deliveries"]
    assert [(row["channel_id"], row["channel_name"]) for row in on_prod] == [(channel["id"], "ops")]
    assert admin.get(f"{API}/alerts/{fired[1]}").get_json()["deliveries"] == []  # tag filter
    assert admin.delete(f"{API}/channels/{channel['id']}").status_code == 204
    assert admin.get(f"{API}/alerts/{fired[0]}").get_json()["deliveries"] == []


# --- the answers match the OpenAPI document --------------------------------------------------


def test_channel_answers_match_the_document(app, api, receiver):
    conform = Conformance(build_document(app))
    admin = api(Role.admin)

    def call(method, template, path, **kwargs):
        return conform.check(admin.open(path, method=method, **kwargs), method, template)

    created = call("POST", "/api/v1/channels", f"{API}/channels", json=_webhook(receiver.hook_url))
    channel_id = created.get_json()["id"]
    one = f"{API}/channels/{channel_id}"
    call("POST", "/api/v1/channels", f"{API}/channels", json=_webhook(receiver.hook_url))  # 409
    call("POST", "/api/v1/channels", f"{API}/channels", json={"name": 5})  # 422
    call("GET", "/api/v1/channels", f"{API}/channels")
    call("GET", "/api/v1/channels/{channel_id}", one)
    call("PATCH", "/api/v1/channels/{channel_id}", one, json={"tags": ["prod"]})
    call("POST", "/api/v1/channels/{channel_id}/test", f"{one}/test")
    call("DELETE", "/api/v1/channels/{channel_id}", one)
    call("GET", "/api/v1/channels/{channel_id}", one)  # 404
    assert len(conform.checked) == 9
