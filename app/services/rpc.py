"""Synchronous requests to an agent: ``rpc.ls``, ``rpc.dump`` and ``rpc.repo_test``
(docs/protocol.md).

A person waits in a browser for these. The server queues an ``rpc.*`` command, the agent
answers on ``/api/agent/v1/rpc/{id}``; the database holds the answer (and, for a dump, the
bytes until the browser has read them), so the answer may arrive at any worker.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import delete, func, select, update

from app.extensions import db
from app.models import Command, Host, RpcCall, RpcChunk, Snapshot
from app.secretbox import SecretBox
from app.services import audit, backends, commands, repository, validate
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, ServiceError, ValidationFailed

METHODS = ("ls", "dump", "repo_test")
MAX_ENTRIES = 2000
MAX_CHUNK_BYTES = 8 * 1024 * 1024  # one POST /rpc/{id}/data (an older agent sends 1 MiB)
MAX_UNREAD_BYTES = 32 * 1024 * 1024  # a download's bytes stored and not yet read (plus one chunk)
READ_BYTES = 32 * 1024 * 1024  # what the browser's side reads in one query (plus one chunk)
MAX_PATH = 4096
NODE_TYPES = frozenset({"file", "dir", "symlink", "dev", "chardev", "fifo", "socket", "irregular"})
ERROR_CODES = frozenset(
    {
        "not_found",
        "not_a_directory",
        "not_a_file",
        "too_large",
        "invalid_params",
        "no_credentials",
        "restic_failed",
        "refused",
    }
)
KEEP_FOR = timedelta(hours=1)  # answers (the listing cache) and abandoned downloads
JOIN_PENDING_FOR = timedelta(minutes=2)  # a second ask joins a call this young
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
# How the browser hears an agent's refusal (the protocol's error codes keep their meaning).
_ERROR_STATUS = {
    "not_found": 404,
    "not_a_directory": 422,
    "not_a_file": 422,
    "too_large": 413,
    "invalid_params": 422,
    "refused": 403,
    "no_credentials": 409,
}


class RpcRefused(ServiceError):
    """An agent's answer that breaks the protocol (the agent logs it and stops)."""

    status = 422
    code = "invalid_answer"


class RpcGap(ServiceError):
    status = 416
    code = "rpc_gap"

    def __init__(self, committed: int):
        super().__init__(f"Bytes are missing: the server has {committed}; resend from there.")
        self.committed = committed


class AgentTimeout(ServiceError):
    status = 504
    code = "agent_timeout"

    def __init__(self, hostname: str, waited_seconds: float):
        super().__init__(
            f"The agent on {hostname} did not answer within {waited_seconds} s. "
            "It may be busy opening the repository; try again in a moment (a late answer is "
            "kept, so the next try is usually quick)."
        )


class AgentError(ServiceError):
    status = 502
    code = "agent_error"


class AgentRefused(ServiceError):
    """The agent answered with one of the protocol's error codes: it keeps its meaning."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message, code=code)
        self.status = _ERROR_STATUS[code]


def rpc_key(rpc_id: str) -> str:
    """The bus key a waiting browser listens on."""
    return f"rpc:{rpc_id}"


def read_key(rpc_id: str) -> str:
    """The bus key an agent's upload waits on while the download has no room (the browser
    woke it by reading)."""
    return f"rpc-read:{rpc_id}"


def chunk_cap(max_body_bytes: int) -> int:
    """The largest chunk the server takes: :data:`MAX_CHUNK_BYTES`, or the app-wide body
    limit when that is smaller."""
    return max(1, min(MAX_CHUNK_BYTES, max_body_bytes))


# --- what the browser asks ------------------------------------------------------------------


def resolve_snapshot(host: Host, value: Any) -> Snapshot:
    """One of the host's snapshots by its id or a unique prefix of at least 8 hex digits."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if not _HEX.match(text):
        raise ValidationFailed(
            "snapshot_id must be a snapshot id: 8 to 64 hexadecimal digits.",
            fields={"snapshot_id": ["Pick a snapshot (8 to 64 hexadecimal digits)."]},
        )
    matches = list(
        db.session.scalars(
            select(Snapshot)
            .where(Snapshot.host_id == host.id, Snapshot.snapshot_id.startswith(text))
            .limit(2)
        )
    )
    if not matches:
        raise NotFound(
            f"{host.hostname} has no snapshot {text[:16]}. The list is what restic reported "
            "after the last backup; run “Snapshots” to refresh it.",
            code="snapshot_not_found",
        )
    if len(matches) > 1:
        raise ValidationFailed(
            f"More than one snapshot starts with {text}: give more digits.",
            fields={"snapshot_id": ["More than one snapshot starts with these digits."]},
        )
    return matches[0]


