"""Sending one notification through one channel: webhook, e-mail, ntfy, an Apprise URL.

Pure transport: no database, no secret box. Each sender takes the channel's clear config,
its opened secrets and a :class:`Message`, waits at most :data:`TIMEOUT_SECONDS` for the
other side, and returns a :class:`SendResult` whose ``detail`` says what happened in words
an operator can act on ("connection refused to 127.0.0.1:2525", "HTTP 500 from the
webhook: ..."). Nothing raises out of :func:`send`, and no detail carries a secret: every
detail is scrubbed of the channel's secret values and of the secret parts of its URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Optional
from urllib.parse import quote, unquote, urlsplit

import apprise
import requests

TIMEOUT_SECONDS = 10
DETAIL_LENGTH = 1000  # Notification.last_result
BODY_ECHO = 200  # how much of a refusing receiver's answer the detail repeats
USER_AGENT = "restic-manager"
REDACTED = "[redacted]"

# Apprise logs service URLs (which may hold tokens) at some levels. Its records do not
# reach the server's log: we read what a call logged from the call's own result
# (AppriseResult.logs) and scrub it before it becomes a detail.
_apprise_logger = logging.getLogger("apprise")
_apprise_logger.propagate = False
_apprise_logger.setLevel(logging.DEBUG)  # so a call captures the cause of a failure
_apprise_logger.addHandler(logging.NullHandler())


class _NoRequestLines(logging.Filter):
    """urllib3 logs each request's path and query at DEBUG: a webhook's or a service's
    token would reach the server's log at RM_LOG_LEVEL=DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("urllib3.connectionpool").addFilter(_NoRequestLines())


@dataclass(frozen=True)
class SendResult:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Message:
    """One notification, rendered once and sent in each channel's own form."""

    event: str  # firing | resolved | reminder | test
    severity: str
    title: str  # the e-mail subject, the ntfy/Apprise title
    text: str  # plain-text body
    payload: dict  # the webhook's JSON body ({"alert": {...}, "event": ...})
    idempotency_key: str
    url: Optional[str] = None


def send(kind: str, config: dict, secrets: dict, message: Message) -> SendResult:
    """Send ``message`` through a channel of ``kind``; never raises."""
    sender = {
        "webhook": send_webhook,
        "email": send_email,
        "ntfy": send_ntfy,
        "apprise": send_apprise,
    }.get(kind)
    if sender is None:
        return SendResult(False, f"Unknown channel kind {kind!r}.")
    try:
        result = sender(config, secrets, message)
    except Exception as exc:  # a bug or an odd library error must not stop the sender
        result = SendResult(False, f"Unexpected error: {type(exc).__name__}: {exc}")
    return SendResult(result.ok, scrub(result.detail, secret_words(kind, secrets)))


# --- keeping secrets out of details ----------------------------------------------------------


def url_secret_parts(url: str) -> list[str]:
    """The parts of ``url`` that may be secret: userinfo, path segments, query values, and
    the host of a non-HTTP (Apprise) URL, where the host is often a token."""
    parts = [url]
    try:
        split = urlsplit(url)
    except ValueError:
        return parts
    if split.username:
        parts += [split.username, unquote(split.username)]
    if split.password:
        parts += [split.password, unquote(split.password)]
    if split.scheme not in ("http", "https") and split.hostname:
        parts.append(split.hostname)
    path = split.path.strip("/")
    if path:
        parts += [path, unquote(path)]
        parts += [segment for segment in path.split("/") if len(segment) >= 6]
    if split.query:
        parts.append(split.query)
        for pair in split.query.split("&"):
            value = pair.partition("=")[2]
            if len(value) >= 4:
                parts += [value, unquote(value)]
    return parts


def secret_words(kind: str, secrets: dict) -> list[str]:
    words = []
    for name, value in secrets.items():
        if not isinstance(value, str) or not value:
            continue
        words.append(value)
        if name == "url":
            words += url_secret_parts(value)
    return words


def scrub(text: str, words: list[str]) -> str:
    """``text`` with every secret word replaced, longest first, cut to the column's size."""
    for word in sorted({w for w in words if w and len(w) >= 4}, key=len, reverse=True):
        text = text.replace(word, REDACTED)
    text = text.replace("\x00", "")
    return text if len(text) <= DETAIL_LENGTH else text[: DETAIL_LENGTH - 1] + "…"


