"""The idle poll's short path: one read below Flask, the heartbeat written behind (issue 17).

An idle poll (no acks, no running jobs, the host's own boot id, its repository past
bring-up, a fresh ``last_seen_at``) must not write; anything else takes the full path, and
what the fleet sees (online, revoked tokens, deleted hosts, restarts, commands) is unchanged.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import event, select, text, update
from sqlalchemy.exc import OperationalError

from app import quick_reads as quick_reads_module
from app.bus import host_key
from app.extensions import db
from app.models import AgentToken, Command, Host, Job
from app.models.types import utcnow
from app.quick_reads import quick_reads
from app.services import agents, commands, heartbeats, hosts, jobs
from app.services.audit import Actor
from tests.conftest import POSTGRES_URL
from tests.factories import Agent, enroll_agent, park_poll


def _settled(app, hostname="web-1"):
    """An enrolled agent with its first commands acknowledged: its next poll is idle."""
    agent, host_id = enroll_agent(app, hostname)
    agent.hello()
    acks = []
    for _ in range(5):
        answer = agent.poll(acks=acks)
        if answer.status_code == 204:
            return agent, host_id
        acks = [{"command_id": c["command_id"]} for c in answer.get_json()["commands"]]
    raise AssertionError("the agent never got an empty poll")


def _probe(app, host_id):
    """A queued probe job (its job.run command waits for the agent)."""
    return jobs.create_job(
        app.extensions["secretbox"],
        db.session.get(Host, host_id),
        "probe",
        params={},
        actor=Actor.system(),
        now=utcnow(),
    )


def _probe_while_parked(app, agent, host_id, wait=10):
    """Park a poll of ``agent``, then queue a probe and publish its wake-up: ``(job,
    result)`` with the poll's answer in ``result["answer"]`` (``park_poll``)."""
    bus = app.extensions["bus"]
    result = {}
    thread = park_poll(agent, result, "answer", wait=wait)
    _wait_for(lambda: bus.waiting(host_key(host_id)) == 1)
    job = _probe(app, host_id)
    db.session.commit()
    bus.publish(host_key(host_id))
    thread.join(10)
    return job, result


class Statements:
    """Every statement sent on the app's engine and on the idle poll's own (whose hottest
    read, ``first_row``, runs on the bare DBAPI cursor, without SQLAlchemy's events)."""

    def __init__(self, app):
        self.seen: list[str] = []
        self.reads = quick_reads()
        self.engines = [db.engine, self.reads.engine]

    def __enter__(self):
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._record)
        first_row = self.reads.first_row

        def recorded(statement, params):
            self._record(None, None, str(statement.compile(dialect=self.reads.engine.dialect)))
            return first_row(statement, params)

        self.reads.first_row = recorded
        return self

    def __exit__(self, *exc):
        del self.reads.first_row  # the class's method again
        for engine in self.engines:
            event.remove(engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, *args):
        self.seen.append(" ".join(statement.split()))

    def writes(self) -> list[str]:
        return [s for s in self.seen if s.split()[0].upper() in {"INSERT", "UPDATE", "DELETE"}]


def _last_seen(host_id):
    db.session.expire_all()
    return db.session.get(Host, host_id).last_seen_at


def _beats(app) -> heartbeats.Heartbeats:
    return app.extensions["heartbeats"]


def _answered_below_flask(app) -> int:
    return app.extensions["idle_polls"].answered


def test_a_restarted_agents_hello_reads_its_host_once_and_its_next_poll_goes_below_flask(
    protocol_app,
):
    """A server restart brings every agent's hello and first poll at once: the hello reads
    the token with its host in one query (not again after its commit), and teaches the
    middleware the token, so a new worker answers the first poll below Flask too."""
    agent, host_id = _settled(protocol_app)
    protocol_app.extensions["idle_polls"].forget(agents.hash_token(agent.token))
    seen = []

    def record(conn, cursor, statement, *args):
        seen.append(" ".join(statement.split()))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        answer = agent.hello()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["host_id"] == host_id
    host_reads = [
        s for s in seen if s.startswith("SELECT") and ("FROM hosts" in s or "JOIN hosts" in s)
    ]
    assert len(host_reads) == 1, seen
    assert "FROM agent_tokens" in host_reads[0] and "JOIN hosts" in host_reads[0]
    answered = _answered_below_flask(protocol_app)
    assert agent.poll(wait=0).status_code == 204
    assert _answered_below_flask(protocol_app) == answered + 1