def snapshot_path(value: Any, field: str = "path", *, default: Optional[str] = None) -> str:
    """An absolute POSIX path inside a snapshot, normalised (``/a/b``; ``/`` for the root).

    ``..`` is refused rather than resolved: a path in a snapshot is what restic printed.
    """
    if (value is None or value == "") and default is not None:
        return default
    message = None
    if not isinstance(value, str) or not value:
        message = "must be an absolute path such as /etc/nginx"
    elif len(value) > MAX_PATH:
        message = f"must be at most {MAX_PATH} characters"
    elif "\x00" in value:
        message = "must not contain NUL"  # line breaks are fine: file names may hold them
    elif not value.startswith("/"):
        message = f"must be absolute (start with /): {value[:200]!r}"
    elif ".." in value.split("/"):
        message = "must not contain .. components"
    if message:
        raise ValidationFailed(f"{field} {message}.", fields={field: [f"Path {message}."]})
    normalised = posixpath.normpath(value)
    return "/" if normalised in ("/", "//") else normalised


def cache_key(method: str, snapshot_id: str, path: str) -> str:
    return hashlib.sha256(f"{method}\x00{snapshot_id}\x00{path}".encode()).hexdigest()


def cached_listing(host: Host, key: str, *, now: datetime, max_age_seconds: int):
    """The newest answered ``ls`` for this question younger than ``max_age_seconds``."""
    if max_age_seconds <= 0:
        return None
    return _newest(host, key, "answered", since=now - timedelta(seconds=max_age_seconds))


def pending_call(host: Host, key: str, *, now: datetime) -> Optional[RpcCall]:
    """A call for the same question still being worked on (a double click asks once)."""
    return _newest(host, key, "pending", since=now - JOIN_PENDING_FOR)


def _newest(host: Host, key: str, status: str, *, since: datetime) -> Optional[RpcCall]:
    # The key names the method too (cache_key): no ``ls`` answer serves a ``dump``.
    return db.session.scalar(
        select(RpcCall)
        .where(
            RpcCall.host_id == host.id,
            RpcCall.cache_key == key,
            RpcCall.status == status,
            RpcCall.created_at >= since,
        )
        .order_by(RpcCall.created_at.desc())
        .limit(1)
    )


def request_call(
    box: SecretBox,
    host: Host,
    method: str,
    params: dict,
    *,
    key: str,
    now: datetime,
    secret_params: Optional[dict] = None,
) -> RpcCall:
    """Record the call and queue its command; the caller commits and wakes the host.

    ``secret_params`` travel sealed in the command only (never in the call's row)."""
    assert method in METHODS
    call = RpcCall(
        id=uuid.uuid4().hex,
        host_id=host.id,
        method=method,
        cache_key=key,
        params=params,
        status="pending",
        created_at=now,
    )
    db.session.add(call)
    db.session.flush()
    command = commands.enqueue(
        box,
        host,
        f"rpc.{method}",
        payload=dict(params, rpc_id=call.id),
        secret_payload=secret_params,
        now=now,
    )
    call.command_id = command.id
    return call


def give_up(call_id: str, *, now: datetime) -> None:
    """Nobody waits any more: an unsent command is withdrawn, a download's bytes dropped.

    A listing the agent is working on stays ``pending``: its late answer fills the cache
    for the next try. One whose command never left is closed, so the next try asks anew
    instead of waiting for an answer that cannot come.
    """
    call = db.session.get(RpcCall, call_id, with_for_update=True)
    if call is None:
        return
    withdrawn = db.session.execute(
        update(Command)
        .where(Command.id == call.command_id, Command.state == "queued")
        .values(state="expired", result="nobody waited for the answer any more")
    ).rowcount
    if (call.status == "pending" and withdrawn) or (
        call.method == "dump" and call.status in ("pending", "answered")
    ):
        call.status = "closed"
        call.finished_at = now
        db.session.execute(delete(RpcChunk).where(RpcChunk.rpc_id == call.id))


