"""Agent protocol endpoints (docs/protocol.md). Each view authenticates the agent itself."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time

from flask import current_app, jsonify, request

from app.access import agent_endpoint
from app.agent_api import bp, parse
from app.agent_api.idle import (
    LOOK_ENVIRON,
    PARKED_ENVIRON,
    Parked,
    hold_seconds,
    is_idle,
    note_heartbeat,
)
from app.authn import bearer_token, client_address
from app.bus import host_key, job_key
from app.errors import error_response
from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.quick_reads import quick_reads
from app.services import agents, commands, enrollment, heartbeats, jobs, repository, schedules
from app.services.errors import EventRejected, ServiceError
from app.services.events import apply_event
from app.transaction import commit_and_wake


class AgentUnauthenticated(ServiceError):
    status = 401
    code = "unauthenticated"


def _box():
    return current_app.extensions["secretbox"]


def _bus():
    return current_app.extensions["bus"]


class LatestPolls:
    """Per process: the ticket of each host's newest long poll."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tickets: dict[int, int] = {}
        self._counter = itertools.count(1)

    def take(self, host_id: int) -> int:
        with self._lock:
            ticket = next(self._counter)
            self._tickets[host_id] = ticket
            return ticket

    def holds(self, host_id: int, ticket: int) -> bool:
        with self._lock:
            return self._tickets.get(host_id) == ticket


def _agent_went_away() -> bool:
    """Whether the agent's end of this poll's connection is closed: the agent exited, or a
    proxy dropped it (it closes its upstream connection too). A command leased now would be
    written to nobody and wait for its lease to run out; the agent's next poll, perhaps in
    another worker, takes it instead. Only a closed connection shows (end of stream waiting
    to be read, or a reset); a silently dead network path does not."""
    sock = request.environ.get("gunicorn.socket")  # absent under the test client
    if sock is None:
        return False
    raw = getattr(sock, "_sock", sock)  # gevent's socket would wait instead of answering
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing sent: the agent waits for this answer
    except OSError:
        return True  # reset


def _heartbeats() -> heartbeats.Heartbeats:
    return current_app.extensions.setdefault("heartbeats", heartbeats.Heartbeats())


def _latest_polls() -> LatestPolls:
    return current_app.extensions.setdefault("latest_polls", LatestPolls())


def _authenticated_host() -> Host:
    host = agents.authenticate(bearer_token(request), now=utcnow())
    if host is None:
        raise AgentUnauthenticated(
            "The agent token is missing, unknown or revoked. Re-enroll this host with a new "
            "token from the Add host page."
        )
    return host


@bp.post("/enroll")
@agent_endpoint
def enroll():
    data = parse.body()
    token = parse.short_string(data, "token", max_length=200, required=True)
    facts = {
        "os": parse.short_string(data, "os", max_length=64),
        "arch": parse.short_string(data, "arch", max_length=32),
        "agent_version": parse.short_string(data, "agent_version", max_length=32),
        "restic_version": parse.short_string(data, "restic_version", max_length=32),
        "protocol_version": data.get("protocol_version")
        if isinstance(data.get("protocol_version"), int)
        else None,
    }
    now = utcnow()
    host, agent_token = enrollment.enroll(
        _box(),
        token,
        hostname=data.get("hostname"),
        facts=facts,
        client_address=client_address(),
        now=now,
    )
    commit_and_wake()
    return jsonify(
        {
            "host_id": host.id,
            "agent_token": agent_token,
            "settings": agents.settings(current_app.config),
        }
    ), 201


@bp.post("/hello")
@agent_endpoint
def hello():
    host = _authenticated_host()
    host_id = host.id  # read now: the commit below expires the host
    data = parse.body()
    running = parse.running(data)
    now = utcnow()
    try:
        agents.hello(host, data, min_protocol=current_app.config["RM_MIN_AGENT_PROTOCOL"], now=now)
    except agents.ProtocolTooOld as refused:
        db.session.rollback()
        return error_response(
            426,
            refused.code,
            refused.message,
            min_protocol=current_app.config["RM_MIN_AGENT_PROTOCOL"],
        )
    # The agent's polls come next: the first may already be answered below Flask.
    current_app.extensions["idle_polls"].remember(bearer_token(request), host_id)
    reconcile = agents.reconcile(host, running, now=now)
    brought_up = repository.ensure_brought_up(_box(), host, now=now)
    schedules.ensure_pushed(_box(), host, now=now)  # the agent missed a schedule.set
    commit_and_wake(*([host_key(host_id)] if brought_up is not None else []))
    return jsonify(
        {
            "host_id": host_id,
            "settings": agents.settings(current_app.config),
            "reconcile": reconcile,
        }
    )


