"""A host's repository as its agent reports it: bring-up, snapshot list, size history."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import delete, insert, select

from app.extensions import db
from app.models import Host, HostCredential, Job, RepoStats, Snapshot
from app.secretbox import SecretBox
from app.services import audit, backends, commands
from app.services.audit import Actor
from app.services.errors import EventRejected
from app.services.jobs import create_job

MAX_SNAPSHOTS = 100_000
REPO_STATUSES = frozenset({"unknown", "ready", "missing", "initializing", "error", "init_failed"})
BRING_UP_KINDS = ("probe", "init")
_HEX_ID = re.compile(r"^[0-9a-f]{8,64}$")
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$", re.IGNORECASE
)
_BACKEND_PREFIX = re.compile(r"^(rest|s3|swift|b2|azure|gs|rclone|sftp):(?!//)")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def restic_time_offset(value: Any) -> Optional[int]:
    """Minutes east of UTC in a restic time (``…+02:00`` → 120; ``Z`` → 0)."""
    match = _RFC3339.match(value.strip()) if isinstance(value, str) else None
    if not match:
        return None
    zone = match.group(4)
    if not zone or zone.upper() == "Z":
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    return sign * (int(digits[:2]) * 60 + int(digits[2:4]))


def parse_restic_time(value: Any) -> Optional[datetime]:
    """restic's RFC 3339 times carry nanoseconds; Python takes microseconds."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.match(value.strip())
    if not match:
        return None
    day, clock, fraction, zone = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if not zone or zone.upper() == "Z" else zone
    if len(zone) == 5:
        zone = zone[:3] + ":" + zone[3:]
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}")
    except ValueError:
        return None
    return parsed.astimezone(timezone.utc)


# --- bring-up ----------------------------------------------------------------------------


def active_job(host: Host, kinds: tuple[str, ...]) -> Optional[Job]:
    return db.session.scalar(
        select(Job)
        .where(Job.host_id == host.id, Job.kind.in_(kinds), Job.status.in_(("queued", "running")))
        .order_by(Job.id.desc())
        .limit(1)
    )


def dispatch_probe(box: SecretBox, host: Host, *, actor: Actor, now: datetime) -> Job:
    """Check the repository (and initialise it if it is missing); one bring-up at a time."""
    running = active_job(host, BRING_UP_KINDS)
    if running is not None:
        return running
    return queue_probe(box, host, actor=actor, now=now)


def queue_probe(box: SecretBox, host: Host, *, actor: Actor, now: datetime) -> Job:
    """:func:`dispatch_probe` for a caller that found no bring-up under way already."""
    host.repo_status = "unknown"
    host.repo_status_reason = None
    return create_job(box, host, "probe", params={}, actor=actor, now=now)


def ensure_brought_up(box: SecretBox, host: Host, *, now: datetime) -> Optional[Job]:
    """On connect: a host whose repository was never checked gets a probe."""
    if host.repo_status != "unknown":
        return None
    return dispatch_probe(box, host, actor=Actor.system("repository bring-up"), now=now)


def apply_status(
    box: Optional[SecretBox], host: Host, job: Job, status: str, reason: Optional[str], now
) -> None:
    if status not in REPO_STATUSES - {"unknown", "initializing"}:
        raise EventRejected("invalid_event", f"Unknown repository status {status!r}.")
    host.repo_status = status
    host.repo_status_reason = (reason or "")[:1000] or None
    if status == "missing" and job.kind == "probe" and box is not None:
        if active_job(host, ("init",)) is None:
            create_job(
                box, host, "init", params={}, actor=Actor.system("repository bring-up"), now=now
            )
        host.repo_status = "initializing"
        host.repo_status_reason = None


# --- snapshots ---------------------------------------------------------------------------


def _string(item: dict, key: str, limit: int) -> Optional[str]:
    value = item.get(key)
    return value[:limit] if isinstance(value, str) and value else None


