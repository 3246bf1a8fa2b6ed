"""Issue 14 end to end, with a real `serve`, a real agent, real restic, a real SMTP server
(aiosmtpd on loopback, with AUTH) and a real HTTP receiver that checks the webhook's HMAC
signature.

Everything goes through /api/v1, as automation would: an e-mail channel and a webhook are
added and Send test reaches both; a backup of a source path that does not exist fails, the
``backup_failed`` e-mail arrives within 10 s of the job's end (measured from its
``finished_at``), the webhook receives a signed firing notification and the dashboard shows
the critical banner and the host's open alert; the alert is acknowledged and the next good
backup resolves it, with a resolve on both channels. A wrong
repository password fires ``repository_error`` and, at the next backup, a new
``backup_failed`` (again within 10 s); the right password and a good backup resolve both.
Then the agent is stopped: ``agent_offline`` mails once the (lowered, 60 s) threshold has
passed, and the agent's return mails the resolve. Each notification arrives exactly once,
and no secret appears in the server log or in an API answer."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

import pytest
import requests
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.e2e.processes import (
    AgentProcess,
    Api,
    free_port,
    require_restic,
    wait_until,
    write_tree,
)
from tests.receivers import self_signed_certificate

pytestmark = pytest.mark.e2e

REPO_PASSWORD = "e2e-Alerts-Repo-Password-3b9f"
ADMIN_PASSWORD = "admin password for alerts e2e"
WEBHOOK_SECRET = "e2e-Alerts-Webhook-Secret-5a17c0"
SMTP_USER = "rm-alerts"
SMTP_PASSWORD = "e2e-Alerts-Smtp-Password-e2d4"
WRONG_PASSWORD = "e2e-Alerts-Wrong-Password-61aa"
HOSTNAME = "e2e-alerts"
MAIL_FROM = "restic-manager@example.test"
MAIL_TO = "oncall@example.test"
OFFLINE_THRESHOLD = 60  # the smallest threshold a rule accepts
MAIL_BOUND_SECONDS = 10.0  # issue 14: the e-mail arrives within 10 s of the job's end


# --- a real SMTP server ------------------------------------------------------------------------


@dataclass
class Mail:
    arrived: float  # time.time() when the DATA command completed
    mail_from: str
    rcpt_tos: list
    message: email.message.EmailMessage
    encrypted: bool  # the session had switched to TLS (STARTTLS) before the mail

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain", "html"))
        return part.get_content() if part is not None else ""


class Inbox:
    """What an aiosmtpd server on 127.0.0.1 received. It requires STARTTLS (with a
    certificate for 127.0.0.1 the server trusts through SSL_CERT_FILE) and then AUTH as
    ``SMTP_USER`` with ``SMTP_PASSWORD``, so a delivery proves that the sealed password
    reached the sender intact and travelled encrypted."""

    def __init__(self, certificate: Path, key: Path):
        self.mails: list[Mail] = []
        self.refused_logins = 0
        self.certificate = certificate
        self._lock = threading.Lock()
        self.port = free_port()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(certificate, key)
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=tls,
            require_starttls=True,
            authenticator=self._authenticate,
            auth_required=True,
        )

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
        )
        if not ok:
            with self._lock:
                self.refused_logins += 1
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(
            envelope.original_content or envelope.content, policy=email.policy.default
        )
        encrypted = session.ssl is not None
        mail = Mail(time.time(), envelope.mail_from, list(envelope.rcpt_tos), message, encrypted)
        with self._lock:
            self.mails.append(mail)
        return "250 Message accepted for delivery"

    def matching(self, predicate: Callable[[Mail], bool]) -> list[Mail]:
        with self._lock:
            return [mail for mail in self.mails if predicate(mail)]

    def wait_for(self, predicate: Callable[[Mail], bool], timeout: float, what: str) -> Mail:
        found = wait_until(lambda: self.matching(predicate), timeout, what, interval=0.05)
        return found[0]


@pytest.fixture
def inbox(tmp_path):
    # aiosmtpd logs a warning per authenticated session (its own deprecated
    # Session.login_data): noise in a failure's report, so only its errors are kept.
    mail_log = logging.getLogger("mail.log")
    level = mail_log.level
    mail_log.setLevel(logging.ERROR)
    certificate, key = self_signed_certificate(tmp_path)
    box = Inbox(certificate, key)
    box.controller.start()
    yield box
    box.controller.stop()
    mail_log.setLevel(level)


# --- a real webhook receiver ------------------------------------------------------------------


@dataclass
class Delivery:
    arrived: float
    headers: dict
    body: bytes
    problems: list = field(default_factory=list)  # empty: the signature and headers are right

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


def webhook_problems(headers: dict, body: bytes, secret: str, now: float) -> list[str]:
    """What is wrong with a webhook request (issue 14's contract); empty when it is right."""
    problems = []
    if not headers.get("content-type", "").startswith("application/json"):
        problems.append(f"Content-Type is {headers.get('content-type')!r}")
    timestamp = headers.get("x-rm-timestamp", "")
    if not timestamp.isdigit():
        problems.append(f"X-RM-Timestamp is {timestamp!r}, not unix seconds")
    elif abs(now - int(timestamp)) > 300:
        problems.append(f"X-RM-Timestamp {timestamp} is not within 5 minutes of now")
    expected = (
        "sha256="
        + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    if not hmac.compare_digest(headers.get("x-rm-signature", ""), expected):
        problems.append(f"X-RM-Signature {headers.get('x-rm-signature')!r} does not verify")
    if not headers.get("x-rm-delivery"):
        problems.append("X-RM-Delivery is missing")
    try:
        json.loads(body)
    except ValueError:
        problems.append("the body is not JSON")
    return problems


class WebhookReceiver:
    """A plain HTTP server on 127.0.0.1 that records every POST and answers 200 only when
    its signature verifies with the channel's secret (401 otherwise, as a real receiver
    would)."""

    def __init__(self, secret: str):
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {key.lower(): value for key, value in self.headers.items()}
                now = time.time()
                delivery = Delivery(
                    now, headers, body, webhook_problems(headers, body, receiver.secret, now)
                )
                with receiver._lock:
                    receiver.deliveries.append(delivery)
                self.send_response(401 if delivery.problems else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/restic-manager"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def matching(self, predicate: Callable[[Delivery], bool]) -> list[Delivery]:
        with self._lock:
            return [delivery for delivery in self.deliveries if predicate(delivery)]

    def wait_for(self, predicate, timeout: float, what: str) -> Delivery:
        found = wait_until(lambda: self.matching(predicate), timeout, what, interval=0.05)
        return found[0]


@pytest.fixture
def webhook():
    receiver = WebhookReceiver(WEBHOOK_SECRET)
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def agents():
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


# --- helpers -----------------------------------------------------------------------------------


def epoch(iso: str) -> float:
    """An API time ("2026-12-03T20:30:00Z": whole seconds) as unix seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def webhook_event(alert_id: Optional[int], event: str) -> Callable[[Delivery], bool]:
    def wanted(delivery: Delivery) -> bool:
        try:
            payload = delivery.payload
        except ValueError:
            return False
        return payload.get("event") == event and payload.get("alert", {}).get("id") == alert_id

    return wanted


def mail_about(rule: str, event: str, message: Optional[str] = None) -> Callable[[Mail], bool]:
    """The e-mail about ``rule`` on the test's host for ``event`` (firing or resolved) and,
    when given, the alert whose ``message`` its body quotes. Its subject reads
    "[restic-manager] <SEVERITY|RESOLVED> <rule> on <host>: <label>"."""

    def wanted(mail: Mail) -> bool:
        subject = mail.subject
        if f" {rule} on {HOSTNAME}:" not in subject:
            return False
        if message is not None and message not in mail.body:
            return False
        return ("] RESOLVED " in subject) == (event == "resolved")

    return wanted


def get_alert(api: Api, alert_id: int) -> dict:
    return api.get(f"/alerts/{alert_id}").json()


def one_alert(api: Api, host_id: int, rule: str, state: Optional[str] = None) -> dict:
    query = f"/alerts?host_id={host_id}&rule={rule}" + (f"&state={state}" if state else "")
    items = api.get(query).json()["items"]
    assert len(items) == 1, items
    return items[0]


def wait_alert(api: Api, host_id: int, rule: str, state: str, timeout: float) -> dict:
    def found():
        items = api.get(f"/alerts?host_id={host_id}&rule={rule}&state={state}").json()["items"]
        return items[0] if items else None

    return wait_until(found, timeout, f"a {state} {rule} alert on host {host_id}", 0.25)


def wait_delivery_log(api: Api, alert_id: int, channels, events) -> None:
    """The alert's delivery log holds exactly one sent row per channel and event (the
    sender commits a row right after its send, so this can trail the arrival briefly)."""
    expected = sorted((channel, event, "sent") for channel in channels for event in events)

    seen: list = []

    def logged() -> bool:
        rows = api.get(f"/alerts/{alert_id}").json()["deliveries"]
        seen[:] = sorted((row["channel_id"], row["event"], row["state"]) for row in rows)
        return seen == expected

    try:
        wait_until(logged, 15, f"alert {alert_id}'s delivery log", 0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the log: {seen}, expected {expected}") from None


CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def web_login(server, username: str, password: str) -> requests.Session:
    """A browser-like session logged in through the login form."""
    browser = requests.Session()
    page = browser.get(f"{server.url}/login", timeout=10).text
    answer = browser.post(
        f"{server.url}/login",
        data={"csrf_token": CSRF.search(page).group(1), "username": username, "password": password},
        timeout=10,
    )
    assert answer.status_code == 200 and "/logout" in answer.text, answer.status_code
    return browser


def dashboard(browser: requests.Session, server) -> str:
    answer = browser.get(f"{server.url}/", timeout=10)
    assert answer.status_code == 200, answer.status_code
    return answer.text


def set_password(api: Api, host_id: int, repo: Path, password: str) -> None:
    """New repository credentials (the server probes the repository with them)."""
    api.call("PUT", f"/hosts/{host_id}/repository", {"url": str(repo), "password": password})


# --- the test ----------------------------------------------------------------------------------


def test_alert_notifications_end_to_end(start_server, tmp_path, inbox, webhook, agents):
    require_restic()
    began = time.monotonic()
    server = start_server(
        RM_TICKER_SECONDS="2",
        RM_NOTIFY_SECONDS="1",
        RM_POLL_WAIT_SECONDS="5",
        RM_OFFLINE_AFTER_SECONDS="20",
        RM_LOG_FLUSH_SECONDS="2",
        SSL_CERT_FILE=str(inbox.certificate),  # the server trusts the inbox's certificate
    )
    api = Api(server, server.admin_token(password=ADMIN_PASSWORD))

    # An admin lowers the offline threshold, adds an e-mail channel and a webhook, and
    # presses Send test on each: both test notifications really arrive.
    rule = api.call("PUT", "/alert-rules/agent_offline", {"threshold_seconds": OFFLINE_THRESHOLD})
    assert rule["threshold_seconds"] == OFFLINE_THRESHOLD, rule
    mail_channel = api.post(
        "/channels",
        {
            "name": "on-call mail",
            "kind": "email",
            "config": {
                "host": "127.0.0.1",
                "port": inbox.port,
                "security": "starttls",
                "username": SMTP_USER,
                "password": SMTP_PASSWORD,
                "from": MAIL_FROM,
                "to": [MAIL_TO],
            },
            "min_severity": "warning",
            "tags": [],
        },
    )
    hook_channel = api.post(
        "/channels",
        {
            "name": "ops webhook",
            "kind": "webhook",
            "config": {"url": webhook.url, "secret": WEBHOOK_SECRET},
            "min_severity": "warning",
            "tags": [],
        },
    )
    answers = json.dumps([mail_channel, hook_channel, api.get("/channels").json()])
    assert SMTP_PASSWORD not in answers and WEBHOOK_SECRET not in answers
    for channel in (mail_channel, hook_channel):
        tested = api.post(f"/channels/{channel['id']}/test", {}, expect=200)
        assert tested["ok"] is True, tested
    test_mail = inbox.wait_for(lambda m: "Test notification" in m.subject, 10, "the test e-mail")
    assert test_mail.rcpt_tos == [MAIL_TO] and test_mail.mail_from == MAIL_FROM
    test_hook = webhook.wait_for(webhook_event(None, "test"), 10, "the test webhook")
    assert test_hook.problems == [], test_hook.problems

    # A host whose only source path does not exist yet: its backups fail until it does.
    repo = tmp_path / "repo"
    data = tmp_path / "data"
    token = api.post(
        "/enrollment-tokens",
        {
            "hostname": HOSTNAME,
            "repo_url": str(repo),
            "repo_password": REPO_PASSWORD,
            "paths": [str(data)],
        },
    )["token"]
    agent = AgentProcess(tmp_path / "agent-home", tmp_path / "agent.log", own_group=True)
    agent.enroll(server.url, token)
    host_id = next(h["id"] for h in api.get("/hosts").json()["items"] if h["hostname"] == HOSTNAME)
    agent.start()
    agents.append(agent)
    api.wait_repo_ready(host_id)

    channels = (mail_channel["id"], hook_channel["id"])
    timings: dict[str, float] = {}

    def firing_arrives(alert: dict, job: dict, what: str) -> Mail:
        """The alert's firing e-mail, within 10 s of ``job``'s end, and its signed webhook."""
        mail = inbox.wait_for(
            mail_about(alert["rule"], "firing", alert["message"]), 30, f"the {what} e-mail"
        )
        latency = mail.arrived - epoch(job["finished_at"])
        timings[f"{what} e-mail after the job's end"] = latency
        assert latency <= MAIL_BOUND_SECONDS, f"the {what} e-mail came {latency:.1f} s after"
        assert mail.subject.startswith(f"[restic-manager] CRITICAL {alert['rule']} on {HOSTNAME}")
        assert mail.rcpt_tos == [MAIL_TO] and mail.mail_from == MAIL_FROM
        hook = webhook.wait_for(webhook_event(alert["id"], "firing"), 30, f"the {what} webhook")
        assert hook.problems == [], hook.problems
        sent = hook.payload["alert"]
        assert sent["rule"] == alert["rule"] and sent["state"] == "firing", sent
        assert sent["severity"] == "critical" and sent["subject"] == "default", sent
        assert sent["host"] == {"id": host_id, "hostname": HOSTNAME}, sent
        assert sent["message"] == alert["message"], sent
        assert sent["fired_at"] and sent["resolved_at"] is None, sent
        assert mail.message["X-RM-Delivery"] != hook.headers["x-rm-delivery"]  # one per channel
        return mail

    def resolve_arrives(alert: dict, what: str, message: Optional[str] = None) -> Mail:
        """The alert's resolve e-mail and its signed webhook."""
        mail = inbox.wait_for(
            mail_about(alert["rule"], "resolved", message), 60, f"the {what} resolve e-mail"
        )
        hook = webhook.wait_for(
            webhook_event(alert["id"], "resolved"), 30, f"the {what} resolve webhook"
        )
        assert hook.problems == [], hook.problems
        assert hook.payload["alert"]["state"] == "resolved", hook.payload
        assert hook.payload["alert"]["resolved_at"], hook.payload
        return mail

    # 1. A backup of a path that does not exist fails: backup_failed fires, its e-mail
    # arrives within 10 s of the job's end and the webhook gets a signed notification.
    failed = api.wait_job(api.run(host_id, "backup"))
    assert failed["status"] == "failed", failed
    assert "does not exist" in (failed["error"] or ""), failed
    missing = one_alert(api, host_id, "backup_failed", "firing")
    assert missing["severity"] == "critical" and missing["subject"] == "default", missing
    assert missing["job_id"] == failed["id"] and str(data) in missing["message"], missing
    firing_arrives(missing, failed, "backup_failed (missing path)")
    wait_delivery_log(api, missing["id"], channels, ("firing",))
    # ... and it is on the dashboard: the critical banner and the host's alerts column.
    browser = web_login(server, "admin", ADMIN_PASSWORD)
    page = dashboard(browser, server)
    assert "1 critical alert firing" in page
    assert "alertcount--critical" in page

    # 2. Acknowledged through the API, then resolved automatically by the next good backup.
    acknowledged = api.call(
        "POST", f"/alerts/{missing['id']}/acknowledge", {"note": "path restored, re-running"}
    )
    assert acknowledged["state"] == "acknowledged", acknowledged
    assert acknowledged["ack_note"] == "path restored, re-running", acknowledged
    assert one_alert(api, host_id, "backup_failed", "acknowledged")["id"] == missing["id"]
    page = dashboard(browser, server)
    assert "critical alert firing" not in page  # acknowledged: someone is on it
    assert "alertcount--critical" in page  # still open
    write_tree(data, 30, size=300)
    good = api.wait_job(api.run(host_id, "backup"))
    assert good["status"] == "succeeded", good
    resolved = get_alert(api, missing["id"])
    assert resolved["state"] == "resolved" and resolved["resolved_by"] == "automatic", resolved
    assert resolved["acknowledged_at"], resolved
    assert "alertcount--critical" not in dashboard(browser, server)
    mail = resolve_arrives(missing, "backup_failed (missing path)", missing["message"])
    timings["resolve e-mail after the good backup's end"] = mail.arrived - epoch(
        good["finished_at"]
    )

    # 3. A wrong repository password: the probe finds the repository unusable
    # (repository_error) and the next backup fails, a new backup_failed episode whose e-mail
    # also arrives within 10 s. The right password and a good backup resolve both.
    set_password(api, host_id, repo, WRONG_PASSWORD)
    wait_until(
        lambda: api.get(f"/hosts/{host_id}").json()["repo_status"] == "error",
        60,
        "the probe to find the wrong password",
        interval=0.25,
    )
    unusable = wait_alert(api, host_id, "repository_error", "firing", 30)
    inbox.wait_for(mail_about("repository_error", "firing"), 30, "the repository_error e-mail")
    webhook.wait_for(webhook_event(unusable["id"], "firing"), 30, "the repository_error webhook")
    refused = api.wait_job(api.run(host_id, "backup"))
    assert refused["status"] == "failed", refused
    assert "password" in (refused["error"] or "").lower(), refused
    wrong = one_alert(api, host_id, "backup_failed", "firing")
    assert wrong["id"] != missing["id"] and wrong["job_id"] == refused["id"], wrong
    firing_arrives(wrong, refused, "backup_failed (wrong password)")
    set_password(api, host_id, repo, REPO_PASSWORD)
    api.wait_repo_ready(host_id)
    resolve_arrives(unusable, "repository_error")
    good = api.wait_job(api.run(host_id, "backup"))
    assert good["status"] == "succeeded", good
    assert get_alert(api, wrong["id"])["state"] == "resolved"
    resolve_arrives(wrong, "backup_failed (wrong password)", wrong["message"])

    # 4. The agent stops: agent_offline mails once the threshold has passed, not before.
    agent.stop()
    stopped_at = time.time()
    last_seen = epoch(api.get(f"/hosts/{host_id}").json()["last_seen_at"])
    offline_mail = inbox.wait_for(
        mail_about("agent_offline", "firing"), OFFLINE_THRESHOLD + 90, "the agent_offline e-mail"
    )
    offline = one_alert(api, host_id, "agent_offline", "firing")
    assert offline["severity"] == "warning", offline
    assert offline_mail.subject.startswith(f"[restic-manager] WARNING agent_offline on {HOSTNAME}")
    assert "has not polled for" in offline_mail.body, offline_mail.body
    silent = offline_mail.arrived - last_seen
    timings["agent_offline e-mail after the agent's stop"] = offline_mail.arrived - stopped_at
    timings["agent_offline e-mail after its last poll"] = silent
    assert silent >= OFFLINE_THRESHOLD, f"offline fired after {silent:.1f} s of silence"
    hook = webhook.wait_for(webhook_event(offline["id"], "firing"), 30, "the offline webhook")
    assert hook.problems == [] and hook.payload["alert"]["rule"] == "agent_offline"

    # 5. The agent comes back: agent_offline resolves and mails the resolve.
    restarted_at = time.time()
    agent.start()
    back_mail = resolve_arrives(offline, "agent_offline")
    timings["agent_offline resolve e-mail after the restart"] = back_mail.arrived - restarted_at
    back = get_alert(api, offline["id"])
    assert back["state"] == "resolved" and back["resolved_by"] == "automatic", back

    # Exactly once: one e-mail and one webhook per (alert, event), and nothing else.
    time.sleep(3)  # a duplicate would come at the sender's next passes
    episodes = (missing, unusable, wrong, offline)
    expected = [(None, "test")] + [
        (alert["id"], event) for alert in episodes for event in ("firing", "resolved")
    ]
    events = [(d.payload["alert"]["id"], d.payload["event"]) for d in webhook.deliveries]
    assert sorted(events, key=repr) == sorted(expected, key=repr), events
    assert all(delivery.problems == [] for delivery in webhook.deliveries)
    keys = [delivery.headers["x-rm-delivery"] for delivery in webhook.deliveries]
    assert len(set(keys)) == len(keys), keys
    subjects = [mail.subject for mail in inbox.mails]
    assert len(subjects) == len(expected), subjects
    for alert in (missing, wrong):
        for event in ("firing", "resolved"):
            found = inbox.matching(mail_about("backup_failed", event, alert["message"]))
            assert len(found) == 1, subjects
    for rule_name in ("repository_error", "agent_offline"):
        for event in ("firing", "resolved"):
            assert len(inbox.matching(mail_about(rule_name, event))) == 1, subjects
    mail_keys = [mail.message["X-RM-Delivery"] for mail in inbox.mails]
    assert len(set(mail_keys)) == len(mail_keys), mail_keys
    assert inbox.refused_logins == 0
    assert all(mail.encrypted for mail in inbox.mails)

    # Each alert's delivery log says sent, once per channel and event; no secret leaked.
    for alert in episodes:
        wait_delivery_log(api, alert["id"], channels, ("firing", "resolved"))
        detail = json.dumps(get_alert(api, alert["id"]))
        assert SMTP_PASSWORD not in detail and WEBHOOK_SECRET not in detail
    server_log = server.log()
    for secret in (SMTP_PASSWORD, WEBHOOK_SECRET, REPO_PASSWORD, WRONG_PASSWORD):
        assert secret not in server_log, "a secret leaked into the server log"
    timings["whole test"] = time.monotonic() - began
    print("\n".join(f"{what}: {seconds:.1f} s" for what, seconds in timings.items()))
