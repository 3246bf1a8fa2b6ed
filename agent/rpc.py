"""Synchronous requests from a person waiting in a browser (docs/protocol.md, "rpc.*").

``rpc.ls`` lists one directory of a snapshot, ``rpc.dump`` streams one file of it,
``rpc.repo_test`` tries repository settings that are not saved yet (``restic cat config``
with the settings in its payload, which are never stored). Each call runs on its own
thread, at most ``MAX_CONCURRENT`` at once (the others wait), never on the poll loop.
restic runs with ``--no-lock`` and the everyday credentials, through the one subprocess
seam. An answer is never spooled: after a few quick tries it is dropped (the person was
told "timed out" and can ask again).
"""

import collections
import contextlib
import functools
import hashlib
import logging
import posixpath
import queue
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from agent import facts
from agent.backup_policy import BackupPolicy
from agent.client import Client, ClientError, Gap, Gone, Refused, RetryableError
from agent.config import DEFAULT_BACKUP_PATHS, ConfigError
from agent.repository import Credentials, Repository, checked_credentials
from agent.restic import errors, execute
from agent.restic.backends import BackendRefused
from agent.restic.dump import dump_argv
from agent.restic.ls import DirectoryListing, NodeIndex, ls_argv, normalise_path
from agent.restic.messages import json_object
from agent.restic.probe import repo_test_argv
from agent.restic.units import format_bytes

MAX_CONCURRENT = 4
MAX_WAITING = 64  # beyond this, new calls are refused rather than queued without end
CHUNK_BYTES = 1024 * 1024  # what a server that names no max_chunk_bytes takes
MAX_CHUNK_BYTES = 8 * 1024 * 1024  # the most this agent sends in one request
QUEUED_CHUNKS = 2  # chunks read ahead of those being sent
MAX_IN_FLIGHT = 2  # chunks posted at once, when the server offers it (memory: 5 at most)
BUSY_GIVE_UP_SECONDS = 600.0  # a 429 (the browser reads slowly) is waited out this long
DEFAULT_MAX_ENTRIES = 2000
RETRY_DELAYS = (0.5, 1.5)  # three tries in all, then the answer is dropped
LS_TIMEOUT_SECONDS = 300.0
STOP_GRACE_SECONDS = 2.0  # --no-lock: a killed dump leaves nothing behind
REPO_TEST_TIMEOUT_SECONDS = 60.0  # restic 0.14 waits for ever on a server that never answers
_RPC_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_SNAPSHOT_ID = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger(__name__)

Answer = Dict[str, Any]


class RpcFailed(Exception):
    """The call cannot be answered with a result: ``{"ok": false, "error": code, …}``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def answer(self) -> Answer:
        return {"ok": False, "error": self.code, "message": self.message}


def rpc_id_of(payload: Mapping[str, Any]) -> str:
    """The call's id (32 hex digits); ``ValueError`` when it has none: it cannot be answered."""
    rpc_id = payload.get("rpc_id")
    if not isinstance(rpc_id, str) or not _RPC_ID.match(rpc_id):
        raise ValueError("payload.rpc_id must be 32 hex digits")
    return rpc_id