@bp.post("/poll")
@agent_endpoint
def poll():
    parked = request.environ.get(PARKED_ENVIRON)
    if parked is not None:  # an idle poll woken below Flask (app/agent_api/idle.py)
        return _hold(parked, start=_LEASE_NOW)
    now = utcnow()
    config = current_app.config
    token = bearer_token(request)
    look = request.environ.get(LOOK_ENVIRON)  # read below Flask for this very token
    if look is None:
        look = agents.look(quick_reads(), token, now=now)
    identity = None if look is None else look.identity
    if identity is None:
        _authenticated_host()  # unknown, revoked or deleted: answers why
    else:  # its next idle polls may be answered below Flask (app/agent_api/idle.py)
        current_app.extensions["idle_polls"].remember(token, identity.host_id)
    data = parse.body()
    acks = parse.acks(data)
    running = parse.running(data)
    boot_id = parse.short_string(data, "boot_id", max_length=64)
    hold = hold_seconds(config, data.get("wait"))
    beats = _heartbeats()
    idle = (
        identity is not None
        and not look.awaiting
        and is_idle(identity, config, acks=acks, running=running, boot_id=boot_id, now=now)
    )
    if idle:  # nothing but a heartbeat: written behind, no write transaction of its own
        note_heartbeat(beats, identity, now)
        db.session.remove()
        _flush_heartbeats(beats)
        parked = _supersede(identity.host_id, boot_id, hold)
        # One read for a leasable command first. The host was just read with its token,
        # and this poll holds the newest ticket: nothing to supersede.
        return _hold(parked, start=_LOOK)

    host = None if identity is None else db.session.get(Host, identity.host_id)
    if host is None:  # the look found no live token (or the host went since): as it says
        host = _authenticated_host()
    elif agents.token_touch_due(identity, now):  # its last use, written behind as idle
        beats.note(host.id, now, token_id=identity.token_id)
    parked = _supersede(host.id, boot_id, hold)
    # Listen before the transaction that leases: a command queued after its read wakes
    # this poll. The lease is part of that transaction (no second one to find nothing).
    with _bus().listen(host_key(host.id)) as waiter:
        agents.touch(
            host,
            now=now,
            boot_id=boot_id,
            resolution=agents.touch_resolution(
                config["RM_OFFLINE_AFTER_SECONDS"], config["RM_POLL_WAIT_SECONDS"]
            ),
        )
        commands.apply_acks(host, acks, now=now)
        commands.release_lost(host, arrived=now)  # leased to an earlier poll, never received
        reconcile = agents.reconcile(host, running, now=now)
        repository.ensure_brought_up(_box(), host, now=now)  # new credentials saved while away
        leased = commands.lease(host.id, now=now)
        payload = [commands.delivery_json(_box(), command) for command in leased]
        commit_and_wake()
        db.session.remove()  # hold no database connection while parked
        _flush_heartbeats(beats)
        if payload or reconcile:
            return _answer(payload, reconcile)
        return _hold(parked, start=_WAIT, waiter=waiter)


def _flush_heartbeats(beats: heartbeats.Heartbeats) -> None:
    """This worker's deferred heartbeats, when due, in one transaction of their own."""
    if beats.due():
        beats.flush(commit_and_wake)
        db.session.remove()


def _supersede(host_id: int, boot_id, hold: float) -> Parked:
    """This poll becomes the host's newest in this process.

    A restarted agent, or one whose connection a proxy dropped, leaves a request behind that
    would otherwise lease the next command and write it to a dead socket (redelivered only
    after the lease). Only this process's: the tickets are per process, and a poll parked
    in another worker notices a restart (new boot_id) on its next wake-up, so no NOTIFY for
    every poll. Call before listening (the wake-up is for the older polls)."""
    ticket = _latest_polls().take(host_id)
    _bus().wake_local(host_key(host_id))
    return Parked(host_id, ticket, boot_id, time.monotonic() + hold)