@dataclass(frozen=True)
class Question:
    """What to ask a host's agent about one snapshot (plain values: they outlive the waits,
    which commit and close the session)."""

    method: str
    snapshot_id: str
    short_id: str
    path: str
    params: dict
    key: str


def listing_question(host: Host, snapshot_id: Any, path: Any) -> Question:
    """``ls`` of one directory of one of the host's snapshots (``/`` when no path is given)."""
    snapshot = resolve_snapshot(host, snapshot_id)
    path = snapshot_path(path, default="/")
    params = {"snapshot_id": snapshot.snapshot_id, "path": path, "max_entries": MAX_ENTRIES}
    return Question(
        "ls",
        snapshot.snapshot_id,
        snapshot.short_id,
        path,
        params,
        cache_key("ls", snapshot.snapshot_id, path),
    )


def download_question(host: Host, snapshot_id: Any, path: Any, *, max_bytes: int) -> Question:
    """``dump`` of one file of one of the host's snapshots, refused above ``max_bytes``."""
    snapshot = resolve_snapshot(host, snapshot_id)
    path = snapshot_path(path)
    if path == "/":
        raise ValidationFailed("path must name a file.", fields={"path": ["Name a file."]})
    params = {"snapshot_id": snapshot.snapshot_id, "path": path, "max_bytes": max_bytes}
    return Question(
        "dump",
        snapshot.snapshot_id,
        snapshot.short_id,
        path,
        params,
        cache_key("dump", snapshot.snapshot_id, path),
    )


def ask(
    box: SecretBox, host: Host, question: Question, *, now: datetime, offline_after_seconds: int
) -> str:
    """Queue the question for the host's agent (a listing joins the same one in flight) and
    return the call id; the caller commits, wakes the host and waits on :func:`rpc_key`."""
    _require_online(host, now, offline_after_seconds, "only its agent can read the snapshot")
    call = pending_call(host, question.key, now=now) if question.method == "ls" else None
    if call is None:
        call = request_call(box, host, question.method, question.params, key=question.key, now=now)
    return call.id


def _require_online(host: Host, now: datetime, offline_after_seconds: int, what: str) -> None:
    status = host.status(now, offline_after_seconds)
    if status != "online":
        raise Conflict(
            f"{host.hostname} is {status.replace('_', ' ')}: {what}, and it has not polled "
            "the server recently. Start the agent and try again.",
            code="host_offline",
        )


def ask_repo_test(
    box: SecretBox,
    host: Host,
    connection: backends.Settings,
    *,
    now: datetime,
    offline_after_seconds: int,
) -> str:
    """Ask the host's agent to open the repository with ``connection`` (not saved anywhere:
    it travels sealed in the command) — ``restic cat config``. Returns the call id."""
    _require_online(host, now, offline_after_seconds, "only its agent can reach the repository")
    params = {"backend": connection.backend.key}
    section = connection.agent_section()
    if connection.username:  # the REST server's user (config.update sends it in clear)
        section["username"] = connection.username
    call = request_call(
        box,
        host,
        "repo_test",
        params,
        key=uuid.uuid4().hex,  # never joined nor cached: every test is asked anew
        now=now,
        secret_params={"repository": section},
    )
    return call.id


def record_repo_test(
    actor: Actor,
    host_id: int,
    connection: backends.Settings,
    result: dict,
    *,
    client_address: Optional[str],
) -> None:
    """Audit a connection test: which backend, which variable names, the outcome; never a
    value (nor the password inside a URL)."""
    audit.record(
        actor,
        "host.repository_tested",
        target_type="host",
        target_id=host_id,
        payload={
            "url": repository.redact_url(connection.url),
            "backend": connection.backend.key,
            "repo_env_names": connection.env_names,
            "ok": result["ok"],
        },
        client_address=client_address,
    )


def repo_test_result(call: RpcCall) -> dict:
    """``{"ok", "detail"}`` of an answered connection test (an agent's refusal too)."""
    if call.status == "failed":
        return {"ok": False, "detail": call.error_message or "The agent could not test it."}
    result = call.result or {}
    return {"ok": bool(result.get("ok")), "detail": result.get("detail") or ""}