class RpcRunner:
    def __init__(
        self,
        new_client: Callable[[], Client],
        load_credentials: Callable[[], Optional[Dict[str, Any]]],
        restic_binary: str = "restic",
        cache_dir: Optional[Path] = None,
        max_concurrent: int = MAX_CONCURRENT,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        backup_paths: str = DEFAULT_BACKUP_PATHS,
        agent_home: Optional[Path] = None,
        restic_version: Optional[Callable[[], Optional[str]]] = None,
        repo_test_timeout: float = REPO_TEST_TIMEOUT_SECONDS,
        busy_give_up: float = BUSY_GIVE_UP_SECONDS,
    ):
        self.new_client = new_client
        self.busy_give_up = busy_give_up
        self._restic_version = restic_version
        self._asked_version: List[Optional[str]] = []  # asked once, when nobody told us
        self.repo_test_timeout = repo_test_timeout
        self.backup_paths = backup_paths  # agent.conf's: what the server may read here
        self.agent_home = agent_home
        self.load_credentials = load_credentials
        self.restic_binary = restic_binary
        self.cache_dir = cache_dir
        self.retry_delays = tuple(retry_delays)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._pending = 0

    def submit(self, command_type: str, payload: Dict[str, Any]) -> bool:
        """Start the call on its own thread; False when too many are waiting already."""
        rpc_id = rpc_id_of(payload)
        with self._lock:
            if self._pending >= MAX_CONCURRENT + MAX_WAITING:
                return False
            self._pending += 1
        thread = threading.Thread(
            target=self._run,
            args=(command_type, rpc_id, payload),
            name=f"rpc-{rpc_id[:8]}",
            daemon=True,
        )
        thread.start()
        return True

    def _run(self, command_type: str, rpc_id: str, payload: Dict[str, Any]) -> None:
        try:
            with self._slots:
                client = self.new_client()
                try:
                    if command_type == "rpc.dump":
                        self._dump(client, rpc_id, payload)
                    elif command_type == "rpc.repo_test":
                        self._answer(client, rpc_id, self.test_repository(payload))
                    else:
                        self._ls(client, rpc_id, payload)
                finally:
                    client.close()
        except Exception:  # a thread must not die silently
            log.exception("rpc %s (%s) failed", rpc_id, command_type)
        finally:
            with self._lock:
                self._pending -= 1

    # -- rpc.ls ------------------------------------------------------------------------

    def _ls(self, client: Client, rpc_id: str, payload: Dict[str, Any]) -> None:
        try:
            answer: Answer = {"ok": True, "result": self.list_directory(payload)}
        except RpcFailed as failure:
            answer = failure.answer()
        self._answer(client, rpc_id, answer)

    def list_directory(self, payload: Mapping[str, Any]) -> Dict[str, Any]:
        """The ``rpc.ls`` result; raises :class:`RpcFailed`."""
        snapshot_id, path = _snapshot_id(payload), _path(payload)
        max_entries = _positive_int(payload, "max_entries", DEFAULT_MAX_ENTRIES)
        repository, credentials = self._repository()
        listing = DirectoryListing(path, max_entries)
        outcome = self._restic(
            ls_argv(self.restic_binary, snapshot_id, [listing.path]),
            repository,
            credentials,
            on_line=_stdout_to(listing.feed),
            timeout=LS_TIMEOUT_SECONDS,
        )
        _raise_unless_listed(outcome, listing.snapshot, snapshot_id)
        if not listing.found:
            raise RpcFailed("not_found", f"{listing.path} is not in snapshot {snapshot_id[:8]}")
        if not listing.is_directory:
            kind = (listing.node or {}).get("type") or "file"
            raise RpcFailed("not_a_directory", f"{listing.path} is a {kind}, not a directory")
        return {"items": listing.items, "truncated": listing.truncated}

    # -- rpc.dump ----------------------------------------------------------------------

    def _dump(self, client: Client, rpc_id: str, payload: Dict[str, Any]) -> None:
        try:
            header, repository, credentials = self.look_up_file(payload)
        except RpcFailed as failure:
            self._answer(client, rpc_id, failure.answer())
            return
        reply = self._answer(client, rpc_id, {"ok": True, "result": header})
        if reply is None:
            return
        stream = DumpStream(
            lambda offset, data: self._call(lambda: client.send_rpc_data(rpc_id, offset, data)),
            limit=header["size"],
            chunk_bytes=chunk_bytes_for(reply),
            queued_chunks=QUEUED_CHUNKS,
            in_flight=chunks_in_flight_for(reply),
        )
        argv = dump_argv(self.restic_binary, _snapshot_id(payload), _path(payload))
        try:
            outcome = self._restic(
                argv,
                repository,
                credentials,
                on_stdout_chunk=stream.feed,
                cancel=stream.stop,
                grace_seconds=STOP_GRACE_SECONDS,
            )
        except RpcFailed as failure:
            self._end(client, rpc_id, failure.answer())
            return
        ending = stream.finish(outcome)
        if ending is not None:
            self._end(client, rpc_id, ending)

    def look_up_file(
        self, payload: Mapping[str, Any]
    ) -> Tuple[Dict[str, Any], Repository, Credentials]:
        """The ``rpc.dump`` header of the file (``ls`` of its parent); raises RpcFailed."""
        snapshot_id, path = _snapshot_id(payload), _path(payload)
        max_bytes = _positive_int(payload, "max_bytes", None, allow_zero=True)
        if path == "/":
            raise RpcFailed("not_a_file", "/ is a directory, not a file")
        self.check_readable(path)
        repository, credentials = self._repository()
        index = NodeIndex([path])
        outcome = self._restic(
            ls_argv(self.restic_binary, snapshot_id, [posixpath.dirname(path)]),
            repository,
            credentials,
            on_line=_stdout_to(index.feed),
            timeout=LS_TIMEOUT_SECONDS,
        )
        _raise_unless_listed(outcome, index.snapshot, snapshot_id)
        node = index.nodes.get(path)
        if node is None:
            raise RpcFailed("not_found", f"{path} is not in snapshot {snapshot_id[:8]}")
        if node.get("type") != "file":
            raise RpcFailed("not_a_file", f"{path} is a {node.get('type')}, not a regular file")
        size = node.get("size") if isinstance(node.get("size"), int) else 0
        if size > max_bytes:
            raise RpcFailed(
                "too_large",
                f"{path} is {format_bytes(size)} ({size} bytes), more than the "
                f"{format_bytes(max_bytes)} ({max_bytes} bytes) allowed",
            )
        header = {
            "name": node.get("name") or posixpath.basename(path),
            "size": size,
            "mtime": node.get("mtime"),
            "mode": node.get("mode"),
        }
        return header, repository, credentials

    def check_readable(self, path: str) -> None:
        """Raise RpcFailed ``refused`` when ``backup_paths`` keeps ``path`` from the server.

        The path is the one in the snapshot: it is checked as written (the host's symlinks
        have nothing to do with it).
        """
        try:
            reason = BackupPolicy(self.backup_paths, agent_home=self.agent_home).refusal(path)
        except ConfigError as error:
            raise RpcFailed("refused", f"download refused by this host: {error}") from None
        if reason is not None:
            raise RpcFailed("refused", f"download refused by this host: {reason}")

    # -- rpc.repo_test -----------------------------------------------------------------

    def test_repository(self, payload: Mapping[str, Any]) -> Answer:
        """``restic cat config`` with the payload's settings (never stored): ``{"ok": true,
        "detail": "repository reachable (id …)"}`` or ``{"ok": false, "detail": "<class>:
        <restic's words, masked>"}``."""
        section = payload.get("repository")
        if not isinstance(section, Mapping):  # the settings may come flat beside rpc_id
            section = {key: value for key, value in payload.items() if key != "rpc_id"}
        try:
            credentials = checked_credentials(section)
        except BackendRefused as refusal:
            return {"ok": False, "detail": f"refused by this host: {refusal}"}
        repository = Repository(
            credentials, None, home=self.agent_home, restic_version=self.restic_version
        )
        try:
            outcome = self._restic(
                repo_test_argv(self.restic_binary),
                repository,
                credentials,
                capture_stdout=True,
                timeout=self.repo_test_timeout,
                grace_seconds=STOP_GRACE_SECONDS,
            )
        except RpcFailed as failure:
            return {"ok": False, "detail": failure.message}
        return repo_test_answer(outcome, self.repo_test_timeout)

    def restic_version(self) -> Optional[str]:
        if self._restic_version is not None:
            return self._restic_version()
        if not self._asked_version:
            self._asked_version.append(facts.restic_version(self.restic_binary))
        return self._asked_version[0]

    # -- plumbing ----------------------------------------------------------------------

    def _repository(self) -> Tuple[Repository, Credentials]:
        """The repository and its everyday credentials; raises RpcFailed without them."""
        try:
            repository = Repository(
                self.load_credentials(),
                self.cache_dir,
                home=self.agent_home,
                restic_version=self.restic_version,
            )
        except ConfigError as error:
            raise RpcFailed("no_credentials", str(error)) from None
        credentials = repository.everyday
        if credentials is None:
            raise RpcFailed("no_credentials", "this host has no repository credentials yet")
        return repository, credentials

    def _restic(
        self,
        argv: Sequence[str],
        repository: Repository,
        credentials: Credentials,
        **options: Any,
    ) -> execute.Outcome:
        try:
            setup = repository.run_setup(credentials, argv)
            full_argv, env = setup.__enter__()
        except BackendRefused as refusal:
            message = f"repository settings refused by this host: {refusal}"
            raise RpcFailed("refused", message) from None
        except OSError as error:
            message = f"could not write the repository's key files: {error}"
            raise RpcFailed("restic_failed", message) from None
        with contextlib.ExitStack() as stack:  # the key files go when restic is done
            stack.push(setup)
            try:
                return execute.run(full_argv, env, masker=repository.masker, **options)
            except errors.ResticNotInstalled as error:
                raise RpcFailed("restic_failed", str(error)) from None

    def _answer(self, client: Client, rpc_id: str, answer: Answer) -> Optional[Answer]:
        """``POST /rpc/{id}``: the server's reply; None (logged) when it did not take it."""
        try:
            reply = self._call(lambda: client.answer_rpc(rpc_id, answer))
        except ClientError as error:
            log.warning("rpc %s: the answer could not be delivered, dropped: %s", rpc_id, error)
            return None
        return reply if isinstance(reply, dict) else {}

    def _call(self, request: Callable[[], Answer]) -> Answer:
        """``request`` tried again after a retryable error, a few times; then it raises.

        A 429 (the server holds as many unread bytes of a download as it allows: the
        browser reads slowly) is tried again without counting, for at most
        ``BUSY_GIVE_UP_SECONDS``: the server closes the download (410) when nobody reads.
        """
        delays = iter((*self.retry_delays, None))
        busy_until = None
        while True:
            try:
                return request()
            except RetryableError as error:
                if error.status == 429:
                    now = time.monotonic()
                    busy_until = busy_until or now + self.busy_give_up
                    if now < busy_until:
                        time.sleep(min(max(error.retry_after or 0.0, 0.05), 5.0))
                        continue
                delay = next(delays)
                if delay is None:
                    raise
                time.sleep(delay)

    def _end(self, client: Client, rpc_id: str, ending: Answer) -> None:
        try:
            self._call(lambda: client.end_rpc(rpc_id, ending))
        except ClientError as error:
            log.warning("rpc %s: the end of the download was not delivered: %s", rpc_id, error)


