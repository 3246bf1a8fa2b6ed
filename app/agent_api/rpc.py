"""POST /api/agent/v1/rpc/{id}[/data|/end]: answers to ``rpc.*`` commands (docs/protocol.md).

Whoever waits for the answer (a browser request, perhaps in another worker) is woken on
the bus and re-reads the database anyway. Only a download's upload waits, holding no
database connection, while the server holds as many unread bytes of it as it allows
(back-pressure: a slow browser slows the agent down instead of filling the database).
"""

from __future__ import annotations

import functools
import time
from typing import Optional

from flask import current_app, jsonify, request

from app import download_spool, rpc_handoff
from app.access import agent_endpoint
from app.agent_api import bp, parse
from app.agent_api.routes import _authenticated_host
from app.errors import error_response
from app.extensions import db
from app.limits import max_body_bytes
from app.models.types import utcnow
from app.services import rpc
from app.transaction import commit_and_wake

ROOM_WAIT_SECONDS = 20.0  # then 429: the agent reads its RPC answers for 30 s
ROOM_RECHECK_SECONDS = 1.0  # the browser may read in another worker: re-read this often
CHUNKS_IN_FLIGHT = 2  # a chunk may arrive while the one before it is still being stored
TURN_WAIT_SECONDS = 10.0  # then 416: the chunk before this one never came
TURN_RECHECK_SECONDS = 0.5  # it may be stored by another worker: re-read this often


def _settle(host, rpc_id: str, change):
    """Apply ``change(call)`` to this host's call, commit, wake whoever waits for it."""
    call = rpc.call_for_agent(host, rpc_id)
    result = change(call)
    commit_and_wake(rpc.rpc_key(rpc_id))
    return result


@bp.post("/rpc/<rpc_id>")
@agent_endpoint
def rpc_answer(rpc_id: str):
    host = _authenticated_host()
    body = parse.body()

    def answer(call):
        rpc.answer(call, body, now=utcnow())
        return call.method

    if _settle(host, rpc_id, answer) != "dump":
        return jsonify({"ok": True})
    # A newer agent sends chunks up to this size, two at a time; an older one sends 1 MiB
    # chunks one by one and ignores both.
    return jsonify(
        {"ok": True, "max_chunk_bytes": _chunk_cap(), "chunks_in_flight": CHUNKS_IN_FLIGHT}
    )


def _chunk_cap() -> int:
    return rpc.chunk_cap(max_body_bytes(current_app.config))


def _room_for(host_id: int, rpc_id: str, length: int) -> bool:
    """Wait (on the bus, no connection held) until the download holds fewer than
    ``MAX_UNREAD_BYTES`` unread bytes; False if the browser read nothing for
    ``ROOM_WAIT_SECONDS``. The first chunk always has room: the bound is that plus one."""
    deadline = time.monotonic() + ROOM_WAIT_SECONDS
    with current_app.extensions["bus"].listen(rpc.read_key(rpc_id)) as waiter:
        while True:
            unread = rpc.unread_bytes(rpc_id, host_id) + download_spool.unread_bytes(rpc_id)
            commit_and_wake()  # ends the read: no connection is held while waiting
            if unread == 0 or unread + length <= rpc.MAX_UNREAD_BYTES:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            waiter.wait(min(remaining, ROOM_RECHECK_SECONDS))


def _body() -> Optional[bytes]:
    """The request's bytes, read from the server's input in as few steps as it allows
    (``get_data`` reads 64 KiB at a time and copies twice: a quarter of an 8 MiB chunk's
    time went there). None when the agent sent fewer bytes than it announced."""
    length = request.content_length
    if length is None:  # no body (app/limits.py gave a chunked one its length)
        return request.get_data(cache=False)
    stream = request.environ["wsgi.input"]  # Content-Length is checked against the cap
    parts, remaining = [], length
    while remaining > 0:
        piece = stream.read(remaining)
        if not piece:
            return None
        parts.append(piece)
        remaining -= len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _hand_to_local_download(rpc_id: str, offset: int, data: bytes) -> bool:
    """True once the download streaming in this process took ``data`` directly."""
    reader = rpc_handoff.readers().get(rpc_id)
    if reader is None:
        return False
    wake = functools.partial(current_app.extensions["bus"].wake_local, rpc.rpc_key(rpc_id))
    return reader.offer(offset, data, wake, rpc_handoff.TAKE_SECONDS)


