"""POST /api/agent/v1/rpc/{id}[/data|/end]: answers to ``rpc.*`` commands (docs/protocol.md).

Whoever waits for the answer (a browser request, perhaps in another worker) is woken on
the bus and re-reads the database anyway; nothing here waits.
"""

from __future__ import annotations

from flask import jsonify, request

from app.access import agent_endpoint
from app.agent_api import bp, parse
from app.agent_api.routes import _authenticated_host
from app.errors import error_response
from app.extensions import db
from app.models.types import utcnow
from app.services import rpc
from app.transaction import commit_and_wake


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
    _settle(host, rpc_id, lambda call: rpc.answer(call, body, now=utcnow()))
    return jsonify({"ok": True})


@bp.post("/rpc/<rpc_id>/data")
@agent_endpoint
def rpc_data(rpc_id: str):
    host = _authenticated_host()
    try:
        offset = int(request.args.get("offset", ""))
    except ValueError:
        parse.invalid("offset", "must be a whole number in the query string (?offset=N)")
    if request.content_length is not None and request.content_length > rpc.MAX_CHUNK_BYTES:
        return error_response(413, "too_large", f"At most {rpc.MAX_CHUNK_BYTES} bytes a request.")
    data = request.get_data(cache=False)
    try:
        committed = _settle(host, rpc_id, lambda call: rpc.append_data(call, offset, data))
    except rpc.RpcGap as gap:
        db.session.rollback()
        return error_response(416, gap.code, gap.message, committed=gap.committed)
    return jsonify({"committed": committed})


@bp.post("/rpc/<rpc_id>/end")
@agent_endpoint
def rpc_end(rpc_id: str):
    host = _authenticated_host()
    body = parse.body()
    _settle(host, rpc_id, lambda call: rpc.end(call, body, now=utcnow()))
    return jsonify({"ok": True})
