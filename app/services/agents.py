"""The agent side of the server: authentication, hello, heartbeat and reconciliation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from sqlalchemy import bindparam, exists, select
from sqlalchemy.orm import joinedload

from app.extensions import db
from app.models import AgentToken, Command, Host, Job, RetiredAgentToken
from app.quick_reads import QuickReads
from app.security import hash_token
from app.services import commands, jobs
from app.services.errors import ServiceError

PROTOCOL_VERSION = 1
_TOUCH_SECONDS = 5  # last_seen_at resolution: fewer writes, still "online within seconds"
_TOUCH_MARGIN_SECONDS = 1  # the poll's own round trip and a busy server
TOKEN_TOUCH_SECONDS = 60  # agent_tokens.last_used_at resolution


class HostDeleted(ServiceError):
    """The token belonged to a host an administrator deleted: the agent should stop."""

    status = 410
    code = "host_deleted"


class ProtocolTooOld(ServiceError):
    status = 426
    code = "protocol_too_old"


def settings(config) -> dict:
    """Intervals and limits dictated to the fleet (docs/protocol.md)."""
    return {
        "poll_wait_seconds": config["RM_POLL_WAIT_SECONDS"],
        "offline_after_seconds": config["RM_OFFLINE_AFTER_SECONDS"],
        "log_flush_seconds": config["RM_LOG_FLUSH_SECONDS"],
        "log_flush_watched_seconds": 1,
        "max_log_batch_records": 500,
        "command_lease_seconds": 60,
    }


def authenticate(plain: str, *, now: datetime) -> Optional[Host]:
    if not plain or not plain.startswith("rma_"):
        return None
    token_hash = hash_token(plain)
    # The token with its host in one query (every agent call but an idle poll comes here).
    token = db.session.scalar(
        select(AgentToken)
        .options(joinedload(AgentToken.host))
        .where(AgentToken.token_hash == token_hash)
    )
    if token is None:
        retired = db.session.get(RetiredAgentToken, token_hash)
        if retired is not None:
            raise HostDeleted(
                f"This host ({retired.hostname}) was deleted on the server at "
                f"{retired.retired_at:%Y-%m-%d %H:%M} UTC; the agent stops. "
                "Re-enroll it from the Add host page to back it up again."
            )
        return None
    if token.revoked_at is not None:
        return None
    if (
        token.last_used_at is None
        or (now - token.last_used_at).total_seconds() > TOKEN_TOUCH_SECONDS
    ):
        token.last_used_at = now
    return token.host


@dataclass(frozen=True)
class AgentIdentity:
    """What an idle poll needs to know of its agent, read without ORM objects."""

    token_id: int
    host_id: int
    boot_id: Optional[str]
    repo_status: str
    last_seen_at: Optional[datetime]
    token_last_used_at: Optional[datetime]


_tokens, _hosts = AgentToken.__table__, Host.__table__
_IDENTIFY = (
    select(
        _tokens.c.id,
        _tokens.c.host_id,
        _hosts.c.boot_id,
        _hosts.c.repo_status,
        _hosts.c.last_seen_at,
        _tokens.c.last_used_at,
    )
    .join(_hosts, _hosts.c.id == _tokens.c.host_id)
    .where(_tokens.c.token_hash == bindparam("token_hash"), _tokens.c.revoked_at.is_(None))
)


_IDLE_LOOK = _IDENTIFY.add_columns(
    exists(
        select(Command.id).where(
            *commands.awaiting_where(_tokens.c.host_id, bindparam("expiry_if_leased_now"))
        )
    ).label("awaiting")
)


@dataclass(frozen=True)
class IdleLook:
    identity: AgentIdentity
    awaiting: bool  # a command is leasable, or was lost on the way to an earlier poll


def idle_look(reads: QuickReads, token_hash: str, *, now: datetime) -> Optional[IdleLook]:
    """The live token (not revoked) and its host, and whether any command awaits the poll
    (:func:`app.services.commands.awaiting_where`), in one prebuilt Core query (one round
    trip, no ORM objects); None for an unknown, revoked or retired token
    (:func:`authenticate` then says which)."""
    params = {"token_hash": token_hash, "expiry_if_leased_now": now + commands.LEASE}
    row = reads.first_row(_IDLE_LOOK, params)
    if row is None:
        return None
    return IdleLook(AgentIdentity(*row[:-1]), bool(row[-1]))


def look(reads: QuickReads, plain: str, *, now: datetime) -> Optional[IdleLook]:
    """:func:`idle_look` of a plain token (None for one that is not an agent token)."""
    if not plain or not plain.startswith("rma_"):
        return None
    return idle_look(reads, hash_token(plain), now=now)


def idle_poll(
    identity: AgentIdentity,
    *,
    acks: list,
    running: list,
    boot_id: Optional[str],
    now: datetime,
    defer_seconds: float,
) -> bool:
    """True when this poll changes nothing but the heartbeat, which may be written behind:
    no acks, no running jobs to reconcile, the same agent process (boot id) as the host's,
    a repository past bring-up, and a stored ``last_seen_at`` fresh enough (see
    :func:`app.services.heartbeats.defer_until`). Anything else takes the full path."""
    if acks or running or identity.repo_status == "unknown":
        return False
    if boot_id and boot_id[:64] != identity.boot_id:
        return False
    if identity.last_seen_at is None:
        return False
    return (now - identity.last_seen_at).total_seconds() < defer_seconds


def token_touch_due(identity: AgentIdentity, now: datetime) -> bool:
    last = identity.token_last_used_at
    return last is None or (now - last).total_seconds() > TOKEN_TOUCH_SECONDS


def touch_resolution(offline_after_seconds: int, poll_wait_seconds: float) -> float:
    """How stale a stored ``last_seen_at`` may get before a poll writes it again:
    :data:`_TOUCH_SECONDS`, less when the offline window is short. The stored value is at
    most this plus one hold (the next poll) old, so it stays inside the offline window; a
    fixed 5 s with ``RM_OFFLINE_AFTER_SECONDS=5`` let a polling host read as offline."""
    room = offline_after_seconds - poll_wait_seconds - _TOUCH_MARGIN_SECONDS
    return max(0.0, min(float(_TOUCH_SECONDS), room / 2))


_BOOT_OF = select(_hosts.c.boot_id).where(_hosts.c.id == bindparam("host_id"))


def boot_of(host_id: int):
    """The host's stored boot id as a row (``.boot_id``), None for a deleted host: what a
    woken poll checks before it leases (one Core read in the session's transaction)."""
    return db.session.connection().execute(_BOOT_OF, {"host_id": host_id}).first()


def touch(host: Host, *, now: datetime, boot_id: Optional[str], resolution: float) -> None:
    """The poll is the heartbeat (written when the stored one is ``resolution`` old)."""
    if boot_id:
        host.boot_id = boot_id[:64]
    if host.last_seen_at is None or (now - host.last_seen_at).total_seconds() >= resolution:
        host.last_seen_at = now


def hello(host: Host, facts: dict, *, min_protocol: int, now: datetime) -> None:
    protocol = facts.get("protocol_version")
    if not isinstance(protocol, int) or protocol < min_protocol:
        raise ProtocolTooOld(
            f"This agent speaks protocol {protocol}, the server needs at least {min_protocol}. "
            "Upgrade the agent: rerun the install command from the host page."
        )
    for field in ("agent_version", "restic_version", "os", "arch"):
        value = facts.get(field)
        if isinstance(value, str) and value:
            setattr(host, field, value[: 64 if field == "os" else 32])
    host.protocol_version = protocol
    host.last_seen_at = now
    if isinstance(facts.get("boot_id"), str):
        host.boot_id = facts["boot_id"][:64]


def reconcile(host: Host, running: list[dict], *, now: datetime) -> list[dict]:
    """Compare the agent's running list with ours; returns kill instructions for the agent."""
    kills = []
    listed = set()
    for item in running:
        job = db.session.get(Job, item["job_id"])
        listed.add(item["job_id"])
        if job is None or job.host_id != host.id:
            kills.append(_kill(item, "unknown_job"))
        elif job.attempt_id != item["attempt_id"]:
            kills.append(_kill(item, "stale_attempt"))
        elif item.get("state") == "running" and (
            job.cancel_requested_at is not None or job.status == "cancelled"
        ):
            kills.append(_kill(item, "cancelled"))
        elif item.get("state") == "running" and job.status == "lost":
            jobs.revive(job, host)  # it was only silent (a network outage): it runs on
    if not host.boot_id:
        return kills  # no agent process known yet: nothing it could have restarted from
    # Only the host's open jobs another agent process (boot id) registered: almost always
    # none, so the database answers that without loading a job (every hello and every
    # poll with acks or a new boot id comes here).
    for job in db.session.scalars(
        select(Job).where(
            Job.host_id == host.id,
            Job.status.in_(("queued", "running")),
            Job.boot_id.is_not(None),
            Job.boot_id != host.boot_id,
        )
    ):
        if job.id in listed:
            continue
        if job.status == "running":
            job.status = "cancelled" if job.cancel_requested_at else "lost"
            job.error = "The agent restarted while this job ran and does not know it any more."
        else:  # a run an earlier agent process registered but never started
            job.status = "lost"
            job.error = (
                "The agent restarted before this run started and does not list it: it was "
                "marked lost. If the agent runs it after all, its result is recorded."
            )
        job.finished_at = now
        jobs.note_backup_finished(host, job)
    return kills


def _kill(item: dict, reason: str) -> dict:
    return {
        "job_id": item["job_id"],
        "attempt_id": item["attempt_id"],
        "action": "kill",
        "reason": reason,
    }
