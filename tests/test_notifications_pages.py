"""Settings → Notifications: the channel pages (list, add and edit per kind, Send test,
delete) against the real notifications service, a real HTTP receiver and a real SMTP server
(aiosmtpd) on loopback."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from app.extensions import db
from app.models import Alert, AuditLog, Notification, NotificationChannel, Role
from app.models.types import utcnow
from app.services import channels_send, notifications
from app.web.settings import notifications as settings_notifications
from tests.factories import form_token, make_host

WEBHOOK_SECRET = "whsec-Page-Test-0123456789abcdef"
SMTP_PASSWORD = "smtp-Page-Secret-pw-42"
NTFY_TOKEN = "tk_pagetestSecretToken0123456789"
APPRISE_URL = "tgram://123456789:AAHpageSecretBotToken/987654"
WEBHOOK_PATH = "/hooks/Secret-Path-Token-77"
SECRETS = (WEBHOOK_SECRET, SMTP_PASSWORD, NTFY_TOKEN, "AAHpageSecretBotToken", "Secret-Path-Token")

LIST = "/settings/notifications"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _form(kind: str, **changes) -> dict:
    """What a person types into the Add form of ``kind``."""
    base = {
        "name": f"ops {kind}",
        "min_severity": "warning",
        "tags": "",
        "remind_every_hours": "24",
        "enabled": "y",
    }
    config = {
        "email": {
            "host": "127.0.0.1",
            "port": "2525",
            "security": "none",
            "username": "",
            "password": "",
            "sender": "rm@example.com",
            "to": "ops@example.com\noncall@example.com",
        },
        "ntfy": {"url": "https://ntfy.sh", "topic": "backups-page-test", "token": NTFY_TOKEN},
        "webhook": {"url": f"http://127.0.0.1:9{WEBHOOK_PATH}", "secret": WEBHOOK_SECRET},
        "apprise": {"url": APPRISE_URL},
    }[kind]
    return {**base, **config, **changes}


def _post(browser, path: str, data: dict, token_page: str = LIST):
    return browser.post(path, data={"csrf_token": form_token(browser, token_page), **data})


def _add(browser, kind: str, **changes):
    path = f"{LIST}/new/{kind}"
    return _post(browser, path, _form(kind, **changes), token_page=path)


def _channel(name: str) -> NotificationChannel:
    db.session.expire_all()
    return db.session.scalar(select(NotificationChannel).where(NotificationChannel.name == name))


def _count() -> int:
    return db.session.scalar(select(func.count()).select_from(NotificationChannel))


def _assert_no_secret(html: str) -> None:
    leaked = [secret for secret in SECRETS if secret in html]
    assert leaked == [], f"secrets in the page: {leaked}"


def _errors_of(html: str, field_id: str) -> str:
    """The text of a field's error list ('' when it has none)."""
    marker = f'id="{field_id}-errors"'
    if marker not in html:
        return ""
    start = html.index(marker)
    return html[start : html.index("</ul>", start)]


@pytest.fixture
def admin(login_as):
    return login_as(Role.admin)


# --- pages render, empty and full ------------------------------------------------------------


def test_empty_list_explains_channels_and_offers_each_kind(admin):
    response = admin.get(LIST)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "No notification channels yet" in html
    assert "A channel is somewhere alerts are sent" in html
    for kind in ("email", "ntfy", "webhook", "apprise"):
        assert f'href="{LIST}/new/{kind}"' in html
    tokens = admin.get("/settings/tokens").get_data(as_text=True)
    assert f'href="{LIST}"' in tokens  # the settings navigation links here


@pytest.mark.parametrize("kind", ["email", "ntfy", "webhook", "apprise"])
def test_each_add_form_renders_with_its_fields_and_help(admin, kind):
    response = admin.get(f"{LIST}/new/{kind}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    fields = {
        "email": ("host", "port", "security", "username", "password", "sender", "to"),
        "ntfy": ("url", "topic", "token"),
        "webhook": ("url", "secret"),
        "apprise": ("url",),
    }[kind]
    for name in (*fields, "name", "min_severity", "tags", "remind_every_hours", "enabled"):
        assert f'name="{name}"' in html, name
    words = {
        "email": "STARTTLS",
        "ntfy": 'value="https://ntfy.sh"',
        "webhook": "X-RM-Signature",
        "apprise": "pover://",
    }[kind]
    assert words in html
    assert "set — leave empty to keep" not in html  # nothing is set yet
    if kind == "apprise":
        for scheme in ("slack://", "discord://", "tgram://", "gotify://", "matrix://"):
            assert scheme in html
        assert '<a href="http' not in html  # the hint names services, it links nowhere