def answer_of(call: RpcCall, *, hostname: str) -> RpcCall:
    """The call the agent answered, or its refusal raised as the matching error."""
    if call.status == "failed":
        message = call.error_message or "The agent could not answer."
        if call.error_code not in _ERROR_STATUS:
            raise AgentError(f"{hostname}: {message}")
        raise AgentRefused(message, code=call.error_code)
    return call


def record_download(
    actor: Actor, host_id: int, question: Question, *, size, client_address: Optional[str]
) -> None:
    """Audit a file handed out of a snapshot (which file, how big; never its content)."""
    audit.record(
        actor,
        "snapshot.file_downloaded",
        target_type="host",
        target_id=host_id,
        payload={"snapshot": question.short_id, "path": question.path, "size": size},
        client_address=client_address,
    )


def record_listing(
    actor: Actor, host_id: int, question: Question, *, cached: bool, client_address: Optional[str]
) -> None:
    """Audit a directory of a snapshot shown to somebody (which one; never its names)."""
    audit.record(
        actor,
        "snapshot.directory_listed",
        target_type="host",
        target_id=host_id,
        payload={"snapshot": question.short_id, "path": question.path, "cached": cached},
        client_address=client_address,
    )


# --- what the agent answers -----------------------------------------------------------------


def call_for_agent(host: Host, rpc_id: str) -> RpcCall:
    call = db.session.get(RpcCall, rpc_id, with_for_update=True)
    if call is None or call.host_id != host.id:
        raise NotFound(f"No request {rpc_id} for this host.", code="rpc_not_found")
    return call


def answer(call: RpcCall, body: Any, *, now: datetime) -> None:
    """The agent's answer: a listing, a download's header, or an error."""
    if call.status not in ("pending",):
        if call.status == "closed":
            raise _Closed()
        raise Conflict("This request was answered already.", code="rpc_answered")
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise RpcRefused('The answer must be {"ok": true, "result": …} or {"ok": false, …}.')
    call.answered_at = now
    if call.method == "repo_test" and isinstance(body.get("detail"), str):
        # The test's own outcome ({"ok": false, "detail"} is an answer, not a failure).
        body = {"ok": True, "result": {"ok": body["ok"], "detail": body["detail"]}}
    if not body["ok"]:
        code, message = _error(body)
        call.status, call.error_code, call.error_message = "failed", code, message
        call.finished_at = now
        return
    result = body.get("result")
    if call.method == "repo_test":
        call.result = _repo_test(result if isinstance(result, dict) else body)
        call.status = "answered"
        call.finished_at = now
    elif call.method == "ls":
        call.result = _listing(result, call.params.get("max_entries", MAX_ENTRIES))
        call.status = "answered"
        call.finished_at = now
    else:
        header = _dump_header(result, call.params.get("max_bytes", 0))
        call.result, call.size, call.status = header, header["size"], "answered"


def unread_bytes(call_id: str, host_id: int) -> int:
    """Bytes of the host's download stored and not yet handed to the browser (0: none, or
    no such call)."""
    oldest = select(func.min(RpcChunk.byte_offset)).where(RpcChunk.rpc_id == call_id)
    row = db.session.execute(
        select(RpcCall.bytes_committed, oldest.scalar_subquery()).where(
            RpcCall.id == call_id, RpcCall.host_id == host_id
        )
    ).first()
    if row is None or row[1] is None:
        return 0
    return max(0, row[0] - row[1])


def append_data(call: RpcCall, offset: Any, data: bytes, *, store: bool = True) -> int:
    """Store the next bytes of a download; the answer is how many bytes are stored.

    ``store=False``: the download took them directly (app/rpc_handoff.py); only the count
    moves on."""
    repeat = check_data(call, offset, data)
    if repeat is not None:
        return repeat
    if data:
        if store:
            _store_chunk(call.id, offset, data)
        call.bytes_committed = call.bytes_committed + len(data)
    return call.bytes_committed