@bp.post("/rpc/<rpc_id>/data")
@agent_endpoint
def rpc_data(rpc_id: str):
    host = _authenticated_host()
    try:
        offset = int(request.args.get("offset", ""))
    except ValueError:
        parse.invalid("offset", "must be a whole number in the query string (?offset=N)")
    cap = _chunk_cap()
    if request.content_length is not None and request.content_length > cap:
        return error_response(413, "too_large", f"At most {cap} bytes a request.")
    data = _body()
    if data is None:
        return error_response(400, "incomplete_body", "Fewer bytes arrived than announced.")
    try:
        return _take_chunk(host, rpc_id, offset, data)
    except rpc.RpcGap as gap:
        db.session.rollback()
        return error_response(416, gap.code, gap.message, committed=gap.committed)


def _in_turn(host, rpc_id: str, offset: int, data: bytes) -> Optional[int]:
    """:func:`app.services.rpc.check_data`, waiting while the chunk before this one is
    still on its way (the agent sends ``CHUNKS_IN_FLIGHT`` at a time, and the later one may
    arrive first, in this worker or another): up to ``TURN_WAIT_SECONDS``, then 416 as for
    any gap. The call's lock is released while waiting."""
    cap = _chunk_cap()
    try:
        return rpc.check_data(rpc.call_for_agent(host, rpc_id), offset, data)
    except rpc.RpcGap as gap:
        if not gap.committed < offset <= gap.committed + cap * (CHUNKS_IN_FLIGHT - 1):
            raise
    commit_and_wake()
    deadline = time.monotonic() + TURN_WAIT_SECONDS
    with current_app.extensions["bus"].listen(rpc.rpc_key(rpc_id)) as waiter:
        while True:  # listening first: a chunk stored after this read still wakes it
            try:
                return rpc.check_data(rpc.call_for_agent(host, rpc_id), offset, data)
            except rpc.RpcGap as gap:
                remaining = deadline - time.monotonic()
                if gap.committed > offset or remaining <= 0:
                    raise
            commit_and_wake()
            waiter.wait(min(remaining, TURN_RECHECK_SECONDS))


def _take_chunk(host, rpc_id: str, offset: int, data: bytes):
    """Checked, then handed to the download streaming in this process or, once there is
    room, left as a file for one streaming in another worker of this machine
    (app/download_spool.py) or stored in the database for it; ``{"committed": N}`` or 429
    ``rpc_busy``."""
    host_id = host.id
    repeat = _in_turn(host, rpc_id, offset, data)
    commit_and_wake()  # the call's lock is released while the bytes find their way
    if repeat is not None:
        return jsonify({"committed": repeat})
    taken = _hand_to_local_download(rpc_id, offset, data)
    if not taken:
        if not _room_for(host_id, rpc_id, len(data)):
            response = error_response(
                429,
                "rpc_busy",
                "The browser has not read the bytes sent so far: send this chunk again later.",
            )
            response.headers["Retry-After"] = "1"
            return response
        taken = download_spool.put(rpc_id, offset, data)  # a download in another worker here
    committed = _settle(
        host, rpc_id, lambda call: rpc.append_data(call, offset, data, store=not taken)
    )
    return jsonify({"committed": committed})


@bp.post("/rpc/<rpc_id>/end")
@agent_endpoint
def rpc_end(rpc_id: str):
    host = _authenticated_host()
    body = parse.body()
    _settle(host, rpc_id, lambda call: rpc.end(call, body, now=utcnow()))
    return jsonify({"ok": True})