def test_the_apprise_examples_are_urls_apprise_accepts():
    """The hint on the Apprise form shows only URLs the service would take."""
    for url, _service in settings_notifications.APPRISE_EXAMPLES:
        assert channels_send.apprise_accepts(url), url


def test_unknown_kind_goes_back_to_the_list(admin):
    assert admin.get(f"{LIST}/new/pigeon").status_code == 302


@pytest.mark.parametrize("kind", ["email", "ntfy", "webhook", "apprise"])
def test_add_then_list_and_edit_show_no_secret(admin, kind):
    login = {"username": "mailer", "password": SMTP_PASSWORD} if kind == "email" else {}
    added = _add(admin, kind, **login)
    assert added.status_code == 303, added.get_data(as_text=True)
    channel = _channel(f"ops {kind}")
    assert channel is not None and channel.kind == kind and channel.sealed_secrets
    assert "flash--success" in admin.get(added.headers["Location"]).get_data(as_text=True)

    listing = admin.get(LIST).get_data(as_text=True)
    assert f"ops {kind}" in listing and "Send test" in listing and "Delete…" in listing
    assert "No notification channels yet" not in listing
    _assert_no_secret(listing)

    edit = admin.get(f"{LIST}/{channel.id}/edit")
    assert edit.status_code == 200
    html = edit.get_data(as_text=True)
    _assert_no_secret(html)
    assert "set — leave empty to keep" in html
    assert f'value="ops {kind}"' in html
    audit = " ".join(str(row.payload) for row in db.session.scalars(select(AuditLog)))
    _assert_no_secret(audit)


def test_email_add_keeps_every_setting(admin):
    assert _add(admin, "email", tags="prod, db", remind_every_hours="6").status_code == 303
    view = notifications.channel_view(_channel("ops email"))
    assert view["config"]["to"] == ["ops@example.com", "oncall@example.com"]
    assert view["config"]["from"] == "rm@example.com"
    assert view["config"]["port"] == 2525 and view["config"]["security"] == "none"
    assert view["tags"] == ["prod", "db"] and view["remind_every_hours"] == 6
    listing = admin.get(LIST).get_data(as_text=True)
    assert "ops@example.com, oncall@example.com" in listing and "reminders every 6 h" in listing


def test_edit_with_empty_secrets_keeps_them_and_changes_the_rest(app, admin):
    _add(admin, "webhook")
    channel = _channel("ops webhook")
    sealed = channel.sealed_secrets
    path = f"{LIST}/{channel.id}/edit"
    changed = _post(
        admin,
        path,
        _form("webhook", name="ops hook", url="", secret="", min_severity="critical", enabled=""),
        token_page=path,
    )
    assert changed.status_code == 303, changed.get_data(as_text=True)
    channel = _channel("ops hook")
    assert channel.min_severity == "critical" and channel.enabled is False
    assert notifications.open_secrets(app.extensions["secretbox"], channel) == {
        "url": f"http://127.0.0.1:9{WEBHOOK_PATH}",
        "secret": WEBHOOK_SECRET,
    }
    assert sealed
    listing = admin.get(LIST).get_data(as_text=True)
    assert "Critical only" in listing and "disabled" in listing

    new_secret = "a-Brand-New-Signing-Secret-0001"
    _post(admin, path, _form("webhook", name="ops hook", url="", secret=new_secret), path)
    secrets = notifications.open_secrets(app.extensions["secretbox"], _channel("ops hook"))
    assert secrets["secret"] == new_secret
    assert secrets["url"] == f"http://127.0.0.1:9{WEBHOOK_PATH}"


def test_edit_can_remove_an_optional_secret(app, admin):
    _add(admin, "email", username="mailer", password=SMTP_PASSWORD, security="starttls")
    channel = _channel("ops email")
    path = f"{LIST}/{channel.id}/edit"
    edit = admin.get(path).get_data(as_text=True)
    assert "Remove the saved password" in edit and SMTP_PASSWORD not in edit
    removed = _post(admin, path, _form("email", username="", password="", remove_secret="y"), path)
    assert removed.status_code == 303, removed.get_data(as_text=True)
    channel = _channel("ops email")
    assert notifications.open_secrets(app.extensions["secretbox"], channel) == {}
    assert notifications.channel_view(channel)["secrets_set"] == []
    assert "Remove the saved password" not in admin.get(path).get_data(as_text=True)


