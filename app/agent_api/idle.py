"""Idle long polls answered below Flask.

Almost every poll of a fleet is idle: the agent says "still here", nothing is queued for
it, and after up to 25 s the server answers 204. At 20,000 agents that is 800 polls a
second, and Flask's request machinery (request and app context, cookie session, the
before/after hooks, werkzeug's request object and JSON parsing) was about a fifth of each
one's CPU, the two reads (the token, then a leasable command) about a third.

:class:`IdlePolls` wraps the app's WSGI callable and takes only a poll it can answer on its
own: a small well-formed JSON body with no acks and no running jobs, a token this process
has already seen on a full poll (so it knows which host's wake-ups to listen for before it
reads), and one read that finds the live token, a host whose heartbeat may be written
behind (:func:`app.services.agents.idle_poll`) and nothing leasable. It then parks on the
bus exactly as the view does and answers 204 when the hold ends. Everything else (a
first poll, acks, a command found or woken for, an unknown or revoked token, a body that
is odd in any way) goes to the Flask view untouched, body included, which authenticates,
validates and answers as it always did. The middleware never answers an error itself.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from typing import NamedTuple, Optional

from app.authn import bearer_from_header
from app.bus import host_key
from app.extensions import db
from app.models.types import utcnow
from app.security import RESPONSE_HEADERS, hash_token
from app.services import agents, heartbeats
from app.transaction import commit_and_wake

log = logging.getLogger("restic_manager.agent_api")

POLL_PATH = "/api/agent/v1/poll"
MAX_BODY = 4096  # an idle poll's body is about 80 bytes; anything bigger takes the full path
WARN_SECONDS = 10.0  # a failing read is logged at most this often
MAX_REMEMBERED = 200_000  # token hashes remembered per process (about 200 bytes each)
_POLL_KEYS = frozenset({"acks", "running", "boot_id", "wait"})
# What the app's after_request hook puts on every /api/ answer.
HEADERS = [*RESPONSE_HEADERS, ("Cache-Control", "no-store")]


PARKED_ENVIRON = "restic_manager.parked_poll"  # set only here (headers become HTTP_*)
LOOK_ENVIRON = "restic_manager.poll_look"  # this poll's look, read here; the view reuses it


class Parked(NamedTuple):
    """A parked poll: its host, its ticket (the newest poll of the host in this process
    holds the newest), the agent's boot id and when its hold ends (``time.monotonic``)."""

    host_id: int
    ticket: int
    boot_id: Optional[str]
    deadline: float


def hold_seconds(config, wait) -> float:
    """How long the poll is held: the server's hold, shortened by a numeric ``wait``."""
    hold = config["RM_POLL_WAIT_SECONDS"]
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        hold = max(0.0, min(float(wait), hold))
    return hold


def is_idle(identity: agents.AgentIdentity, config, *, acks, running, boot_id, now) -> bool:
    """:func:`app.services.agents.idle_poll` with this server's deferral window."""
    return agents.idle_poll(
        identity,
        acks=acks,
        running=running,
        boot_id=boot_id,
        now=now,
        defer_seconds=heartbeats.defer_until(
            config["RM_OFFLINE_AFTER_SECONDS"], config["RM_POLL_WAIT_SECONDS"]
        ),
    )


def note_heartbeat(beats: heartbeats.Heartbeats, identity: agents.AgentIdentity, now) -> None:
    """An idle poll's heartbeat (and its token's last use, when due), written behind."""
    token_due = agents.token_touch_due(identity, now)
    beats.note(identity.host_id, now, token_id=identity.token_id if token_due else None)