def _string_list(item: dict, key: str) -> list[str]:
    value = item.get(key)
    if not isinstance(value, list):
        return []
    return [entry[:4096] for entry in value[:1000] if isinstance(entry, str)]


def _snapshot_row(host: Host, item: Any, index: int, now: datetime) -> dict | str:
    if not isinstance(item, dict):
        return f"snapshots[{index}] must be an object"
    snapshot_id = item.get("id")
    if not isinstance(snapshot_id, str) or not _HEX_ID.match(snapshot_id):
        return f"snapshots[{index}].id must be a hexadecimal restic id"
    taken = parse_restic_time(item.get("time"))
    if taken is None:
        return f"snapshots[{index}].time must be an RFC 3339 time"
    summary = item.get("summary")
    return {
        "host_id": host.id,
        "snapshot_id": snapshot_id,
        "short_id": (_string(item, "short_id", 16) or snapshot_id[:8]),
        "time": taken,
        "time_offset_minutes": restic_time_offset(item.get("time")),
        "hostname": _string(item, "hostname", 255),
        "username": _string(item, "username", 255),
        "paths": _string_list(item, "paths"),
        "tags": _string_list(item, "tags"),
        "parent": _string(item, "parent", 64),
        "tree": _string(item, "tree", 64),
        "program_version": _string(item, "program_version", 64),
        "summary": summary if isinstance(summary, dict) else None,
        "reported_at": now,
    }


def replace_snapshots(host: Host, data: dict, *, now: datetime) -> None:
    """The agent's list is complete: it replaces the host's list in one transaction.

    Raises :class:`EventRejected` for a malformed list (nothing is replaced)."""
    items = data.get("snapshots")
    if not isinstance(items, list) or len(items) > MAX_SNAPSHOTS:
        raise EventRejected(
            "invalid_event", f"snapshots must be a list of at most {MAX_SNAPSHOTS}."
        )
    rows, seen = [], set()
    for index, item in enumerate(items):
        row = _snapshot_row(host, item, index, now)
        if isinstance(row, str):
            raise EventRejected("invalid_event", row)
        if row["snapshot_id"] not in seen:
            seen.add(row["snapshot_id"])
            rows.append(row)
    db.session.execute(delete(Snapshot).where(Snapshot.host_id == host.id))
    if rows:
        db.session.execute(insert(Snapshot), rows)
    host.snapshot_count = len(rows)
    host.latest_snapshot_at = max((row["time"] for row in rows), default=None)


