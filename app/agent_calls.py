"""The doors' way to ask a host's agent something and wait for its answer (rpc).

The request waits on the bus, holding no database connection, for at most
``RM_RPC_WAIT_SECONDS``; the answer may arrive at any worker (the database is re-read).
"""

from __future__ import annotations

import time

from flask import current_app

from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.models import Host, RpcCall
from app.models.types import utcnow
from app.services import backends, rpc
from app.transaction import commit_and_wake

RECHECK_SECONDS = 0.5  # the answer may reach another worker: re-read the database this often


def ask(host: Host, question: rpc.Question) -> RpcCall:
    """Queue the question (or join one in flight), wake the agent, wait for its answer."""
    config = current_app.config
    call_id = rpc.ask(
        current_app.extensions["secretbox"],
        host,
        question,
        now=utcnow(),
        offline_after_seconds=config["RM_OFFLINE_AFTER_SECONDS"],
    )
    return await_answer(call_id, host)


def await_answer(call_id: str, host: Host) -> RpcCall:
    """Wake the host's agent, wait for its answer to ``call_id``; its refusal raised."""
    config = current_app.config
    hostname = host.hostname
    commit_and_wake(host_key(host.id))
    answered = _wait(call_id, config["RM_RPC_WAIT_SECONDS"])
    if answered is None:
        rpc.give_up(call_id, now=utcnow())
        commit_and_wake()
        raise rpc.AgentTimeout(hostname, config["RM_RPC_WAIT_SECONDS"])
    return rpc.answer_of(answered, hostname=hostname)


def _wait(call_id: str, seconds: float) -> RpcCall | None:
    """The call once the agent answered it; ``None`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    with current_app.extensions["bus"].listen(rpc.rpc_key(call_id)) as waiter:
        while True:
            call = db.session.get(RpcCall, call_id, populate_existing=True)
            if call is not None and call.status != "pending":
                return call
            db.session.remove()  # no connection held while waiting
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            waiter.wait(min(remaining, RECHECK_SECONDS))


def test_connection(host: Host, connection: backends.Settings) -> dict:
    """``{"ok", "detail"}``: can the host's agent open the repository with ``connection``
    (``restic cat config``; nothing is saved)? Audited with the backend and the outcome,
    never a value. Raises like the snapshot browser (host offline, agent timeout)."""
    call_id = rpc.ask_repo_test(
        current_app.extensions["secretbox"],
        host,
        connection,
        now=utcnow(),
        offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
    )
    host_id, actor = host.id, current_actor()
    result = rpc.repo_test_result(await_answer(call_id, host))
    rpc.record_repo_test(actor, host_id, connection, result, client_address=client_address())
    commit_and_wake()
    return result