def chunk_bytes_for(reply: Mapping[str, Any]) -> int:
    """The chunk size for a download: the server's ``max_chunk_bytes`` (from its reply to
    the header), at most :data:`MAX_CHUNK_BYTES`; 1 MiB from a server that names none."""
    offered = reply.get("max_chunk_bytes")
    if isinstance(offered, bool) or not isinstance(offered, int) or offered < 1:
        return CHUNK_BYTES
    return min(offered, MAX_CHUNK_BYTES)


def chunks_in_flight_for(reply: Mapping[str, Any]) -> int:
    """How many chunks to post at once: the server's ``chunks_in_flight``, at most
    :data:`MAX_IN_FLIGHT`; one at a time for a server that names none."""
    offered = reply.get("chunks_in_flight")
    if isinstance(offered, bool) or not isinstance(offered, int) or offered < 1:
        return 1
    return min(offered, MAX_IN_FLIGHT)


class DumpStream:
    """Bytes from ``restic dump`` to ``POST /rpc/{id}/data`` in chunks of ``chunk_bytes``.

    ``send(offset, data)`` posts one chunk. A 410 (nobody waits any more), a transfer that
    cannot go on, or more bytes than ``limit`` set ``stop``, which stops restic.

    With ``queued_chunks`` > 0 a sender thread posts the chunks while restic goes on
    printing: at most ``queued_chunks`` full chunks wait for it (``feed`` blocks beyond
    that, and restic with it), and ``in_flight`` are posted at once (the server takes them
    in order), so memory stays under ``(queued_chunks + in_flight + 1) * chunk_bytes``.
    With 0, ``feed`` posts each chunk itself before it returns, one at a time.
    """

    def __init__(
        self,
        send: Callable[[int, bytes], Answer],
        limit: int,
        chunk_bytes: int = CHUNK_BYTES,
        queued_chunks: int = 0,
        in_flight: int = 1,
    ):
        self.send = send
        self.limit = limit
        self.chunk_bytes = chunk_bytes
        self.stop = threading.Event()
        self.digest = hashlib.sha256()
        self.buffer = bytearray()
        self.sent = 0  # bytes the server has committed
        self.received = 0  # bytes restic printed
        self.closed = False  # 410: send nothing else
        self.problem: Optional[Answer] = None  # why the transfer stopped, for /end
        self.broken = False  # the server cannot be reached: send nothing else
        self.queued_chunks = queued_chunks
        self.in_flight = max(1, in_flight) if queued_chunks > 0 else 1
        self._queue: Optional[queue.Queue[Optional[bytes]]] = None
        self._sender: Optional[threading.Thread] = None

    def feed(self, chunk: bytes) -> None:
        if self.stop.is_set():
            return
        self.received += len(chunk)
        if self.received > self.limit:
            self._give_up(
                {
                    "ok": False,
                    "error": "too_large",
                    "message": f"restic printed more bytes than the file's size ({self.limit})",
                }
            )
            return
        self.digest.update(chunk)
        self.buffer += chunk
        while len(self.buffer) >= self.chunk_bytes and not self.stop.is_set():
            if len(self.buffer) == self.chunk_bytes:
                data = bytes(self.buffer)
                self.buffer.clear()
            else:
                data = bytes(self.buffer[: self.chunk_bytes])
                del self.buffer[: self.chunk_bytes]
            self._hand_over(data)

    def finish(self, outcome: execute.Outcome) -> Optional[Answer]:
        """What to post to ``/end`` once restic exited (``None``: post nothing)."""
        failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
        if self.problem is not None or outcome.cancelled or failure is not None:
            self.stop.set()  # the sender drops what it has not sent yet
        elif self.buffer and not self.stop.is_set():
            data = bytes(self.buffer)
            self.buffer.clear()
            self._hand_over(data)
        self._join_sender()
        if self.closed or self.broken:
            return None
        if self.problem is not None:
            return self.problem
        if outcome.cancelled or failure is not None:
            reason = errors.describe(failure) if failure else "restic was stopped"
            return {"ok": False, "error": "restic_failed", "message": reason}
        if self.stop.is_set():  # pragma: no cover - every stop sets closed, broken or problem
            return None
        return {"ok": True, "bytes": self.received, "sha256": self.digest.hexdigest()}

    # -- sending -----------------------------------------------------------------------

    def _hand_over(self, data: bytes) -> None:
        """Post ``data`` now, or queue it for the sender thread (waiting while it is full)."""
        if self.queued_chunks <= 0:
            self._post(data)
            return
        if self._queue is None:
            self._queue = queue.Queue(maxsize=self.queued_chunks)
            self._sender = threading.Thread(
                target=self._send_queued, name="rpc-dump-sender", daemon=True
            )
            self._sender.start()
        while not self.stop.is_set():
            try:
                self._queue.put(data, timeout=0.2)
                return
            except queue.Full:
                continue

    def _send_queued(self) -> None:
        """The sender thread: each chunk posted as it comes, up to ``in_flight`` at once
        (the later ones on helper threads), their answers taken in order."""
        assert self._queue is not None
        window: Deque[Tuple[int, bytes, Optional[Future]]] = collections.deque()
        offset = self.sent
        helpers = None
        if self.in_flight > 1:
            helpers = ThreadPoolExecutor(self.in_flight, thread_name_prefix="rpc-dump-post")
        try:
            while True:
                data = self._queue.get()
                if data is None:
                    break
                if self.stop.is_set():
                    continue
                ahead = helpers.submit(self.send, offset, data) if helpers else None
                window.append((offset, data, ahead))
                offset += len(data)
                while len(window) >= self.in_flight:
                    self._settle(*window.popleft())
            while window:
                self._settle(*window.popleft())
        except Exception:  # a thread must not die silently
            log.exception("download stopped: sending a chunk failed")
            self._break()
        finally:
            if helpers is not None:
                helpers.shutdown(wait=True)

    def _settle(self, offset: int, data: bytes, ahead: Optional[Future]) -> None:
        """The chunk at ``offset`` held by the server: its answer taken (posted ahead) or
        the chunk posted now, and whatever the server is missing of it sent again."""
        if ahead is None:
            if not self.stop.is_set():
                self._post(data)
            return
        if self.stop.is_set() or offset != self.sent:
            ahead.cancel()  # the transfer stopped: its answer no longer matters
            with contextlib.suppress(Exception):
                ahead.result()
            return
        committed = self._committed(ahead.result, len(data))
        if committed is None:
            return
        # Sent ahead, a chunk may find its turn had not come (the one before it took too
        # long, or went again): the server's count is then that of an earlier moment, and
        # the chunk goes again, on its own (a count that really went back stops it there).
        if isinstance(committed, int) and not isinstance(committed, bool) and committed >= 0:
            committed = max(committed, self.sent)
        if not isinstance(committed, int) or not self.sent <= committed <= self.sent + len(data):
            self._mismatch(committed, self.sent + len(data))
            return
        rest = data[committed - self.sent :]
        self.sent = committed
        self._post(rest)

    def _join_sender(self) -> None:
        if self._queue is None or self._sender is None:
            return
        while self._sender.is_alive():
            try:  # the sender may be blocked on a full queue of chunks it will drop
                self._queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self._sender.join()

    def _post(self, data: bytes) -> None:
        """Post ``data`` (the bytes from ``self.sent`` on) until the server holds all of it."""
        while data and not self.stop.is_set():
            length = len(data)
            committed = self._committed(functools.partial(self.send, self.sent, data), length)
            if committed is None:
                return
            # Progress or nothing: the server must hold more than before, no more than sent.
            if not isinstance(committed, int) or not self.sent < committed <= self.sent + length:
                self._mismatch(committed, self.sent + length)
                return
            data = data[committed - self.sent :]
            self.sent = committed

    def _committed(self, answer_of: Callable[[], Answer], length: int) -> Any:
        """What the server holds after a post of ``length`` bytes from ``self.sent``
        (``answer_of`` gives its answer or raises); None once the transfer stops (a 410,
        a refusal, the server out of reach: ``stop`` is set and the reason kept)."""
        try:
            return answer_of().get("committed", self.sent + length)
        except Gap as gap:  # the server counts differently: go on from its count if we can
            return gap.body.get("committed")
        except Gone:
            log.info("download closed by the server (nobody waits any more): stopping restic")
            self.closed = True
            self.stop.set()
        except Refused as refusal:
            self._give_up({"ok": False, "error": "restic_failed", "message": str(refusal)})
        except ClientError as error:
            log.warning("download stopped: the server cannot be reached: %s", error)
            self._break()
        return None

    def _mismatch(self, committed: Any, sent: int) -> None:
        log.warning(
            "download stopped: the server holds %s bytes, the agent sent %s", committed, sent
        )
        self._break()

    def _break(self) -> None:
        self.broken = True
        self.stop.set()

    def _give_up(self, problem: Answer) -> None:
        self.problem = problem
        self.stop.set()


