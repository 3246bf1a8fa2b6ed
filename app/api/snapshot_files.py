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

from app import agent_calls, download_spool, rpc_handoff
from app.access import Role, require_role
from app.api import bp
from app.authn import client_address, current_actor
from app.extensions import db
from app.models import RpcCall
from app.models.types import utcnow
from app.services import rpc
from app.services.hosts import get_host
from app.transaction import commit_and_wake

STALL_SECONDS = 60.0  # a download that gets no byte for this long is given up
log = logging.getLogger("restic_manager.downloads")


@bp.get("/hosts/<int:host_id>/snapshots/<snapshot_id>/tree")
@require_role(Role.operator)
def snapshot_tree(host_id: int, snapshot_id: str):
    """Operators only, audited with the path: a listing tells what a host holds."""
    host = get_host(host_id)
    question = rpc.listing_question(host, snapshot_id, request.args.get("path"))
    actor, host_id = current_actor(), host.id  # before the waits detach the user and host
    call = rpc.cached_listing(
        host,
        question.key,
        now=utcnow(),
        max_age_seconds=current_app.config["RM_TREE_CACHE_SECONDS"],
    )
    cached = call is not None
    if call is None:
        call = agent_calls.ask(host, question)
    result = call.result or {}
    rpc.record_listing(actor, host_id, question, cached=cached, client_address=client_address())
    commit_and_wake()
    return jsonify(
        {
            "snapshot_id": question.snapshot_id,
            "short_id": question.short_id,
            "path": question.path,
            "items": result.get("items", []),
            "truncated": bool(result.get("truncated")),
            "cached": cached,
        }
    )


@bp.get("/hosts/<int:host_id>/snapshots/<snapshot_id>/download")
@require_role(Role.operator)
def snapshot_download(host_id: int, snapshot_id: str):
    host = get_host(host_id)
    question = rpc.download_question(
        host,
        snapshot_id,
        request.args.get("path"),
        max_bytes=current_app.config["RM_DOWNLOAD_MAX_MB"] * 1024 * 1024,
    )
    actor, host_id = current_actor(), host.id  # before the waits detach the user and host
    call = agent_calls.ask(host, question)
    call_id = call.id
    header = dict(call.result or {})
    rpc.record_download(
        actor, host_id, question, size=header.get("size"), client_address=client_address()
    )
    commit_and_wake()
    name = header.get("name") or question.path.rsplit("/", 1)[-1]
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


def _stream(call_id: str, size: int):
    """The file's bytes as the agent uploads them; a failure cuts the response short.

    The response announced ``Content-Length``: a browser shows a download that ends early
    as failed, never as a complete file.
    """
    sent = 0
    digest = hashlib.sha256()
    last_progress = time.monotonic()
    finished = False
    paths = {"direct": 0, "files": 0, "database": 0}  # how the bytes came (logged at the end)
    bus = current_app.extensions["bus"]
    try:
        with (
            bus.listen(rpc.rpc_key(call_id)) as waiter,
            rpc_handoff.readers().reading(call_id) as reader,
            download_spool.reading(call_id) as spool,
        ):
            while True:
                chunks = rpc.take_chunks(call_id, sent)
                call = db.session.get(RpcCall, call_id, populate_existing=True)
                state = None if call is None else call.status
                expected_digest = None if call is None else call.sha256
                stored = sum(len(chunk) for chunk in chunks)
                reader.advance(stored)
                paths["database"] += stored
                # Then what an upload in this process hands over, or one in another worker
                # of this machine left as a file, in whatever order they come.
                while True:
                    more, path = reader.take(), "direct"
                    if more is None and spool is not None:
                        more, path = spool.take(reader.position), "files"
                        if more is not None:
                            reader.advance(len(more))
                    if more is None:
                        break
                    chunks.append(more)
                    paths[path] += len(more)
                # The chunks handed out are gone: an upload waiting for room may go on.
                commit_and_wake(*([rpc.read_key(call_id)] if chunks else []))
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
                    log.info(
                        "download %s: %d bytes (%d handed over in this process, %d through "
                        "files, %d through the database)",
                        call_id,
                        sent,
                        paths["direct"],
                        paths["files"],
                        paths["database"],
                    )
                    return
                if state in (None, "failed", "closed"):
                    log.warning("download %s ended after %d of %d bytes", call_id, sent, size)
                    return
                if time.monotonic() - last_progress > STALL_SECONDS:
                    log.warning("download %s stalled after %d of %d bytes", call_id, sent, size)
                    return
                waiter.wait(agent_calls.RECHECK_SECONDS)
    finally:
        if not finished:
            with current_app.app_context():
                rpc.give_up(call_id, now=utcnow())
                commit_and_wake()
                db.session.remove()


def _attachment(name: str) -> str:
    fallback = "".join(
        char if 32 <= ord(char) < 127 and char not in '"\\' else "_" for char in name
    )
    return f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{quote(name)}"