def test_toggle_and_delete_with_confirmation(admin):
    _add(admin, "ntfy")
    channel_id = _channel("ops ntfy").id
    assert _post(admin, f"{LIST}/{channel_id}/enabled", {}).status_code == 303
    assert _channel("ops ntfy").enabled is False
    html = admin.get(LIST).get_data(as_text=True)
    assert "Delete channel <strong>ops ntfy</strong>?" in html  # behind a <details> confirmation
    deleted = _post(admin, f"{LIST}/{channel_id}/delete", {})
    assert deleted.status_code == 303
    assert _count() == 0
    assert "deleted" in admin.get(deleted.headers["Location"]).get_data(as_text=True)
    assert admin.get(f"{LIST}/{channel_id}/edit").status_code == 404
    assert _post(admin, f"{LIST}/{channel_id}/test", {}).status_code == 404


# --- bad input: field errors, nothing changes ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "changes", "field_id", "words"),
    [
        ("email", {"port": "99999999999999999999999"}, "port", "1 to 65535"),
        ("email", {"port": "five"}, "port", "whole number"),
        ("email", {"security": "ssl3"}, "security", "Security must be one of"),
        ("email", {"to": "not-an-address"}, "to", "not an e-mail address"),
        ("email", {"sender": ""}, "sender", "Sender"),
        ("email", {"username": "mailer"}, "password", "password"),
        ("apprise", {"url": "nosuchservice://abc/def"}, "url", "Apprise does not recognise"),
        ("webhook", {"url": "ftp://example.com/x"}, "url", "http:// or https://"),
        ("webhook", {"secret": "short"}, "secret", "at least 16"),
        ("ntfy", {"topic": "bad topic!"}, "topic", "Topic may contain"),
        ("ntfy", {"remind_every_hours": "100000"}, "remind_every_hours", "between 0"),
        ("ntfy", {"min_severity": "apocalyptic"}, "min_severity", "Minimum severity"),
        ("ntfy", {"tags": "bad/tag"}, "tags", "Tag"),
        ("ntfy", {"name": ""}, "name", "Name"),
    ],
)
def test_bad_input_gives_field_errors_and_adds_nothing(admin, kind, changes, field_id, words):
    response = _add(admin, kind, **changes)
    assert response.status_code == 422, response.status_code
    html = response.get_data(as_text=True)
    errors = _errors_of(html, field_id)
    assert words in errors, (field_id, html[:3000])
    assert "Nothing was saved" in html
    _assert_no_secret(html)  # a refused form does not echo the secrets either
    if kind in ("webhook", "apprise") and "url" in changes:
        assert changes["url"] not in html  # a secret URL is not echoed, even a refused one
        assert 'name="url" spellcheck="false" type="text" value=""' in html  # readable as typed
    if kind != "email":  # the others had a secret typed in: the page says to type it again
        assert "Secrets are never sent back to the browser: type" in html
    assert _count() == 0


def test_nul_byte_is_refused_before_anything_is_stored(admin):
    response = _add(admin, "ntfy", topic="back\x00ups")
    assert response.status_code == 422
    assert "NUL" in response.get_data(as_text=True)
    assert _count() == 0


def test_a_taken_name_is_named_under_the_name_field(admin):
    _add(admin, "ntfy")
    response = _add(admin, "apprise", name="ops ntfy")
    assert response.status_code == 409
    assert "already a channel named" in _errors_of(response.get_data(as_text=True), "name")
    assert _count() == 1


def test_refused_edit_changes_nothing(admin):
    _add(admin, "email")
    channel = _channel("ops email")
    before = (dict(channel.config), channel.sealed_secrets, channel.name)
    path = f"{LIST}/{channel.id}/edit"
    response = _post(
        admin, path, _form("email", name="renamed", port="70000", password="x"), token_page=path
    )
    assert response.status_code == 422
    assert "1 to 65535" in _errors_of(response.get_data(as_text=True), "port")
    channel = _channel("ops email")
    assert channel is not None and _channel("renamed") is None
    assert (dict(channel.config), channel.sealed_secrets, channel.name) == before


# --- roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.viewer, Role.operator])
def test_only_admins_reach_the_pages(app, login_as, role):
    admin = login_as(Role.admin)
    _add(admin, "ntfy")
    channel_id = _channel("ops ntfy").id
    browser = login_as(role)
    for path in (LIST, f"{LIST}/new/email", f"{LIST}/{channel_id}/edit"):
        assert browser.get(path).status_code == 403, path
    token = form_token(browser, "/settings/tokens")
    for path in (
        f"{LIST}/new/ntfy",
        f"{LIST}/{channel_id}/edit",
        f"{LIST}/{channel_id}/enabled",
        f"{LIST}/{channel_id}/test",
        f"{LIST}/{channel_id}/delete",
    ):
        refused = browser.post(path, data={"csrf_token": token, **_form("ntfy", name="x")})
        assert refused.status_code == 403, path
    assert _count() == 1 and _channel("ops ntfy").enabled is True
    tokens = browser.get("/settings/tokens").get_data(as_text=True)
    assert f'href="{LIST}"' not in tokens  # no link to a page they cannot open