def test_an_idle_poll_is_answered_below_flask_with_one_read_and_no_write(protocol_app):
    agent, _ = _settled(protocol_app)
    before = _answered_below_flask(protocol_app)
    with Statements(protocol_app) as statements:
        answer = agent.poll()
    assert answer.status_code == 204
    assert _answered_below_flask(protocol_app) == before + 1
    assert statements.writes() == []
    (look,) = statements.seen  # the token, its host and "anything leasable?" in one
    assert "agent_tokens" in look and "commands" in look
    assert _beats(protocol_app).pending() == 1
    # What the app's after_request hook puts on every /api/ answer.
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_a_token_this_process_has_not_seen_takes_the_full_path_first(protocol_app):
    """The middleware listens for its host's wake-ups before it reads, so it must know
    the host: a token's first poll in a process (say, after a restart) goes to the view,
    which reads the token, then looks for a command, and remembers the host."""
    agent, _ = _settled(protocol_app)
    protocol_app.extensions["idle_polls"]._hosts.clear()  # a freshly started worker
    before = _answered_below_flask(protocol_app)
    with Statements(protocol_app) as statements:
        assert agent.poll().status_code == 204
    assert _answered_below_flask(protocol_app) == before
    assert statements.writes() == []
    assert len(statements.seen) == 2, statements.seen
    assert "agent_tokens" in statements.seen[0] and "commands" in statements.seen[1]
    assert agent.poll().status_code == 204
    assert _answered_below_flask(protocol_app) == before + 1


def test_a_parked_idle_poll_woken_by_a_command_hands_it_over_within_its_hold(protocol_app):
    agent, host_id = _settled(protocol_app)
    job, result = _probe_while_parked(protocol_app, agent, host_id)
    assert result["answer"].status_code == 200
    assert result["answer_seconds"] < 5
    (command,) = result["answer"].get_json()["commands"]
    assert (command["type"], command["job_id"]) == ("job.run", job.id)


def test_a_newer_poll_ends_a_parked_idle_one_at_once(protocol_app):
    agent, host_id = _settled(protocol_app)
    bus = protocol_app.extensions["bus"]
    before = _answered_below_flask(protocol_app)
    result = {}
    old = park_poll(agent, result, "old", wait=3)
    _wait_for(lambda: bus.waiting(host_key(host_id)) == 1)
    new = park_poll(agent, result, "new", wait=3)
    old.join(5)
    new.join(5)
    assert result["old"].status_code == 204 and result["old_seconds"] < 1.0  # not after 3 s
    assert result["new"].status_code == 204
    assert result["new_seconds"] == pytest.approx(3, abs=1)
    assert _answered_below_flask(protocol_app) == before + 2


def test_a_parked_idle_poll_of_an_earlier_boot_gives_way_when_woken(protocol_app):
    """Woken below Flask, the poll goes on in the view as the same poll (its ticket, boot
    id and deadline), not as a new one: an agent restarted elsewhere keeps its command and
    the old boot id is not written back."""
    agent, host_id = _settled(protocol_app)
    bus = protocol_app.extensions["bus"]
    result = {}
    _beats(protocol_app)._hosts.clear()
    thread = park_poll(agent, result, "answer")
    # Parked past its read (it notes the heartbeat after the read, then waits).
    _wait_for(lambda: _beats(protocol_app).pending() == 1)
    db.session.get(Host, host_id).boot_id = "boot-after-restart"
    _probe(protocol_app, host_id)
    db.session.commit()
    bus.publish(host_key(host_id))
    thread.join(5)
    assert result["answer"].status_code == 204
    db.session.expire_all()
    assert db.session.get(Host, host_id).boot_id == "boot-after-restart"
    queued = db.session.scalars(select(Command.state).where(Command.host_id == host_id))
    assert "queued" in list(queued)