def check_data(call: RpcCall, offset: Any, data: bytes) -> Optional[int]:
    """Raise unless ``data`` at ``offset`` are the download's next bytes; the stored count
    when they repeat bytes stored already, else None."""
    if call.method != "dump":
        raise Conflict("Only a download takes bytes.", code="rpc_not_dump")
    if call.status == "closed":
        raise _Closed()
    if call.status != "answered":
        raise Conflict(
            "Bytes are accepted only after the header and before the end.", code="rpc_state"
        )
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise RpcRefused("offset must be a whole number ≥ 0.")
    if len(data) > MAX_CHUNK_BYTES:
        raise _TooLarge(f"A chunk may hold at most {MAX_CHUNK_BYTES} bytes.")
    committed = call.bytes_committed
    if offset < committed and offset + len(data) <= committed:
        return committed  # a repeat of a chunk already stored
    if offset != committed:
        raise RpcGap(committed)
    if committed + len(data) > (call.size or 0):
        raise _TooLarge(
            f"More bytes than the {call.size} the header announced: the download is refused."
        )
    return None


def end(call: RpcCall, body: Any, *, now: datetime) -> None:
    """The last word on a download: complete (sizes must agree) or failed half way."""
    if call.method != "dump":
        raise Conflict("Only a download has an end.", code="rpc_not_dump")
    if call.status == "closed":
        raise _Closed()
    if call.status != "answered":
        raise Conflict("This download has ended already.", code="rpc_state")
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise RpcRefused('The end must be {"ok": true, "bytes", "sha256"} or {"ok": false, …}.')
    call.finished_at = now
    if not body["ok"]:
        call.status = "failed"
        call.error_code, call.error_message = _error(body)
        return
    size, digest = body.get("bytes"), body.get("sha256")
    if size != call.bytes_committed or size != call.size:
        call.status, call.error_code = "failed", "restic_failed"
        call.error_message = (
            f"The host sent {call.bytes_committed} of {call.size} bytes and reported {size!r}."
        )
        return
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise RpcRefused("sha256 must be 64 lowercase hexadecimal digits.")
    call.sha256, call.status = digest, "done"


class _Closed(ServiceError):
    status = 410
    code = "rpc_closed"

    def __init__(self):
        super().__init__("Nobody waits for this answer any more: stop sending.")


class _TooLarge(ServiceError):
    status = 413
    code = "too_large"


def _error(body: dict) -> tuple[str, str]:
    code = body.get("error")
    code = code if isinstance(code, str) and code in ERROR_CODES else "restic_failed"
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        message = "The agent could not answer (it gave no reason)."
    return code, message.strip()[:2000]


def _repo_test(result: dict) -> dict:
    """``{"ok": bool, "detail": text}``: restic's own words, cut to 2,000 characters."""
    reachable, detail = result.get("ok"), result.get("detail")
    if not isinstance(reachable, bool) or not isinstance(detail, str):
        raise RpcRefused('A connection test answers {"ok": bool, "detail": "…"}.')
    reason = validate.unstorable(detail)
    if reason:
        raise RpcRefused(f"detail {reason}.")
    return {"ok": reachable, "detail": detail.strip()[:2000]}


def _listing(result: Any, max_entries: int) -> dict:
    if not isinstance(result, dict) or not isinstance(result.get("items"), list):
        raise RpcRefused('A listing must be {"items": [...], "truncated": bool}.')
    raw = result["items"]
    if len(raw) > max_entries:
        raise RpcRefused(f"A listing may hold at most {max_entries} items.")
    items = [_node(item, index) for index, item in enumerate(raw)]
    items.sort(key=lambda item: (item["type"] != "dir", natural_key(item["name"]), item["name"]))
    return {"items": items, "truncated": result.get("truncated") is True}


_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple:
    """Sorts as people count: file2 before file10, case folded (directories first is the
    caller's business). Digit runs compare by value, ahead of letters as in ASCII."""
    return tuple(
        (0, int(part), part) if part.isascii() and part.isdigit() else (1, 0, part.casefold())
        for part in _DIGITS.split(name)
        if part
    )