_LOOK, _LEASE_NOW, _WAIT = "look", "lease", "wait"  # how a parked poll begins (_hold)


def _hold(parked: Parked, *, start: str, waiter=None):
    """Park until a command can be leased to this poll or the hold ends. ``start``: _LOOK
    first reads whether anything is leasable, _LEASE_NOW leases at once (woken below Flask),
    _WAIT waits for a wake-up (the caller leased nothing, listening with ``waiter``). Each
    wake-up first checks that this poll is still the host's newest and its agent still
    there."""
    host_id, ticket, boot_id = parked.host_id, parked.ticket, parked.boot_id
    listening = (
        contextlib.nullcontext(waiter) if waiter is not None else _bus().listen(host_key(host_id))
    )
    with listening as waiter:  # registered before checking
        if start == _LOOK and not commands.any_leasable(quick_reads(), host_id, now=utcnow()):
            start = _WAIT
        while True:
            if start == _WAIT:
                remaining = parked.deadline - time.monotonic()
                if remaining <= 0 or not waiter.wait(remaining):
                    return "", 204
            start = _WAIT
            host = agents.boot_of(host_id)
            if host is None:  # deleted while parked: its retired token answers 410 at once
                _authenticated_host()
                return "", 204
            superseded = not _latest_polls().holds(host_id, ticket) or (
                boot_id and host.boot_id and host.boot_id != boot_id[:64]
            )
            if superseded or _agent_went_away():  # nobody to hand a command to
                db.session.remove()
                return "", 204
            leased = commands.lease(host_id, now=utcnow())
            payload = [commands.delivery_json(_box(), command) for command in leased]
            commit_and_wake()
            db.session.remove()
            if payload:
                return _answer(payload, [])


def _answer(payload: list, reconcile: list):
    return jsonify(
        {
            "commands": payload,
            "reconcile": reconcile,
            "settings": agents.settings(current_app.config),
        }
    )


@bp.post("/events")
@agent_endpoint
def events():
    host = _authenticated_host()
    batch = parse.events(parse.body())
    now = utcnow()
    acked, rejected, touched_jobs = [], [], set()
    for event in batch:
        acked.append(event.event_id)
        try:
            apply_event(host, event, now=now, box=_box())
        except EventRejected as refused:
            rejected.append(
                {"event_id": event.event_id, "error": refused.code, "message": refused.message}
            )
            continue
        if event.job_id:
            touched_jobs.add(event.job_id)
    keys = [job_key(job_id) for job_id in touched_jobs]
    if any(event.type == "repo.status" for event in batch):
        keys.append(host_key(host.id))  # bring-up may have queued an init job
    commit_and_wake(*keys)
    # Which of the batch's jobs someone follows live: a backup reports progress, not log
    # lines, so this answer is what keeps its agent flushing every second.
    batch_jobs = {event.job_id for event in batch if event.job_id}
    watched = sorted(job_id for job_id in batch_jobs if _bus().waiting(job_key(job_id)) > 0)
    return jsonify({"acked": acked, "rejected": rejected, "watched": watched})


@bp.post("/jobs/<int:job_id>/logs")
@agent_endpoint
def logs(job_id: int):
    host = _authenticated_host()
    attempt_id, first_seq, records = parse.log_batch(parse.body())
    job = jobs.get_job_for_agent(host, job_id)
    try:
        result = jobs.append_logs(
            job,
            attempt_id=attempt_id,
            first_seq=first_seq,
            records=records,
            max_records=current_app.config["RM_JOB_LOG_MAX_RECORDS"],
        )
    except jobs.LogGap as gap:
        db.session.rollback()
        return error_response(416, gap.code, gap.message, committed_seq=gap.committed_seq)
    commit_and_wake(job_key(job_id))
    # Someone follows this job live (an open SSE stream): the agent flushes every second.
    result["watched"] = _bus().waiting(job_key(job_id)) > 0
    return jsonify(result)