def redacted_url(url: str) -> str:
    """What may be shown of a secret URL: ``scheme://host[:port]/…`` for HTTP(S), only
    ``scheme://…`` for an Apprise URL (its host is often a token)."""
    try:
        split = urlsplit(url)
        port = split.port if split.scheme in ("http", "https") else None
    except ValueError:
        return "…"
    if split.scheme in ("http", "https") and split.hostname:
        host = f"[{split.hostname}]" if ":" in split.hostname else split.hostname
        shown = f"{split.scheme}://{host}{f':{port}' if port else ''}"
        return shown + ("/…" if split.path.strip("/") or split.query else "")
    return f"{split.scheme}://…" if split.scheme else "…"


def _where(host: str, port) -> str:
    return f"{host}:{port}" if port else host


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _network_error(exc: BaseException, where: str) -> str:
    """A network failure in words, from the exception chain (never requests' text, which
    repeats the URL)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError):
            return f"connection refused to {where}"
        if isinstance(exc, (socket.timeout, TimeoutError, requests.Timeout)):
            return f"timed out after {TIMEOUT_SECONDS} s talking to {where}"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {where.rsplit(':', 1)[0]}: {exc.strerror or exc}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS certificate of {where} not trusted: {exc.verify_message or exc.reason}"
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed with {where}: {exc.reason or exc}"
        if isinstance(exc, ConnectionResetError):
            return f"connection reset by {where}"
        if isinstance(exc, OSError) and exc.strerror:
            return f"network error talking to {where}: {exc.strerror}"
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args else None)
        if not isinstance(exc, BaseException):
            break
    return f"could not reach {where}"


# --- webhook ---------------------------------------------------------------------------------


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`` (docs/alerts.md)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def send_webhook(config: dict, secrets: dict, message: Message) -> SendResult:
    url = secrets["url"]
    split = urlsplit(url)
    where = _where(split.hostname or "?", split.port)
    body = json.dumps(message.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-RM-Timestamp": timestamp,
        "X-RM-Signature": webhook_signature(secrets["secret"], timestamp, body),
        "X-RM-Delivery": message.idempotency_key,
    }
    try:
        response = requests.post(
            url, data=body, headers=headers, timeout=TIMEOUT_SECONDS, allow_redirects=False
        )
    except requests.RequestException as exc:
        return SendResult(False, _sentence(_network_error(exc, where)))
    with response:
        answer = response.text[:BODY_ECHO].strip() if response.content else ""
    status = response.status_code
    if 200 <= status < 300:
        return SendResult(True, f"HTTP {status} from the webhook.")
    if 300 <= status < 400:
        return SendResult(
            False, f"HTTP {status} from the webhook: redirects are not followed; use the final URL."
        )
    return SendResult(False, f"HTTP {status} from the webhook" + (f": {answer}" if answer else "."))


# --- e-mail ----------------------------------------------------------------------------------


def email_message(config: dict, message: Message) -> EmailMessage:
    email = EmailMessage()
    email["Subject"] = message.title
    email["From"] = config["from"]
    email["To"] = ", ".join(config["to"])
    email["Date"] = formatdate(usegmt=True)
    email["Message-ID"] = f"<{message.idempotency_key}@restic-manager>"
    email["X-RM-Delivery"] = message.idempotency_key
    email["Auto-Submitted"] = "auto-generated"
    email.set_content(message.text)
    return email


def send_email(config: dict, secrets: dict, message: Message) -> SendResult:
    host, port, security = config["host"], config["port"], config["security"]
    where = _where(host, port)
    email = email_message(config, message)
    context = ssl.create_default_context()
    try:
        if security == "tls":
            server = smtplib.SMTP_SSL(host, port, timeout=TIMEOUT_SECONDS, context=context)
        else:
            server = smtplib.SMTP(host, port, timeout=TIMEOUT_SECONDS)
    except (OSError, smtplib.SMTPException) as exc:
        return SendResult(False, _smtp_error(exc, where))
    try:
        with server:
            if security == "starttls":
                server.starttls(context=context)
            if config.get("username"):
                server.login(config["username"], secrets.get("password") or "")
            refused = server.send_message(email)
    except (OSError, smtplib.SMTPException) as exc:
        return SendResult(False, _smtp_error(exc, where))
    accepted = [address for address in config["to"] if address not in refused]
    detail = f"Accepted by {where} for {', '.join(accepted)}."
    if refused:
        detail += " Refused: " + "; ".join(
            f"{address} ({code} {_text(reply)})" for address, (code, reply) in refused.items()
        )
    return SendResult(True, detail)


def _text(reply) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _smtp_error(exc: BaseException, where: str) -> str:
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"SMTP login refused by {where}: {exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "Every recipient was refused: " + "; ".join(
            f"{address} ({code} {_text(reply)})"
            for address, (code, reply) in exc.recipients.items()
        )
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return f"Sender {exc.sender} refused by {where}: {exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return f"{where} cannot do what the settings ask: {exc}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"SMTP error from {where}: {exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"{where} closed the connection: {exc or 'no reason given'}"
    if isinstance(exc, smtplib.SMTPException):
        return f"SMTP error from {where}: {exc}"
    return _sentence(_network_error(exc, where))


# --- ntfy and Apprise ------------------------------------------------------------------------

_PRIORITY = {"critical": "high", "warning": "default", "info": "low"}
_NOTIFY_TYPE = {
    "critical": apprise.NotifyType.FAILURE,
    "warning": apprise.NotifyType.WARNING,
    "info": apprise.NotifyType.INFO,
}


def ntfy_apprise_url(config: dict, secrets: dict, severity: str) -> str:
    """The Apprise URL of an ntfy server + topic (+ access token)."""
    split = urlsplit(config["url"])
    schema = "ntfys" if split.scheme == "https" else "ntfy"
    host = f"[{split.hostname}]" if ":" in (split.hostname or "") else split.hostname
    port = f":{split.port}" if split.port else ""
    query = f"mode=private&image=no&priority={_PRIORITY.get(severity, 'default')}"
    if secrets.get("token"):
        query += "&auth=token&token=" + quote(secrets["token"], safe="")
    return f"{schema}://{host}{port}/{quote(config['topic'], safe='')}?{query}"


def send_ntfy(config: dict, secrets: dict, message: Message) -> SendResult:
    url = ntfy_apprise_url(config, secrets, message.severity)
    result = _apprise_notify(url, message)
    where = redacted_url(config["url"]).removesuffix("/…")
    if result.ok:
        return SendResult(True, f"Accepted by {where} (topic {config['topic']}).")
    return SendResult(False, f"ntfy at {where}: {result.detail}")


def send_apprise(config: dict, secrets: dict, message: Message) -> SendResult:
    return _apprise_notify(secrets["url"], message)


_plugins_loaded = threading.Lock()


def _new_apprise() -> apprise.Apprise:
    """An Apprise instance, its plugins loaded once: Apprise imports them at first use, and
    its e-mail plugin imports the deprecated ``imghdr`` module (a warning, an error in tests)."""
    if not getattr(_new_apprise, "loaded", False):
        with _plugins_loaded, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
            apprise.Apprise().add("json://localhost")  # loads every plugin module
            _new_apprise.loaded = True
    # Sequential: the sender already runs one worker per channel; Apprise's own thread pool
    # would only add threads (greenlets under gevent) around a single service.
    return apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))


def apprise_accepts(url: str) -> bool:
    """Whether Apprise recognises ``url`` as a service it can notify (no network)."""
    return bool(_new_apprise().add(url))


# What Apprise's debug lines (never shown: they may repeat URLs) say about a failure.
_CAUSES = (
    ("Connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("Name or service not known", "host name not found"),
    ("certificate verify failed", "TLS certificate not trusted"),
)


def _apprise_notify(url: str, message: Message) -> SendResult:
    notifier = _new_apprise()
    if not notifier.add(url):
        return SendResult(False, "Apprise does not recognise this URL.")
    body = message.text
    result = notifier.notify(
        body=body,
        title=message.title,
        notify_type=apprise.NotifyType.SUCCESS
        if message.event == "resolved"
        else _NOTIFY_TYPE.get(message.severity, apprise.NotifyType.INFO),
        body_format=apprise.NotifyFormat.TEXT,
        timeout=TIMEOUT_SECONDS + 5,
        log_level=logging.DEBUG,
    )
    services = ", ".join(sorted({service.name for service in result})) or "the service"
    if result:
        return SendResult(True, f"Delivered through Apprise ({services}).")
    problems = [
        entry.message
        for entry in result.logs()
        if entry.level in ("WARNING", "ERROR", "CRITICAL") and entry.message
    ]
    why = "; ".join(dict.fromkeys(problems)) or f"status {result.status.name.lower()}"
    debug = " ".join(entry.message or "" for entry in result.logs())
    causes = [words for phrase, words in _CAUSES if phrase in debug]
    if causes:
        why += f" ({causes[0]})"
    return SendResult(False, f"Apprise could not deliver through {services}: {why}")