# The classes a person reads first in a repository test's answer.
_TEST_LABELS = (
    (errors.WrongPassword, "wrong password or key"),
    (errors.RepositoryNotFound, "repository missing"),
)


def repo_test_answer(outcome: execute.Outcome, timeout: float) -> Answer:
    """What ``restic cat config`` says about the settings, class first."""
    if outcome.timed_out:
        return {"ok": False, "detail": f"timeout: restic got no answer within {timeout:g} s"}
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    if failure is None:
        config = json_object((outcome.stdout or "").replace("\n", " ").strip()) or {}
        repository_id = str(config.get("id") or "")[:10] or "unknown"
        return {"ok": True, "detail": f"repository reachable (id {repository_id})"}
    label = "restic failed"
    if isinstance(failure, errors.BackendError):
        label = failure.label
    for failure_class, words in _TEST_LABELS:
        if isinstance(failure, failure_class):
            label = words
    return {"ok": False, "detail": f"{label}: {failure}"}


def _stdout_to(feed: Callable[[str], None]) -> execute.LineHandler:
    def on_line(stream: str, text: str) -> None:
        if stream == "stdout":
            feed(text)

    return on_line


def _raise_unless_listed(
    outcome: execute.Outcome, snapshot: Optional[Dict[str, Any]], snapshot_id: str
) -> None:
    if outcome.timed_out:
        raise RpcFailed("restic_failed", f"restic took longer than {LS_TIMEOUT_SECONDS:g} s")
    failure = errors.classify(outcome.exit_code, outcome.stderr_tail)
    if failure is not None:
        raise RpcFailed("restic_failed", errors.describe(failure))
    if snapshot is None:  # 0.14 exits 0 for an id that matches nothing
        reason = errors.error_message(outcome.stderr_tail, outcome.exit_code)
        raise RpcFailed("restic_failed", f"snapshot {snapshot_id[:8]} cannot be read: {reason}")


def _snapshot_id(payload: Mapping[str, Any]) -> str:
    value = payload.get("snapshot_id")
    if not isinstance(value, str) or not _SNAPSHOT_ID.match(value):
        raise RpcFailed("invalid_params", "snapshot_id must be a full snapshot id (64 hex digits)")
    return value


def _path(payload: Mapping[str, Any]) -> str:
    value = payload.get("path")
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise RpcFailed("invalid_params", "path must be an absolute path")
    return normalise_path(value)


def _positive_int(
    payload: Mapping[str, Any], key: str, default: Optional[int], allow_zero: bool = False
) -> int:
    value = payload.get(key, default)
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RpcFailed("invalid_params", f"{key} must be a whole number of at least {low}")
    return value
