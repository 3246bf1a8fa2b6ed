"""/api/v1: browse a snapshot and download one file, answered by the host's agent.

The browser's request waits (on the bus, holding no database connection) for the agent's
answer for at most ``RM_RPC_WAIT_SECONDS``. A download is then streamed on as the agent
uploads it: its bytes pass through the database in chunks that are removed once sent.
"""

from __future__ import annotations

import hashlib
import logging
import time
from urllib.parse import quote

from flask import Response, current_app, jsonify, request, stream_with_context
from flask_login import current_user

from app.access import Role, require_role
from app.api import bp
from app.api.hosts import get_host_or_404
from app.authn import client_address
from app.bus import host_key
from app.extensions import db
from app.models import Host, RpcCall
from app.models.types import utcnow
from app.services import audit, rpc
from app.services.audit import Actor
from app.services.errors import Conflict, ServiceError, ValidationFailed

RECHECK_SECONDS = 0.5  # the answer may reach another worker: re-read the database this often
STALL_SECONDS = 60.0  # a download that gets no byte for this long is given up
log = logging.getLogger(__name__)

_ERROR_STATUS = {
    "not_found": 404,
    "not_a_directory": 422,
    "not_a_file": 422,
    "too_large": 413,
    "invalid_params": 422,
    "refused": 403,
    "no_credentials": 409,
}


class AgentTimeout(ServiceError):
    status = 504
    code = "agent_timeout"


class AgentError(ServiceError):
    status = 502
    code = "agent_error"