def snapshots_of(host: Host, *, tag: Optional[str] = None, limit: Optional[int] = None):
    query = (
        select(Snapshot)
        .where(Snapshot.host_id == host.id)
        .order_by(Snapshot.time.desc(), Snapshot.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    snapshots = list(db.session.scalars(query))
    if tag:
        snapshots = [snapshot for snapshot in snapshots if tag in (snapshot.tags or [])]
    return snapshots


# --- size history ------------------------------------------------------------------------


def _count(data: dict, key: str, *, required: bool = False) -> int | str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"{key} must be a non-negative integer"
    return value


def record_stats(host: Host, job: Job, data: dict, *, now: datetime) -> None:
    fields = {}
    for key in ("total_size", "total_uncompressed_size", "total_blob_count", "snapshots_count"):
        value = _count(data, key, required=key == "total_size")
        if isinstance(value, str):
            raise EventRejected("invalid_event", value)
        fields[key] = value
    ratio = data.get("compression_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))):
        raise EventRejected("invalid_event", "compression_ratio must be a number")
    db.session.add(
        RepoStats(host_id=host.id, job_id=job.id, taken_at=now, compression_ratio=ratio, **fields)
    )
    host.repo_size_bytes = fields["total_size"]


def size_history(host: Host, limit: int = 90) -> list[RepoStats]:
    rows = db.session.scalars(
        select(RepoStats)
        .where(RepoStats.host_id == host.id)
        .order_by(RepoStats.taken_at.desc(), RepoStats.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


# --- credentials -------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """A repository URL without any password embedded in it (``rest:https://u:***@host/…``).

    Covers ``scheme://user:password@host`` after any restic backend prefix, and the scp-like
    ``sftp:user:password@host:/path``.
    """
    backend = _BACKEND_PREFIX.match(url)
    start = backend.end() if backend else 0
    scheme = _URL_SCHEME.match(url[start:])
    start += scheme.end() if scheme else 0
    ends = [index for index in (url.find(mark, start) for mark in "/?#") if index != -1]
    end = min(ends, default=len(url))
    userinfo, at, host = url[start:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return url[:start] + f"{user}:***@{host}" + url[end:]


def credential_of(host: Host, kind: str = "everyday") -> Optional[HostCredential]:
    return db.session.scalar(
        select(HostCredential).where(HostCredential.host_id == host.id, HostCredential.kind == kind)
    )


def seal_repo_url(box: SecretBox, credential: HostCredential, url: str) -> None:
    """The whole URL sealed (it may hold a password), its redacted form kept for display."""
    credential.repo_url_redacted = redact_url(url)
    credential.sealed_repo_url = box.seal(
        url, table="host_credentials", column="repo_url", row_id=credential.id
    )


def repo_url_of(box: SecretBox, credential: HostCredential) -> str:
    """The whole URL, password included: for sealed command parts and comparisons, never
    for display (``repo_url_redacted`` is that)."""
    return box.open(
        credential.sealed_repo_url,
        table="host_credentials",
        column="repo_url",
        row_id=credential.id,
    )


def form_url(box: SecretBox, credential: Optional[HostCredential]) -> Optional[str]:
    """The URL to prefill a form with: ``None`` when it holds a password (never shown)."""
    if credential is None:
        return None
    url = repo_url_of(box, credential)
    return url if url == credential.repo_url_redacted else None


def new_credential(
    box: SecretBox, host: Host, kind: str, connection: backends.Settings, *, now: datetime
) -> HostCredential:
    """A credential row with its URL, password and backend credentials sealed (each bound
    to the row's id)."""
    credential = HostCredential(
        host_id=host.id,
        kind=kind,
        repo_url_redacted=redact_url(connection.url),
        sealed_repo_url=b"",
        sealed_password=b"",
        username=connection.username,
        updated_at=now,
    )
    db.session.add(credential)
    db.session.flush()  # the row id is part of the sealing's associated data
    set_secrets(box, credential, connection)
    return credential


def set_secrets(box: SecretBox, credential: HostCredential, connection: backends.Settings) -> None:
    """Seal a new connection into an existing (flushed) credential row."""
    seal_repo_url(box, credential, connection.url)
    credential.username = connection.username
    credential.sealed_password = box.seal(
        connection.password, table="host_credentials", column="password", row_id=credential.id
    )
    extra = connection.secrets()
    credential.sealed_backend = (
        box.seal(
            json.dumps(extra), table="host_credentials", column="backend", row_id=credential.id
        )
        if extra["env"] or extra["cacert"]
        else None
    )
    credential.env_names = connection.env_names
    credential.repo_options = list(connection.options)
    credential.cacert_summary = backends.cacert_summary(connection.cacert)
    credential.insecure_tls = connection.insecure_tls


def connection_of(box: SecretBox, credential: HostCredential) -> backends.Settings:
    """The whole saved connection, secrets included: for sealed command parts only."""
    extra = {"env": {}, "cacert": None}
    if credential.sealed_backend:
        extra = json.loads(
            box.open(
                credential.sealed_backend,
                table="host_credentials",
                column="backend",
                row_id=credential.id,
            )
        )
    password = box.open(
        credential.sealed_password,
        table="host_credentials",
        column="password",
        row_id=credential.id,
    )
    return backends.Settings(
        url=repo_url_of(box, credential),
        username=credential.username,
        password=password,
        env=dict(extra.get("env") or {}),
        options=list(credential.repo_options or []),
        cacert=extra.get("cacert"),
        insecure_tls=bool(credential.insecure_tls),
    )


def config_update(kind: str, connection: backends.Settings) -> tuple[dict, dict]:
    """A ``config.update`` section as (clear, sealed) parts: the URL travels sealed.

    The clear part holds the redacted URL, the username and the names of the backend
    variables; the server merges the sealed part over it on delivery, so the agent receives
    the whole connection (docs/protocol.md).
    """
    key = "repository" if kind == "everyday" else "admin_repository"
    return (
        {key: {"url": redact_url(connection.url), "username": connection.username}},
        {key: connection.agent_section()},
    )


def keep_saved_values(box: SecretBox, host: Host, backend_input: dict, url) -> dict:
    """``backend_input`` with the saved values filled in where it leaves them empty (a
    form's empty secret field keeps the saved value; the values are never shown again) —
    only while the URL names the same backend."""
    saved = credential_of(host)
    if saved is None or not isinstance(url, str):
        return backend_input
    before = connection_of(box, saved)
    if before.backend.key != backends.backend_of(url.strip()).key:
        return backend_input
    env = dict(backend_input.get("repo_env") or {})
    for name, value in before.env.items():
        if not env.get(name):
            env[name] = value
    cacert = backend_input.get("cacert") or before.cacert
    return {**backend_input, "repo_env": env, "cacert": cacert}


def save_credentials(
    box: SecretBox, host: Host, connection: backends.Settings, *, now: datetime
) -> HostCredential:
    """New everyday credentials: sealed here, pushed to the agent, then re-checked (NS-03).

    The probe is queued at once when no bring-up runs; otherwise the next connect of the
    agent queues it (the status stays ``unknown`` until then).
    """
    credential = credential_of(host)
    if credential is None:
        credential = new_credential(box, host, "everyday", connection, now=now)
    else:
        credential.updated_at = now
        set_secrets(box, credential, connection)
    payload, secret = config_update("everyday", connection)
    admin = credential_of(host, "admin")
    if admin is not None:
        # The admin credential is for the same repository: it follows the URL and the
        # backend settings; only restic's password (and the REST user) are its own.
        before = connection_of(box, admin)
        after = backends.Settings(
            connection.url,
            before.username,
            before.password,
            connection.env,
            connection.options,
            connection.cacert,
            connection.insecure_tls,
        )
        if after != before:
            set_secrets(box, admin, after)
            admin.updated_at = now
            admin_clear, admin_secret = config_update("admin", after)
            payload.update(admin_clear)
            secret.update(admin_secret)
    commands.enqueue(box, host, "config.update", payload=payload, secret_payload=secret, now=now)
    host.repo_status = "unknown"
    host.repo_status_reason = None
    db.session.flush()
    return credential


def update_credentials(
    box: SecretBox,
    host: Host,
    connection: backends.Settings,
    *,
    actor: Actor,
    client_address: Optional[str],
    now: datetime,
    offline_after_seconds: int,
) -> HostCredential:
    """New everyday credentials, audited; an online agent is asked to probe at once."""
    credential = save_credentials(box, host, connection, now=now)
    audit.record(
        actor,
        "host.repository_updated",
        target_type="host",
        target_id=host.id,
        payload=public_settings(credential),
        client_address=client_address,
    )
    if host.status(now, offline_after_seconds) == "online":
        dispatch_probe(box, host, actor=actor, now=now)
    return credential


def public_settings(credential: HostCredential) -> dict:
    """What may be shown of a connection: never a value of the backend's variables."""
    return {
        "url": credential.repo_url_redacted,
        "backend": backends.backend_of(credential.repo_url_redacted).key,
        "username": credential.username,
        "repo_env_names": list(credential.env_names or []),
        "repo_options": list(credential.repo_options or []),
        "cacert": credential.cacert_summary,
        "insecure_tls": bool(credential.insecure_tls),
    }
