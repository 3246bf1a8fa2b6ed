"""Commands for agents: at-least-once delivery with leases, acks and redelivery."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import bindparam, case, func, or_, select, update

from app.extensions import db
from app.models import Command, Host, Job
from app.quick_reads import QuickReads
from app.secretbox import SecretBox

log = logging.getLogger("restic_manager.commands")

LEASE = timedelta(seconds=60)
LEASE_LIMIT = 50  # commands one answer carries at most
MAX_DELIVERIES = 10
_SPENT = f"not acknowledged after {MAX_DELIVERIES} deliveries"
_COMMANDS = Command.__table__  # the hot paths' statements in Core: no ORM unit of work
ACK_RESULTS = frozenset({"accepted", "duplicate", "rejected", "noop"})


def enqueue(
    box: SecretBox,
    host: Host,
    type_: str,
    *,
    payload: dict,
    secret_payload: Optional[dict] = None,
    job: Optional[Job] = None,
    now: datetime,
) -> Command:
    """Queue a command; secrets go into a sealed column and are merged in only on delivery.

    A host's commands are delivered in the order they were queued (by ``created_at``): two
    queued in one request (new credentials, then the probe that checks them) get distinct,
    increasing times.
    """
    latest = db.session.scalar(
        select(func.max(Command.created_at)).where(Command.host_id == host.id)
    )
    if latest is not None and latest >= now:
        now = latest + timedelta(microseconds=1)
    command = Command(
        id=uuid.uuid4().hex,
        host_id=host.id,
        type=type_,
        payload=payload,
        job_id=job.id if job else None,
        attempt_id=job.attempt_id if job else None,
        state="queued",
        created_at=now,
    )
    if secret_payload:
        command.sealed_payload = box.seal(
            json.dumps(secret_payload), table="commands", column="payload", row_id=command.id
        )
    db.session.add(command)
    db.session.flush()
    return command


def _merge(base: dict, secret: dict) -> dict:
    merged = dict(base)
    for key, value in secret.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def delivery_json(box: SecretBox, command: Command) -> dict:
    payload = command.payload or {}
    if command.sealed_payload:
        secret = json.loads(
            box.open(command.sealed_payload, table="commands", column="payload", row_id=command.id)
        )
        payload = _merge(payload, secret)
    return {
        "command_id": command.id,
        "type": command.type,
        "delivery_count": command.delivery_count,
        "job_id": command.job_id,
        "attempt_id": command.attempt_id,
        "payload": payload,
    }


def leasable_where(host_id, now, columns=Command) -> tuple:
    """The conditions of a command :func:`lease` would take for ``host_id`` (on the model's
    columns, or on those of an alias of the table)."""
    return (
        columns.host_id == host_id,
        or_(
            columns.state == "queued",
            (columns.state == "leased") & (columns.lease_expires_at <= now),
        ),
    )


def awaiting_where(host_id, expiry_if_leased_now) -> tuple:
    """What a poll must not park on: a leasable command, or one leased to an *earlier*
    poll of the host that this poll does not acknowledge (see :func:`release_lost`).
    ``expiry_if_leased_now`` is the poll's arrival plus :data:`LEASE` (a plain value, so
    the statement compares stored timestamps only): a lease that expires before that
    value began before the poll arrived. A full poll applies its acks first; an idle poll
    has none, so it sees every such command."""
    return (
        Command.host_id == host_id,
        or_(
            Command.state == "queued",
            (Command.state == "leased") & (Command.lease_expires_at < expiry_if_leased_now),
        ),
    )


def release_lost(host: Host, *, arrived: datetime) -> int:
    """Commands leased to an earlier poll of the host and not acknowledged by this one
    (call after :func:`apply_acks`) are leasable again at once; returns how many.

    The agent polls one request at a time and acknowledges everything it received in its
    next poll, so such a command never reached it: the earlier answer went to a connection
    that had died without a close (a network path gone silent), or arrived after the agent
    had given up on it. Waiting out the lease (60 s) delayed it for nothing. Should the
    agent have it after all, it recognises the id and acks ``duplicate`` (at least once).
    A lease taken after this poll arrived (a poll parked in another worker) is left alone.
    """
    released = _execute(
        _RELEASE_LOST, {"for_host": host.id, "arrived": arrived, "later": arrived + LEASE}
    ).rowcount
    if released:
        log.info(
            "%s: %d command(s) leased to an earlier poll and not acknowledged by this one: "
            "delivered again now",
            host.hostname,
            released,
        )
    return released


_ANY_LEASABLE = (
    select(Command.id).where(*leasable_where(bindparam("host_id"), bindparam("now"))).limit(1)
)


def any_leasable(reads: QuickReads, host_id: int, *, now: datetime) -> bool:
    """Whether :func:`lease` would find something: one indexed read with a prebuilt Core
    statement, no lock, no ORM objects (the idle poll's first look)."""
    return reads.first(_ANY_LEASABLE, {"host_id": host_id, "now": now}) is not None


def lease(host_id: int, *, now: datetime) -> list:
    """Claim queued commands and those whose lease ran out, oldest first: rows (with the
    model's attribute names, not ORM objects) of one prebuilt ``UPDATE … RETURNING`` over
    the oldest :data:`LEASE_LIMIT` leasable ones, which PostgreSQL locks with SKIP LOCKED
    (a poll of the host in another worker takes none of them twice). A command delivered
    :data:`MAX_DELIVERIES` times already becomes undeliverable instead (its job fails)."""
    rows = _execute(_LEASE, {"for_host": host_id, "now": now, "expires": now + LEASE}).all()
    for row in rows:
        if row.state == "undeliverable":
            _fail_unacknowledged_job(row, now)
    return sorted(
        (row for row in rows if row.state == "leased"), key=lambda row: (row.created_at, row.id)
    )


def _fail_unacknowledged_job(command, now: datetime) -> None:
    """A job.run the agent never acknowledged (a row :func:`lease` returned) fails with a
    reason people can act on."""
    if command.type != "job.run" or command.job_id is None:
        return
    job = db.session.get(Job, command.job_id)
    if job is not None and job.status == "queued":
        job.status = "failed"
        job.finished_at = now
        job.error = (
            f"The agent received this job {MAX_DELIVERIES} times but never acknowledged it; "
            "check the agent's log on the host."
        )


def apply_acks(host: Host, acks: list[dict], *, now: datetime) -> int:
    """Mark acknowledged commands (idempotent; unknown or foreign ids are ignored; an id
    acknowledged twice in one poll keeps its first result). One statement per distinct
    result text (usually one for the whole poll)."""
    by_text: dict[str, list[str]] = {}
    seen = set()
    for ack in acks:
        if ack["command_id"] in seen:
            continue
        seen.add(ack["command_id"])
        result = ack.get("result", "accepted")
        reason = ack.get("reason")
        text = result if not reason else f"{result}: {str(reason)[:200]}"
        by_text.setdefault(text, []).append(ack["command_id"])
    count = 0
    for text, ids in by_text.items():
        params = {"ids": ids, "for_host": host.id, "now": now, "text": text}
        count += _execute(_ACK, params).rowcount
    return count


# --- the hot paths' statements, built once (Core, on the session's connection) ----------------

_c = _COMMANDS.c
_candidate = _COMMANDS.alias("candidate")
_spent = _c.delivery_count >= MAX_DELIVERIES
_LEASE = (
    update(_COMMANDS)
    .where(
        _c.id.in_(
            select(_candidate.c.id)
            .where(*leasable_where(bindparam("for_host"), bindparam("now"), _candidate.c))
            .order_by(_candidate.c.created_at, _candidate.c.id)
            .limit(LEASE_LIMIT)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(
        state=case((_spent, "undeliverable"), else_="leased"),
        result=case((_spent, _SPENT), else_=_c.result),
        delivery_count=case((_spent, _c.delivery_count), else_=_c.delivery_count + 1),
        lease_expires_at=case(
            (_spent, _c.lease_expires_at),
            else_=bindparam("expires", type_=_c.lease_expires_at.type),
        ),
    )
    .returning(*_c)
)
_ACK = (
    update(_COMMANDS)
    .where(
        _c.id.in_(bindparam("ids", expanding=True)),
        _c.host_id == bindparam("for_host"),
        _c.state.in_(("queued", "leased")),
    )
    .values(
        state="acked",
        acked_at=bindparam("now", type_=_c.acked_at.type),
        result=bindparam("text", type_=_c.result.type),
        lease_expires_at=None,
    )
)
_RELEASE_LOST = (
    update(_COMMANDS)
    .where(
        _c.host_id == bindparam("for_host"),
        _c.state == "leased",
        _c.lease_expires_at > bindparam("arrived"),
        _c.lease_expires_at < bindparam("later"),
    )
    .values(lease_expires_at=bindparam("arrived"))
)


def _execute(statement, params: dict):
    """A prebuilt Core statement in the session's transaction, past the ORM's layers."""
    return db.session.connection().execute(statement, params)
