"""PostgresBus: wake-ups across processes through LISTEN/NOTIFY (PostgreSQL only), and the
bus each database gets."""

from __future__ import annotations

import time

import psycopg
import pytest
import sqlalchemy as sa

from app.bus import CHANNEL, InProcessBus, PostgresBus, create_bus, host_key, job_key
from app.extensions import db
from app.transaction import commit_and_wake
from tests.conftest import POSTGRES_URL

needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="needs RM_TEST_DATABASE_URL")


def conninfo() -> str:
    return sa.engine.make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(False)


@pytest.fixture
def buses():
    """``make()`` builds a PostgresBus on the test database; all are closed afterwards."""
    made = []

    def make() -> PostgresBus:
        bus = PostgresBus(conninfo())
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def listening(bus: PostgresBus, connects: int = 1) -> None:
    """Wait for the bus's LISTEN, then swallow the wake-everyone that follows it."""
    assert wait_until(lambda: bus.connects >= connects and bus.listen_pid is not None)


def notify_in_own_transaction(key: str, *, commit: bool, origin: str = "other") -> None:
    with psycopg.connect(conninfo()) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{origin} {key}"))
        if commit:
            conn.commit()
        else:
            conn.rollback()


def test_sqlite_gets_the_in_process_bus(tmp_path):
    assert type(create_bus(f"sqlite:///{tmp_path}/x.db")) is InProcessBus
    bus = create_bus("postgresql+psycopg://rm@db.example:5432/rm")
    assert isinstance(bus, PostgresBus)
    assert bus.conninfo == "postgresql://rm@db.example:5432/rm"  # libpq's own scheme


@needs_postgres
def test_the_app_on_postgresql_uses_the_postgres_bus(app):
    assert isinstance(app.extensions["bus"], PostgresBus)


@needs_postgres
def test_a_publish_wakes_a_waiter_of_another_bus_within_a_second(buses):
    sender, receiver = buses(), buses()
    with receiver.listen(host_key(7)) as waiter, receiver.listen(host_key(8)) as bystander:
        listening(receiver)
        waiter.poll(), bystander.poll()  # the wake-everyone after LISTEN
        started = time.monotonic()
        sender.publish(host_key(7))
        assert waiter.wait(1.0), "the other bus's waiter was not woken within a second"
        assert time.monotonic() - started < 1.0
        assert not bystander.wait(0.2)  # another key stays asleep


@needs_postgres
def test_commit_and_wake_notifies_other_processes_only_on_commit(app, buses):
    other = buses()
    with other.listen(job_key(3)) as waiter:
        listening(other)
        waiter.poll()
        # Rolled back: the NOTIFY staged in the transaction goes with it.
        app.extensions["bus"].stage(db.session, [job_key(3)])
        db.session.rollback()
        assert not waiter.wait(0.5), "a rolled-back transaction woke a waiter"
        commit_and_wake(job_key(3))
        assert waiter.wait(1.0), "the commit's NOTIFY did not arrive"


@needs_postgres
def test_commit_and_wake_wakes_its_own_process_once(app):
    bus = app.extensions["bus"]
    with bus.listen(job_key(4)) as waiter:
        listening(bus)
        waiter.poll()
        commit_and_wake(job_key(4))
        assert waiter.poll(), "woken right after the commit, without the round trip"
        # The listener hears the same NOTIFY and skips it: it carries this bus's origin.
        assert not waiter.wait(0.5)


@needs_postgres
def test_a_notify_in_a_rolled_back_transaction_wakes_nobody(buses):
    bus = buses()
    with bus.listen(host_key(1)) as waiter:
        listening(bus)
        waiter.poll()
        notify_in_own_transaction(host_key(1), commit=False)
        assert not waiter.wait(0.5)
        notify_in_own_transaction(host_key(1), commit=True)
        assert waiter.wait(1.0)


@needs_postgres
def test_the_listener_survives_a_killed_connection_and_wakes_every_waiter(buses):
    sender, receiver = buses(), buses()
    with (
        receiver.listen(host_key(1)) as first,
        receiver.listen(job_key(2)) as second,
    ):
        listening(receiver)
        first.poll(), second.poll()
        killed = receiver.listen_pid
        with psycopg.connect(conninfo(), autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (killed,)).fetchone()[0]
        # Reconnected, and every waiter woken: what was published meanwhile is re-checked.
        assert wait_until(lambda: receiver.connects >= 2 and receiver.listen_pid != killed)
        assert first.wait(2.0) and second.wait(2.0)
        # Later publishes still arrive, through the new connection.
        sender.publish(job_key(2))
        assert second.wait(1.0)
        assert not first.wait(0.2)


@needs_postgres
def test_a_waiter_registered_while_disconnected_is_woken_after_the_reconnect(buses):
    bus = buses()
    bus.RECONNECT_FIRST = 0.5
    with bus.listen(host_key(5)):
        listening(bus)
        with psycopg.connect(conninfo(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (bus.listen_pid,))
        # A publish before the new LISTEN is lost to the channel; the waiter that registered
        # meanwhile still wakes, and re-checks the database.
        with bus.listen(host_key(6)) as late:
            notify_in_own_transaction(host_key(6), commit=True)
            assert late.wait(5.0)
            assert wait_until(lambda: bus.connects >= 2)


@needs_postgres
def test_close_stops_the_listener(buses):
    bus = buses()
    with bus.listen(host_key(1)):
        listening(bus)
        pid = bus.listen_pid
    bus.close()
    with psycopg.connect(conninfo(), autocommit=True) as admin:
        assert wait_until(
            lambda: (
                not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
            )
        )


@needs_postgres
def test_another_process_sees_who_follows_a_job(buses):
    """``waiting`` (the agent's "watched") counts an SSE viewer in another worker."""
    viewer_side, agent_side = buses(), buses()
    agent_side.INTEREST_SECONDS = 1.0
    viewer_side.ANNOUNCE_SECONDS = 0.3
    with agent_side.listen(host_key(1)):  # the agent side listens too (its own polls)
        listening(agent_side)
        assert agent_side.waiting(job_key(9)) == 0
        with viewer_side.listen(job_key(9)):
            assert wait_until(lambda: agent_side.waiting(job_key(9)) == 1, 1.0)
            assert agent_side.waiting(job_key(10)) == 0
            assert agent_side.waiting(host_key(5)) == 0  # only job keys are announced
            time.sleep(1.5)  # re-announced while the viewer stays
            assert agent_side.waiting(job_key(9)) == 1
        # The viewer left: its last announcement runs out.
        assert wait_until(lambda: agent_side.waiting(job_key(9)) == 0, 3.0)