class IdlePolls:
    """WSGI middleware: idle polls answered here, every other request passed on."""

    def __init__(self, wsgi_app, flask_app):
        self.wsgi_app = wsgi_app
        self.flask_app = flask_app
        self._lock = threading.Lock()
        self._hosts: dict[str, int] = {}  # token hash -> host id, learnt from full polls
        self.answered = 0  # idle polls answered here (tests and benchmarks look)
        self._failed_reads = 0
        self._warned_at = -WARN_SECONDS

    # --- what the full poll teaches -----------------------------------------------------

    def remember(self, token: str, host_id: int) -> None:
        """The view authenticated ``token`` as ``host_id``: its next polls may come here.
        Only a hint of which host's wake-ups to listen for: every poll still reads the
        token, so a revoked or deleted one is refused by the view at once."""
        token_hash = hash_token(token)
        with self._lock:
            if len(self._hosts) >= MAX_REMEMBERED and token_hash not in self._hosts:
                self._hosts.clear()  # a worst case (token churn), relearnt on full polls
            self._hosts[token_hash] = host_id

    def forget(self, token_hash: str) -> None:
        with self._lock:
            self._hosts.pop(token_hash, None)

    # --- WSGI ---------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != POLL_PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        poll = self._read(environ)
        if poll is None:
            return self.wsgi_app(environ, start_response)
        token_hash, data = poll
        host_id = self._hosts.get(token_hash)
        if host_id is None:
            return self.wsgi_app(environ, start_response)
        outcome, parked = self._park(token_hash, host_id, data, environ)
        if outcome == "idle":
            self.answered += 1
            start_response("204 NO CONTENT", list(HEADERS))
            return []
        if outcome == "woken":  # the view goes on with this same poll: checks and leases
            environ[PARKED_ENVIRON] = parked
        return self.wsgi_app(environ, start_response)

    def _read(self, environ):
        """``(token hash, body)`` of a poll this middleware may take, else None. The body
        is read here and put back for the view either way."""
        token = bearer_from_header(environ.get("HTTP_AUTHORIZATION", ""))
        if not token.startswith("rma_") or len(token) > 200:
            return None
        if not environ.get("CONTENT_TYPE", "").startswith("application/json"):
            return None
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        if not 0 < length <= MAX_BODY:
            return None
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)
        if len(raw) != length:
            return None  # short body: the view says so
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or not data.keys() <= _POLL_KEYS:
            return None
        if data.get("acks", []) != [] or data.get("running", []) != []:
            return None
        boot_id = data.get("boot_id")
        if boot_id is not None and not (
            isinstance(boot_id, str)
            and 0 < len(boot_id) <= 64
            and boot_id.isascii()
            and boot_id.isprintable()
        ):
            return None
        wait = data.get("wait")
        if wait is not None and (
            isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 3600
        ):
            return None
        return hash_token(token), data

    def _park(
        self, token_hash: str, host_id: int, data: dict, environ: dict
    ) -> tuple[str, Optional[Parked]]:
        """``("idle", None)`` when the hold ended with nothing to do; ``("woken", parked)``
        when a wake-up came for this host; ``("full", None)``: the view takes the poll (with
        the look read here in ``environ``, when it found the host's live token)."""
        extensions = self.flask_app.extensions
        config = self.flask_app.config
        bus = extensions["bus"]
        latest = extensions.get("latest_polls")
        reads = extensions.get("quick_reads")
        beats = extensions.get("heartbeats")
        if latest is None or reads is None or beats is None:
            return "full", None  # made by the view's first poll in this process
        deadline = time.monotonic() + hold_seconds(config, data.get("wait"))
        # As the view: this poll supersedes the host's older ones in this process, and it
        # listens before it reads, so a command queued after the read still wakes it.
        ticket = latest.take(host_id)
        bus.wake_local(host_key(host_id))
        with bus.listen(host_key(host_id)) as waiter:
            now = utcnow()
            try:
                look = agents.idle_look(reads, token_hash, now=now)
            except Exception as error:  # the database is away: the view answers properly
                self._read_failed(error)
                return "full", None
            if look is None or look.identity.host_id != host_id:
                self.forget(token_hash)  # revoked, deleted or re-enrolled: the view says
                return "full", None
            idle = not look.awaiting and is_idle(
                look.identity, config, acks=[], running=[], boot_id=data.get("boot_id"), now=now
            )
            if not idle:
                environ[LOOK_ENVIRON] = look  # read a moment ago: the view need not again
                return "full", None
            note_heartbeat(beats, look.identity, now)
            if beats.due():
                self._flush(beats)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not waiter.wait(remaining):
                return "idle", None
            if not latest.holds(host_id, ticket):
                return "idle", None  # a newer poll of this host took over
            return "woken", Parked(host_id, ticket, data.get("boot_id"), deadline)

    def _flush(self, beats: heartbeats.Heartbeats) -> None:
        """This worker's deferred heartbeats, this poll's own included, written by the poll
        that found them due (one every :data:`app.services.heartbeats.FLUSH_SECONDS`).
        Here, not in the view: handing the poll to the view instead sent every poll that
        arrived before the view's flush began through the full path too (measured: a few
        percent of the polls, a sixth of the worker's CPU, on a busy worker)."""
        with self.flask_app.app_context():
            try:
                beats.flush(commit_and_wake)  # logs and keeps what a database error left
            except Exception:  # anything else: this poll is still answered, the error logged
                log.exception("writing the deferred heartbeats failed")
            finally:
                db.session.remove()

    def _read_failed(self, error: Exception) -> None:
        """One warning per :data:`WARN_SECONDS` at most: an overloaded or unreachable
        database fails every poll, and the view logs each 503 it answers anyway."""
        with self._lock:
            self._failed_reads += 1
            now = time.monotonic()
            if now - self._warned_at < WARN_SECONDS:
                return
            failed, self._failed_reads, self._warned_at = self._failed_reads, 0, now
        log.warning(
            "idle poll read failed (%d since the last warning), taking the full path: %s",
            failed,
            error,
        )