@pytest.mark.parametrize(
    "lease_ends, delivered",
    [(-2, True), (30, True), (62, False)],
    ids=["expired", "leased-to-an-earlier-poll", "leased-after-this-poll-arrived"],
)
def test_the_one_read_compares_lease_times_as_the_database_stores_them(
    protocol_app, lease_ends, delivered
):
    """The middleware's read binds its own timestamp (on SQLite a text timestamp, whose
    format must match the stored one to compare: whole seconds included). A lease that
    ran out, or one taken before this poll arrived that it does not acknowledge (lost on
    the way), is delivered by the view; one taken after it arrived is left alone."""
    agent, host_id = _settled(protocol_app)
    job = _probe(protocol_app, host_id)
    whole_second = utcnow().replace(microsecond=0)
    lease_end = whole_second + timedelta(seconds=lease_ends)
    db.session.execute(
        update(Command)
        .where(Command.job_id == job.id)
        .values(state="leased", delivery_count=1, lease_expires_at=lease_end)
    )
    db.session.commit()
    before = _answered_below_flask(protocol_app)
    answer = agent.poll()
    if delivered:  # leasable again: the view delivers it a second time
        assert answer.status_code == 200
        assert [c["job_id"] for c in answer.get_json()["commands"]] == [job.id]
        assert _answered_below_flask(protocol_app) == before
    else:
        assert answer.status_code == 204
        assert _answered_below_flask(protocol_app) == before + 1


def test_an_exhausted_read_pool_answers_503_soon_and_warns_once(protocol_app, monkeypatch, caplog):
    """An overloaded worker: every quick-read connection busy. The idle poll waits
    ``POOL_TIMEOUT_SECONDS`` (not SQLAlchemy's 30 s), passes to the view, which waits once
    more and answers 503 with Retry-After, inside the agent's read timeout."""
    agent, _ = _settled(protocol_app)
    monkeypatch.setattr(quick_reads_module, "POOL_TIMEOUT_SECONDS", 0.3)
    protocol_app.extensions.pop("quick_reads").dispose()
    engine = quick_reads().engine  # made again, with the short timeout
    held = [engine.raw_connection() for _ in range(quick_reads_module.POOL_SIZE)]
    try:
        with caplog.at_level("WARNING", logger="restic_manager.agent_api"):
            for _ in range(2):
                started = time.monotonic()
                answer = agent.poll()
                assert answer.status_code == 503
                assert answer.get_json()["error"] == "unavailable"
                assert answer.headers["Retry-After"]
                assert time.monotonic() - started < 3
    finally:
        for connection in held:
            connection.close()
    warnings = [r for r in caplog.records if "idle poll read failed" in r.getMessage()]
    assert len(warnings) == 1  # not one per failing poll
    assert agent.poll().status_code == 204  # connections free again: served as before


ODD_POLLS = [
    ({"boot_id": "boot-1", "acks": [], "running": [], "extra": 1}, None),
    ({"boot_id": "boot-\u0000", "acks": [], "running": []}, None),
    ({"boot_id": "x" * 65, "acks": [], "running": []}, None),
    ({"boot_id": 7, "acks": [], "running": []}, None),
    ({"boot_id": "boot-1", "acks": "all"}, None),
    ({"boot_id": "boot-1", "running": {}}, None),
    ({"boot_id": "boot-1", "wait": True}, None),
    ({"boot_id": "boot-1", "wait": -1}, None),
    ({"boot_id": "boot-1", "wait": 10**400}, None),
    ([], None),
    ("not json", "text/plain"),
    ("{" * 3000, None),
]


@pytest.mark.parametrize(("body", "content_type"), ODD_POLLS)
def test_anything_odd_goes_to_the_view_which_answers_as_before(protocol_app, body, content_type):
    agent, _ = _settled(protocol_app)
    before = _answered_below_flask(protocol_app)
    raw = body if isinstance(body, str) else json.dumps(body)
    answer = protocol_app.test_client().post(
        "/api/agent/v1/poll",
        data=raw,
        headers={
            "Authorization": f"Bearer {agent.token}",
            "Content-Type": content_type or "application/json",
        },
    )
    assert _answered_below_flask(protocol_app) == before
    assert answer.status_code in {204, 400, 413, 415, 422}, answer.get_data(as_text=True)
    if answer.status_code != 204:
        assert answer.is_json and answer.get_json()["error"]


def test_a_token_revoked_after_it_was_remembered_is_refused_and_forgotten(protocol_app):
    agent, host_id = _settled(protocol_app)
    middleware = protocol_app.extensions["idle_polls"]
    assert len(middleware._hosts) == 1
    db.session.execute(
        update(AgentToken).where(AgentToken.host_id == host_id).values(revoked_at=utcnow())
    )
    db.session.commit()
    assert agent.poll().status_code == 401
    assert middleware._hosts == {}