def _node(item: Any, index: int) -> dict:
    def refuse(what: str):
        raise RpcRefused(f"items[{index}]: {what}.")

    if not isinstance(item, dict):
        refuse("must be an object")
    name, path, kind = item.get("name"), item.get("path"), item.get("type")
    if not isinstance(name, str) or not name or len(name) > 1024 or "/" in name:
        refuse("name must be a file name")
    if not isinstance(path, str) or not path.startswith("/") or len(path) > MAX_PATH:
        refuse("path must be an absolute path")
    if kind not in NODE_TYPES:
        refuse(f"type must be one of {', '.join(sorted(NODE_TYPES))}")
    size = item.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        refuse("size must be a whole number ≥ 0 or null")
    node = {"name": name, "type": kind, "path": path, "size": size if kind == "file" else None}
    for key, limit in (("mtime", 64), ("permissions", 32)):
        value = item.get(key)
        node[key] = value if isinstance(value, str) and len(value) <= limit else None
    return node


def _dump_header(result: Any, max_bytes: int) -> dict:
    if not isinstance(result, dict):
        raise RpcRefused('A download header must be {"name", "size", …}.')
    name, size = result.get("name"), result.get("size")
    if not isinstance(name, str) or not name or len(name) > 1024 or "/" in name:
        raise RpcRefused("name must be a file name.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise RpcRefused("size must be a whole number ≥ 0.")
    if size > max_bytes:
        raise _TooLarge(f"The file is {size} bytes, over the {max_bytes}-byte cap.")
    mtime = result.get("mtime")
    return {"name": name, "size": size, "mtime": mtime if isinstance(mtime, str) else None}


# --- download: the browser's side of the bytes ----------------------------------------------


def take_chunks(call_id: str, from_offset: int, max_bytes: int = READ_BYTES) -> list[bytes]:
    """The stored chunks from ``from_offset`` on, removed as they are handed out: those
    starting within ``max_bytes`` (so at most ``max_bytes`` + one chunk), in one query."""
    upto = from_offset + max(1, max_bytes)
    driver = _psycopg()
    if driver is not None:  # bytea in binary: five times faster than psycopg's hex text
        with driver.cursor(binary=True) as cursor:
            cursor.execute(
                "SELECT byte_offset, data FROM rpc_chunks WHERE rpc_id = %s "
                "AND byte_offset >= %s AND byte_offset < %s ORDER BY byte_offset",
                (call_id, from_offset, upto),
            )
            rows = cursor.fetchall()
    else:
        rows = db.session.execute(
            select(RpcChunk.byte_offset, RpcChunk.data)
            .where(
                RpcChunk.rpc_id == call_id,
                RpcChunk.byte_offset >= from_offset,
                RpcChunk.byte_offset < upto,
            )
            .order_by(RpcChunk.byte_offset)
        ).all()
    expected, data = from_offset, []
    for byte_offset, chunk in rows:
        if byte_offset != expected:
            break
        data.append(bytes(chunk))
        expected += len(chunk)
    if data:
        db.session.execute(
            # Everything before ``expected``: also a chunk stored again after the download
            # took its bytes directly (an upload retried after its commit failed).
            delete(RpcChunk).where(RpcChunk.rpc_id == call_id, RpcChunk.byte_offset < expected)
        )
    return data


def _store_chunk(call_id: str, offset: int, data: bytes) -> None:
    driver = _psycopg()
    if driver is None:
        db.session.add(RpcChunk(rpc_id=call_id, byte_offset=offset, data=data))
        return
    db.session.flush()  # the call's own changes first, in order
    driver.execute(  # bytea sent in binary (%b), in the session's transaction
        "INSERT INTO rpc_chunks (rpc_id, byte_offset, data) VALUES (%s, %s, %b)",
        (call_id, offset, data),
    )


def _psycopg():
    """The session's psycopg connection on PostgreSQL (same transaction), else None."""
    connection = db.session.connection()
    if connection.dialect.name != "postgresql":
        return None
    return connection.connection.driver_connection


# --- housekeeping ---------------------------------------------------------------------------


def sweep(now: datetime) -> int:
    """Forget calls older than an hour (cached listings, abandoned downloads, their bytes)."""
    old = select(RpcCall.id).where(RpcCall.created_at < now - KEEP_FOR)
    db.session.execute(delete(RpcChunk).where(RpcChunk.rpc_id.in_(old)))
    return db.session.execute(delete(RpcCall).where(RpcCall.created_at < now - KEEP_FOR)).rowcount