class AgentRefused(ServiceError):
    """The agent answered with one of the protocol's error codes: it keeps its meaning."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message, code=code)
        self.status = _ERROR_STATUS[code]


@bp.get("/hosts/<int:host_id>/snapshots/<snapshot_id>/tree")
@require_role(Role.viewer)
def snapshot_tree(host_id: int, snapshot_id: str):
    host = get_host_or_404(host_id)
    full_id, short_id, path = _snapshot_and_path(host, snapshot_id, default="/")
    key = rpc.cache_key("ls", full_id, path)
    now = utcnow()
    call = rpc.cached_listing(
        host, key, now=now, max_age_seconds=current_app.config["RM_TREE_CACHE_SECONDS"]
    )
    cached = call is not None
    if call is None:
        params = {"snapshot_id": full_id, "path": path, "max_entries": rpc.MAX_ENTRIES}
        call = _ask(host, "ls", params, key, reuse=rpc.pending_call(host, key, now=now))
    result = call.result or {}
    return jsonify(
        {
            "snapshot_id": full_id,
            "short_id": short_id,
            "path": path,
            "items": result.get("items", []),
            "truncated": bool(result.get("truncated")),
            "cached": cached,
        }
    )


@bp.get("/hosts/<int:host_id>/snapshots/<snapshot_id>/download")
@require_role(Role.operator)
def snapshot_download(host_id: int, snapshot_id: str):
    host = get_host_or_404(host_id)
    full_id, short_id, path = _snapshot_and_path(host, snapshot_id)
    if path == "/":
        raise ValidationFailed("path must name a file.", fields={"path": ["Name a file."]})
    max_bytes = current_app.config["RM_DOWNLOAD_MAX_MB"] * 1024 * 1024
    params = {"snapshot_id": full_id, "path": path, "max_bytes": max_bytes}
    actor = Actor.for_user(current_user)  # before the waits detach the user
    call = _ask(host, "dump", params, rpc.cache_key("dump", full_id, path))
    call_id = call.id
    header = dict(call.result or {})
    audit.record(
        actor,
        "snapshot.file_downloaded",
        target_type="host",
        target_id=host.id,
        payload={"snapshot": short_id, "path": path, "size": header.get("size")},
        client_address=client_address(),
    )
    db.session.commit()
    name = header.get("name") or path.rsplit("/", 1)[-1]
    response = Response(
        stream_with_context(_stream(call_id, header.get("size") or 0)),
        mimetype="application/octet-stream",
    )
    response.headers["Content-Length"] = str(header.get("size") or 0)
    response.headers["Content-Disposition"] = _attachment(name)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _snapshot_and_path(host: Host, snapshot_id: str, default: str | None = None):
    """(full id, short id, normalised ``?path=``) of one of the host's snapshots.

    Plain strings: the waits that follow commit, which expires the snapshot row.
    """
    snapshot = rpc.resolve_snapshot(host, snapshot_id)
    path = rpc.snapshot_path(request.args.get("path"), default=default)
    return snapshot.snapshot_id, snapshot.short_id, path


def _ask(host: Host, method: str, params: dict, key: str, reuse: RpcCall | None = None):
    """Queue the request (or join one in flight), wake the agent, wait for its answer."""
    config = current_app.config
    now = utcnow()
    status = host.status(now, config["RM_OFFLINE_AFTER_SECONDS"])
    if status != "online":
        raise Conflict(
            f"{host.hostname} is {status.replace('_', ' ')}: only its agent can read the "
            "snapshot, and it has not polled the server recently. Start the agent and try again.",
            code="host_offline",
        )
    call = reuse or rpc.request_call(
        current_app.extensions["secretbox"], host, method, params, key=key, now=now
    )
    call_id, hostname = call.id, host.hostname
    db.session.commit()
    current_app.extensions["bus"].publish(host_key(host.id))
    answered = _wait(call_id, config["RM_RPC_WAIT_SECONDS"])
    if answered is None:
        rpc.give_up(call_id, now=utcnow())
        db.session.commit()
        raise AgentTimeout(
            f"The agent on {hostname} did not answer within {config['RM_RPC_WAIT_SECONDS']} s. "
            "It may be busy opening the repository; try again in a moment (a late answer is "
            "kept, so the next try is usually quick)."
        )
    if answered.status == "failed":
        message = answered.error_message or "The agent could not answer."
        if answered.error_code not in _ERROR_STATUS:
            raise AgentError(f"{hostname}: {message}")
        raise AgentRefused(message, code=answered.error_code)
    return answered


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


def _stream(call_id: str, size: int):
    """The file's bytes as the agent uploads them; a failure cuts the response short.

    The response announced ``Content-Length``: a browser shows a download that ends early
    as failed, never as a complete file.
    """
    sent = 0
    digest = hashlib.sha256()
    last_progress = time.monotonic()
    finished = False
    bus = current_app.extensions["bus"]
    try:
        with bus.listen(rpc.rpc_key(call_id)) as waiter:
            while True:
                chunks = rpc.take_chunks(call_id, sent)
                call = db.session.get(RpcCall, call_id, populate_existing=True)
                state = None if call is None else call.status
                expected_digest = None if call is None else call.sha256
                db.session.commit()
                db.session.remove()
                for chunk in chunks:
                    digest.update(chunk)
                    sent += len(chunk)
                    yield chunk
                if chunks:
                    last_progress = time.monotonic()
                    continue
                if sent >= size and state == "done":
                    if expected_digest and digest.hexdigest() != expected_digest:
                        log.error("download %s: sha256 differs from the agent's", call_id)
                        return
                    finished = True
                    return
                if state in (None, "failed", "closed"):
                    log.warning("download %s ended after %d of %d bytes", call_id, sent, size)
                    return
                if time.monotonic() - last_progress > STALL_SECONDS:
                    log.warning("download %s stalled after %d of %d bytes", call_id, sent, size)
                    return
                waiter.wait(RECHECK_SECONDS)
    finally:
        if not finished:
            with current_app.app_context():
                rpc.give_up(call_id, now=utcnow())
                db.session.commit()
                db.session.remove()


def _attachment(name: str) -> str:
    fallback = "".join(
        char if 32 <= ord(char) < 127 and char not in '"\\' else "_" for char in name
    )
    return f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{quote(name)}"