def _wait_for(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_deferred_heartbeats_are_written_by_the_next_flush_and_never_go_back(protocol_app):
    agent, host_id = _settled(protocol_app)
    assert agent.poll(wait=0).status_code == 204  # idle: its heartbeat is written behind
    assert _beats(protocol_app).pending() == 1
    before = _last_seen(host_id)
    _beats(protocol_app)._last_flush -= heartbeats.FLUSH_SECONDS  # the flush is due
    answered = _answered_below_flask(protocol_app)
    assert agent.poll().status_code == 204  # notes its own beat, then flushes (below Flask)
    assert _answered_below_flask(protocol_app) == answered + 1  # not handed to the view
    written = _last_seen(host_id)
    assert written > before
    assert _beats(protocol_app).pending() == 0
    # A late flush of an older value (another worker) does not set the host back.
    beats = heartbeats.Heartbeats()
    beats.note(host_id, written - timedelta(seconds=30))
    assert beats.flush(db.session.commit) == 1
    assert _last_seen(host_id) == written


def test_a_flush_that_fails_below_flask_still_answers_the_poll(protocol_app, monkeypatch, caplog):
    """The idle poll that finds the flush due writes it; should that fail in a way the
    flush does not handle itself, the poll is answered all the same and the error logged
    (no bare 500 from the middleware)."""
    agent, _ = _settled(protocol_app)
    beats = _beats(protocol_app)

    def broken(commit):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(beats, "flush", broken)
    beats._last_flush -= heartbeats.FLUSH_SECONDS
    answered = _answered_below_flask(protocol_app)
    with caplog.at_level("ERROR", logger="restic_manager.agent_api"):
        assert agent.poll(wait=0).status_code == 204
    assert _answered_below_flask(protocol_app) == answered + 1
    assert "writing the deferred heartbeats failed" in caplog.text


def test_a_flush_writes_in_small_transactions_and_keeps_what_failed(protocol_app):
    """A big flush is several short transactions (on SQLite one long one held the whole
    worker); a failed one keeps its heartbeats and the later ones for the next flush."""
    size = heartbeats.chunk_rows(db.engine)  # SQLite 100, PostgreSQL 1,000
    count = 2 * size + 5
    db.session.add_all(Host(hostname=f"beat-{n}") for n in range(count))
    db.session.commit()
    ids = list(db.session.scalars(select(Host.id).where(Host.hostname.like("beat-%"))))
    at = utcnow()
    beats = heartbeats.Heartbeats()
    for host_id in ids:
        beats.note(host_id, at)
    commits = []

    def commit(fail_at=None):
        commits.append(1)
        if len(commits) == fail_at:
            raise OperationalError("COMMIT", {}, Exception("database is locked"))
        db.session.commit()

    assert beats.flush(lambda: commit(fail_at=2)) == size
    assert beats.pending() == count - size
    commits.clear()
    assert beats.flush(commit) == count - size
    assert len(commits) == 2  # the size + 5 rows left: two transactions
    db.session.expire_all()
    seen = db.session.scalars(select(Host.last_seen_at).where(Host.id.in_(ids))).all()
    assert seen == [at] * count


@pytest.mark.skipif(not POSTGRES_URL, reason="needs RM_TEST_DATABASE_URL")
def test_a_flush_on_postgresql_is_one_statement_a_chunk_and_only_moves_forward(protocol_app):
    """On PostgreSQL a chunk is one array-driven UPDATE per table (an executemany cost a
    7,500-agent worker 40 ms of CPU every 5 s); older values, a missing value and tokens
    behave as with the executemany. (SQLite writes a chunk as an executemany.)"""
    db.session.add_all(Host(hostname=f"pgbeat-{n}") for n in range(30))
    db.session.commit()
    ids = list(db.session.scalars(select(Host.id).where(Host.hostname.like("pgbeat-%"))))
    now = utcnow()
    newer, older = ids[:10], ids[10:20]  # and ids[20:] never seen before (NULL)
    db.session.execute(update(Host).where(Host.id.in_(newer)).values(last_seen_at=now))
    db.session.execute(
        update(Host).where(Host.id.in_(older)).values(last_seen_at=now - timedelta(hours=1))
    )
    token = AgentToken(host_id=ids[0], token_hash="pgbeat-token", created_at=now)
    db.session.add(token)
    db.session.commit()
    beats = heartbeats.Heartbeats()
    at = now - timedelta(minutes=1)
    for host_id in ids:
        beats.note(host_id, at, token_id=token.id)
    statements = []

    def listen(connection, cursor, statement, parameters, context, executemany):
        statements.append((statement, executemany))

    event.listen(db.engine, "before_cursor_execute", listen)
    try:
        assert beats.flush(db.session.commit) == 30
    finally:
        event.remove(db.engine, "before_cursor_execute", listen)
    updates = [many for sql, many in statements if "UPDATE" in sql]
    assert updates == [False, False]  # hosts, tokens: one statement each, no executemany
    db.session.expire_all()
    seen = dict(
        db.session.execute(select(Host.id, Host.last_seen_at).where(Host.id.in_(ids))).all()
    )
    assert all(seen[host_id] == now for host_id in newer)  # not set back
    assert all(seen[host_id] == at for host_id in ids[10:])  # moved forward, or set
    assert db.session.get(AgentToken, token.id).last_used_at == at


def test_a_host_coming_back_is_written_at_once(protocol_app):
    agent, host_id = _settled(protocol_app)
    long_ago = utcnow() - timedelta(minutes=10)
    db.session.execute(update(Host).where(Host.id == host_id).values(last_seen_at=long_ago))
    db.session.commit()
    assert db.session.get(Host, host_id).status(utcnow(), 90) == "offline"
    assert agent.poll().status_code == 204
    db.session.expire_all()
    host = db.session.get(Host, host_id)
    assert host.last_seen_at > utcnow() - timedelta(seconds=5)
    assert host.status(utcnow(), 90) == "online"


def test_nothing_is_deferred_when_the_offline_window_is_not_longer_than_the_hold(app_factory):
    app = app_factory(RM_POLL_WAIT_SECONDS=2, RM_OFFLINE_AFTER_SECONDS=5)
    with app.app_context():
        assert heartbeats.defer_until(5, 2) == 0
        assert heartbeats.defer_until(90, 25) == 60
        agent, host_id = _settled(app)
        db.session.execute(
            update(Host)
            .where(Host.id == host_id)
            .values(last_seen_at=utcnow() - timedelta(seconds=6))
        )
        db.session.commit()
        assert agent.poll().status_code == 204
        assert _last_seen(host_id) > utcnow() - timedelta(seconds=1)


def test_a_short_offline_window_writes_the_heartbeat_often_enough(app_factory):
    """With RM_OFFLINE_AFTER_SECONDS=5 and a 1 s hold (the API fuzzer's settings) a fixed
    5 s write resolution let a stored heartbeat reach 5-6 s between two polls, and a job
    started in that moment was refused as "host offline" although the agent was polling."""
    assert agents.touch_resolution(90, 25) == 5  # the defaults: unchanged
    assert agents.touch_resolution(5, 1) == 1.5
    assert agents.touch_resolution(5, 5) == 0  # every poll writes
    app = app_factory(RM_POLL_WAIT_SECONDS=2, RM_OFFLINE_AFTER_SECONDS=5)  # resolution 1 s
    with app.app_context():
        agent, host_id = _settled(app)
        for age, written in ((0.5, False), (1.5, True)):
            stored = utcnow() - timedelta(seconds=age)
            db.session.execute(update(Host).where(Host.id == host_id).values(last_seen_at=stored))
            db.session.commit()
            assert agent.poll(wait=0).status_code == 204
            assert (_last_seen(host_id) > stored) is written


def test_a_command_queued_for_an_idle_host_is_delivered_by_its_short_poll(protocol_app):
    agent, host_id = _settled(protocol_app)
    job = _probe(protocol_app, host_id)
    db.session.commit()
    delivered = agent.poll().get_json()["commands"]
    assert [(c["type"], c["job_id"]) for c in delivered] == [("job.run", job.id)]


def test_a_command_whose_answer_never_arrived_comes_with_the_next_poll(protocol_app):
    """The answer carrying two commands went to a connection that had died silently: the
    agent's next poll acknowledges neither (or only what it did get), and gets the rest
    at once, not when the 60 s lease runs out; nor is it parked as idle below Flask."""
    agent, host_id = _settled(protocol_app)
    first, second = _probe(protocol_app, host_id), _probe(protocol_app, host_id)
    db.session.commit()
    lost = agent.poll().get_json()["commands"]
    assert [c["job_id"] for c in lost] == [first.id, second.id]
    before = _answered_below_flask(protocol_app)
    started = time.monotonic()
    again = agent.poll(acks=[]).get_json()["commands"]  # no acks: nothing arrived
    assert time.monotonic() - started < 1.5  # at once, not after the 2 s hold
    assert [(c["job_id"], c["delivery_count"]) for c in again] == [(first.id, 2), (second.id, 2)]
    assert _answered_below_flask(protocol_app) == before
    # This time only the first arrived: the second comes again, the first never.
    ack = [{"command_id": again[0]["command_id"]}]
    rest = agent.poll(acks=ack).get_json()["commands"]
    assert [(c["job_id"], c["delivery_count"]) for c in rest] == [(second.id, 3)]
    ack = [{"command_id": rest[0]["command_id"]}]
    assert agent.poll(acks=ack, wait=0).status_code == 204
    states = db.session.scalars(select(Command.state).where(Command.host_id == host_id))
    assert set(states) == {"acked"}


def test_an_acknowledging_poll_leases_in_its_own_transaction(protocol_app):
    """The poll that carries acks (the full path) reads its token once (the look), the
    host once, and looks for the next command in the same transaction as its acks: no
    second transaction that re-reads the host only to find nothing."""
    agent, host_id = _settled(protocol_app)
    _probe(protocol_app, host_id)
    db.session.commit()
    (command,) = agent.poll().get_json()["commands"]
    with Statements(protocol_app) as statements:
        assert agent.poll(acks=[{"command_id": command["command_id"]}]).status_code == 204
    reads = [s for s in statements.seen if s.upper().startswith("SELECT")]
    assert sum(" FROM agent_tokens" in s for s in reads) == 1, reads  # the look, no ORM read
    assert sum(s.split(" WHERE")[0].endswith("FROM hosts") for s in reads) == 1, reads
    # The lease is one UPDATE … RETURNING in the acks' transaction, no read before it.
    assert not any(" FROM commands" in s and "EXISTS" not in s for s in reads), reads
    leases = [s for s in statements.writes() if "RETURNING" in s]
    assert len(leases) == 1 and leases[0].startswith("UPDATE commands"), statements.writes()
    db.session.expire_all()
    assert db.session.get(Command, command["command_id"]).state == "acked"


def test_a_poll_the_middleware_read_but_could_not_take_is_not_read_again(protocol_app):
    """A command awaits: the middleware's read finds it and passes the poll on with that
    read, and the view leases without reading the token again."""
    agent, host_id = _settled(protocol_app)
    job = _probe(protocol_app, host_id)
    db.session.commit()
    with Statements(protocol_app) as statements:
        answer = agent.poll()
    assert [c["job_id"] for c in answer.get_json()["commands"]] == [job.id]
    looks = [s for s in statements.seen if " FROM agent_tokens" in s]
    assert len(looks) == 1, looks


def test_a_command_queued_after_an_acknowledging_polls_lease_wakes_it(protocol_app):
    """The full path listens before its transaction and then waits on that same waiter:
    a command queued once it found nothing is handed over within the hold."""
    agent, host_id = _settled(protocol_app)
    first = _probe(protocol_app, host_id)
    db.session.commit()
    (command,) = agent.poll().get_json()["commands"]
    assert command["job_id"] == first.id
    # The parked poll acknowledges the first command (the full path).
    second, result = _probe_while_parked(protocol_app, agent, host_id, wait=5)
    assert result["answer"].status_code == 200
    assert result["answer_seconds"] < 4
    (delivered,) = result["answer"].get_json()["commands"]
    assert delivered["job_id"] == second.id
    db.session.expire_all()
    assert db.session.get(Command, command["command_id"]).state == "acked"


def test_a_token_last_used_long_ago_is_noted_by_a_full_poll_too(protocol_app):
    """The full path reads the token in its look only (no ORM read that would touch it):
    its last use is written behind, as an idle poll's."""
    agent, host_id = _settled(protocol_app)
    stale = utcnow() - timedelta(minutes=5)
    db.session.execute(
        update(AgentToken).where(AgentToken.host_id == host_id).values(last_used_at=stale)
    )
    _probe(protocol_app, host_id)
    db.session.commit()
    _beats(protocol_app).flush(db.session.commit)  # nothing noted before this poll
    (command,) = agent.poll().get_json()["commands"]  # the full path: a command awaits
    (token_id,) = _beats(protocol_app)._tokens
    _beats(protocol_app)._last_flush -= heartbeats.FLUSH_SECONDS
    assert agent.poll(acks=[{"command_id": command["command_id"]}]).status_code == 204
    db.session.expire_all()
    token = db.session.get(AgentToken, token_id)
    assert token.host_id == host_id
    assert token.last_used_at > stale + timedelta(minutes=4)


def test_revoked_token_and_deleted_host_are_refused_at_once(protocol_app):
    agent, host_id = _settled(protocol_app)
    other, other_id = _settled(protocol_app, "web-2")
    db.session.execute(
        update(AgentToken).where(AgentToken.host_id == host_id).values(revoked_at=utcnow())
    )
    db.session.commit()
    assert agent.poll().status_code == 401
    hosts.delete_host(
        db.session.get(Host, other_id),
        confirm_hostname="web-2",
        actor=Actor.system(),
        now=utcnow(),
    )
    db.session.commit()
    refused = other.poll()
    assert refused.status_code == 410
    assert refused.get_json()["error"] == "host_deleted"


def test_a_new_boot_id_takes_the_full_path_and_reconciles(protocol_app):
    agent, host_id = _settled(protocol_app)
    job = _probe(protocol_app, host_id)
    job.status, job.boot_id = "running", "boot-1"
    db.session.commit()
    restarted = Agent(protocol_app, agent.token, boot_id="boot-2")
    restarted.poll()
    db.session.expire_all()
    assert db.session.get(Host, host_id).boot_id == "boot-2"
    assert db.session.get(Job, job.id).status == "lost"


def test_token_last_used_is_written_behind_too(protocol_app):
    agent, host_id = _settled(protocol_app)
    stale = utcnow() - timedelta(minutes=5)
    db.session.execute(
        update(AgentToken).where(AgentToken.host_id == host_id).values(last_used_at=stale)
    )
    db.session.commit()
    assert agent.poll().status_code == 204
    _beats(protocol_app)._last_flush -= heartbeats.FLUSH_SECONDS
    assert agent.poll().status_code == 204
    db.session.expire_all()
    token = db.session.scalars(db.select(AgentToken).where(AgentToken.host_id == host_id)).one()
    assert token.last_used_at > stale + timedelta(minutes=4)


@pytest.mark.skipif(not POSTGRES_URL, reason="needs RM_TEST_DATABASE_URL")
def test_a_read_on_a_connection_the_server_closed_is_tried_again(protocol_app):
    agent, _ = _settled(protocol_app)
    engine = quick_reads().engine
    with engine.connect() as connection:  # the pooled connection the next poll gets
        backend = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    with db.engine.connect() as admin:
        assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
    before = _answered_below_flask(protocol_app)
    assert agent.poll().status_code == 204  # the dead connection dropped, read again
    assert _answered_below_flask(protocol_app) == before + 1  # by the idle poll's own read
    with engine.connect() as connection:
        assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != backend


@pytest.mark.skipif(not POSTGRES_URL, reason="needs RM_TEST_DATABASE_URL")
def test_two_leases_at_once_never_take_the_same_command_and_never_wait(protocol_app):
    """The lease is one UPDATE over a SKIP LOCKED subquery: while one transaction holds the
    host's commands (not committed yet), another leases none of them, at once; once the
    first rolls back, they are leasable again."""
    _, host_id = _settled(protocol_app)
    first, second = _probe(protocol_app, host_id), _probe(protocol_app, host_id)
    db.session.commit()
    now = utcnow()
    held = commands.lease(host_id, now=now)  # this session's transaction stays open
    assert [row.job_id for row in held] == [first.id, second.id]
    with db.engine.connect() as other:
        other.execute(text("SET lock_timeout = '2s'"))  # a wait would fail, not hang
        started = time.monotonic()
        taken = other.execute(
            commands._LEASE, {"for_host": host_id, "now": now, "expires": now}
        ).all()
        assert time.monotonic() - started < 1.0
        assert taken == []
        other.rollback()
        db.session.rollback()
        again = other.execute(
            commands._LEASE, {"for_host": host_id, "now": now, "expires": now}
        ).all()
        assert sorted(row.job_id for row in again) == [first.id, second.id]
        other.rollback()