# --- Send test: the real result --------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers ``status``."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(
                    ({key.lower(): value for key, value in self.headers.items()}, body)
                )
                answer = b"receiver exploded" if receiver.status >= 400 else b"ok"
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{WEBHOOK_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    started = []

    def start(status=200):
        started.append(Receiver(status))
        return started[-1]

    yield start
    for server in started:
        server.close()


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            (
                envelope.rcpt_tos,
                email.message_from_bytes(envelope.content, policy=email.policy.default),
            )
        )
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


def _send_test(browser, channel_id: int):
    response = _post(browser, f"{LIST}/{channel_id}/test", {})
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_send_test_to_a_real_webhook_shows_success(admin, receiver):
    hook = receiver(200)
    _add(admin, "webhook", url=hook.url)
    html = _send_test(admin, _channel("ops webhook").id)
    assert "notify-result--ok" in html and "Test sent through “ops webhook”" in html
    _assert_no_secret(html)
    assert len(hook.requests) == 1
    headers, body = hook.requests[0]
    expected = hmac.new(
        WEBHOOK_SECRET.encode(), headers["x-rm-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["x-rm-signature"] == f"sha256={expected}"
    assert json.loads(body)["event"] == "test"
    assert 'data-page-address="/settings/notifications"' in html  # a reload sends nothing


def test_send_test_shows_the_receivers_http_500(admin, receiver):
    hook = receiver(500)
    _add(admin, "webhook", url=hook.url)
    html = _send_test(admin, _channel("ops webhook").id)
    assert "notify-result--failed" in html and "500" in html
    assert "test failed" in html  # also in the channel's row
    _assert_no_secret(html)
    assert len(hook.requests) == 1


def test_send_test_to_a_closed_port_shows_the_refused_connection(admin):
    _add(admin, "webhook", url=f"http://127.0.0.1:{_free_port()}{WEBHOOK_PATH}")
    html = _send_test(admin, _channel("ops webhook").id)
    assert "notify-result--failed" in html and "refused" in html
    _assert_no_secret(html)


def test_send_test_mails_through_a_real_smtp_server(admin, smtp):
    _add(admin, "email", port=str(smtp.port))
    html = _send_test(admin, _channel("ops email").id)
    assert "notify-result--ok" in html, html[:2000]
    assert len(smtp.messages) == 1
    recipients, message = smtp.messages[0]
    assert recipients == ["ops@example.com", "oncall@example.com"]
    assert "Test notification" in str(message["Subject"])


def test_send_test_to_an_smtp_port_nobody_listens_on(admin):
    _add(admin, "email", port=str(_free_port()))
    html = _send_test(admin, _channel("ops email").id)
    assert "notify-result--failed" in html and "refused" in html


def test_list_shows_each_channels_last_delivery(admin, app):
    """The last delivery attempt of each channel (here: a failed one) is on the list."""
    _add(admin, "ntfy")
    channel = _channel("ops ntfy")
    host = make_host()
    alert = Alert(rule="backup_failed", host_id=host.id, severity="critical", message="m")
    db.session.add(alert)
    db.session.flush()
    db.session.add(
        Notification(
            idempotency_key="k1",
            alert_id=alert.id,
            channel_id=channel.id,
            event="firing",
            state="pending",
            attempts=1,
            last_attempt_at=utcnow(),
            last_result="connection refused to ntfy.example.com:443",
        )
    )
    db.session.commit()
    html = admin.get(LIST).get_data(as_text=True)
    assert "firing pending" in html and "connection refused to ntfy.example.com:443" in html


def test_the_settings_tabs_are_the_same_on_every_settings_page(admin):
    pages = {
        "/settings/tokens": "API tokens",
        LIST: "Notifications",
        "/settings/alert-rules": "Alert rules",
    }
    for path, label in pages.items():
        html = admin.get(path).get_data(as_text=True)
        tabs = html[
            html.index('aria-label="Settings"') : html.index(
                "</nav>", html.index('aria-label="Settings"')
            )
        ]
        for other in (*pages.values(), "API reference"):
            assert f">{other}</a>" in tabs, (path, other)
        assert f'aria-current="page">{label}</a>' in tabs, path
        assert tabs.count("aria-current") == 1
