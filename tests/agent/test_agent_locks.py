"""Repository locks on the agent: turn-taking per repository, --retry-lock by version,
retries of maintenance that meets a lock, and stale locks after a restart (fake restic).

The same stories against the real restic are in test_restic_real_locks.py.
"""

import json
import threading

import pytest
from fake_agent_server import wait_for
from running_agent import Running, config_update, job_run

from agent.journal import InterruptedJobs
from agent.locks import EXCLUSIVE, SHARED, RepositoryLocks, Turn, waiting_line
from agent.restic.backup import backup_argv
from agent.restic.check import check_argv
from agent.restic.forget import forget_argv
from agent.restic.prune import prune_argv
from agent.restic.snapshots import snapshots_argv
from agent.restic.unlock import takes_lock, unlock_argv, with_retry_lock
from agent.runner import Runner
from agent.service import Agent
from agent.spool import Spool

READY = {"url": "fake:ready", "username": "", "password": "Locks-Pw-1"}
QUICK_RETRIES = (0.05, 0.05)


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool", max_bytes=10**7)


def make_runner(spool, fake_restic, credentials=READY, version="0.14.0", **options):
    return Runner(
        spool,
        lambda: credentials,
        restic_binary=str(fake_restic),
        restic_version=version,
        **options,
    )


def start(runner, job_id, kind, params=None):
    runner.prepare(job_id, "att")
    assert runner.start(job_id, "att", kind, params or {})


def texts(spool, job_id):
    batch = spool.job(job_id).pending_batch(max_records=10_000)
    return [record["text"] for record in batch[1]] if batch else []


def finished(spool, job_id):
    (data,) = [
        event["data"]
        for event in spool.pending_events()
        if event["job_id"] == job_id and event["type"] == "job.finished"
    ]
    return data


def subcommands(fake_restic):
    return [
        next(word for word in call["argv"][1:] if not word.startswith("-"))
        for call in fake_restic.calls()
    ]


# -- --retry-lock ------------------------------------------------------------------------


def test_retry_lock_only_where_restic_has_it():
    forget = forget_argv("restic", {"keep_last": 3})
    assert with_retry_lock(forget, "0.14.0") == forget
    assert with_retry_lock(forget, "0.15.1") == forget
    assert with_retry_lock(forget, None) == forget  # unknown: the oldest supported
    assert with_retry_lock(forget, "0.16.0") == (
        "restic",
        "--retry-lock=2m",
        "forget",
        "--json",
        "--keep-last",
        "3",
    )
    assert with_retry_lock(prune_argv(), "0.17.3") == ("restic", "--retry-lock=2m", "prune")
    assert with_retry_lock(check_argv("restic", "1/5"), "0.18.0") == (
        "restic",
        "--retry-lock=2m",
        "check",
        "--read-data-subset=1/5",
    )
    assert with_retry_lock(backup_argv("restic", ["/etc"]), "0.16.4")[:3] == (
        "restic",
        "--retry-lock=2m",
        "backup",
    )


def test_retry_lock_never_on_commands_without_a_lock():
    for argv in (snapshots_argv(), unlock_argv(), unlock_argv("restic", remove_all=True)):
        assert with_retry_lock(argv, "0.17.0") == argv
    # The duration never reads as the subcommand.
    assert takes_lock(with_retry_lock(prune_argv(), "0.16.0"))


def test_check_on_016_gets_retry_lock_and_on_014_does_not(tmp_path, fake_restic):
    for version, expected in (
        ("0.14.0", ["check"]),
        ("0.16.0", ["--retry-lock=2m", "check"]),
    ):
        spool = Spool(tmp_path / version, max_bytes=10**7)
        runner = make_runner(spool, fake_restic, version=version)
        start(runner, 1, "check")
        assert runner.wait_idle(20)
        assert finished(spool, 1)["status"] == "succeeded"
        assert fake_restic.calls()[-1]["argv"][1:] == expected
        assert "$ " + " ".join([str(fake_restic), *expected]) in texts(spool, 1)


# -- turn-taking -------------------------------------------------------------------------


def turn(repository, job_id, kind, mode):
    return Turn(repository, lambda: job_id, kind, mode)


def test_shared_turns_together_exclusive_alone_first_come_first_served():
    locks = RepositoryLocks(poll_seconds=0.01)
    first = turn("repo", 1, "backup", SHARED)
    second = turn("repo", 2, "backup", SHARED)
    assert locks.acquire(first) and locks.acquire(second)  # backups side by side
    prune = turn("repo", 3, "prune", EXCLUSIVE)
    late_backup = turn("repo", 4, "backup", SHARED)
    heard = []
    granted = []
    threads = [
        threading.Thread(target=lambda: granted.append(locks.acquire(prune, on_wait=heard.append))),
    ]
    threads[0].start()
    wait_for(lambda: heard)
    assert [blocker.describe() for blocker in heard[0]] == ["backup job 1", "backup job 2"]
    threads.append(threading.Thread(target=lambda: granted.append(locks.acquire(late_backup))))
    threads[1].start()
    locks.release(first)
    wait_for(lambda: len(heard) == 2)  # the list it waits for changed
    assert [blocker.describe() for blocker in heard[1]] == ["backup job 2"]
    assert granted == []  # the later backup waits behind the waiting prune
    locks.release(second)
    wait_for(lambda: len(granted) == 1)
    assert locks.holders("repo") == [prune]
    locks.release(prune)
    for thread in threads:
        thread.join(5)
    assert granted == [True, True] and locks.holders("repo") == [late_backup]
    locks.release(late_backup)
    assert locks.holders("repo") == []


def test_other_repositories_do_not_wait_and_a_cancel_leaves_the_line():
    locks = RepositoryLocks(poll_seconds=0.01)
    backup = turn("repo-a", 1, "backup", SHARED)
    assert locks.acquire(backup)
    assert locks.acquire(turn("repo-b", 2, "prune", EXCLUSIVE))  # another repository
    cancel = threading.Event()
    forget = turn("repo-a", 3, "forget", EXCLUSIVE)
    result = []
    thread = threading.Thread(target=lambda: result.append(locks.acquire(forget, cancel)))
    thread.start()
    cancel.set()
    thread.join(5)
    assert result == [False]
    check = turn("repo-a", 4, "check", EXCLUSIVE)
    locks.release(backup)
    assert locks.acquire(check)  # the cancelled forget is no longer in the way


def test_a_failing_announcement_leaves_the_line():
    locks = RepositoryLocks(poll_seconds=0.01)
    backup = turn("repo", 1, "backup", SHARED)
    assert locks.acquire(backup)

    def broken(blockers):
        raise OSError("disk full")

    with pytest.raises(OSError):
        locks.acquire(turn("repo", 2, "prune", EXCLUSIVE), on_wait=broken)
    locks.release(backup)
    assert locks.acquire(turn("repo", 3, "check", EXCLUSIVE))  # nothing left in the way


def test_waiting_lines_say_who_and_why():
    prune = turn("r", 3, "prune", EXCLUSIVE)
    backups = [turn("r", 1, "backup", SHARED), turn("r", 2, "backup", SHARED)]
    assert waiting_line(prune, backups[:1]) == (
        "waiting for backup job 1 to finish: prune needs the repository to itself"
    )
    assert waiting_line(backups[0], [prune]) == (
        "waiting for prune job 3 to finish: it needs the repository to itself"
    )
    assert waiting_line(prune, backups).startswith(
        "waiting for backup job 1, backup job 2 to finish"
    )


def test_a_forget_waits_for_the_running_backup_and_can_be_cancelled_meanwhile(spool, fake_restic):
    slow = {"url": "fake:slow", "username": "", "password": "Locks-Pw-1"}
    runner = make_runner(spool, fake_restic, slow)
    start(runner, 1, "backup", {"paths": ["/etc"]})
    wait_for(lambda: "backup" in subcommands(fake_restic))
    start(runner, 2, "forget", {"policy": {"keep_last": 1}})
    start(runner, 3, "snapshots")  # --no-lock: never waits
    wait_for(
        lambda: (
            "waiting for backup job 1 to finish: forget needs the repository to itself"
            in texts(spool, 2)
        )
    )
    wait_for(lambda: "snapshots" in subcommands(fake_restic))
    assert runner.cancel(3)
    wait_for(lambda: not runner.is_running(3), timeout=20)
    assert runner.is_running(2)
    assert {item["job_id"] for item in runner.running()} == {1, 2}  # the server sees it run
    assert runner.cancel(2)
    wait_for(lambda: not runner.is_running(2))
    assert finished(spool, 2)["status"] == "cancelled"
    assert finished(spool, 2)["error"] == (
        "the job was cancelled while it waited for the repository; restic did not run"
    )
    assert "forget" not in subcommands(fake_restic)
    assert runner.cancel(1)
    assert runner.wait_idle(20)


# -- maintenance that meets a lock --------------------------------------------------------


def test_maintenance_meeting_a_lock_tries_again_then_fails_clearly(spool, fake_restic):
    locked = {"url": "fake:locked", "username": "", "password": "Locks-Pw-1"}
    runner = make_runner(spool, fake_restic, locked, lock_retry_delays=QUICK_RETRIES)
    start(runner, 1, "prune")
    assert runner.wait_idle(20)
    assert subcommands(fake_restic) == ["prune", "unlock", "prune", "unlock", "prune"]
    result = finished(spool, 1)
    assert result["status"] == "failed"
    assert result["error"].startswith(
        "the repository stayed locked through 3 tries over 0.1 s; if no other restic is "
        "using it, run an unlock job (the repository is locked by another restic: "
    )
    assert "repository is already locked by PID" in result["error"]
    log = texts(spool, 1)
    assert any(text.endswith("trying again in 0.05 s (try 2 of 3)") for text in log)
    assert any(text.endswith("trying again in 0.05 s (try 3 of 3)") for text in log)
    assert log.count("running restic unlock first (stale locks only)") == 2


def test_maintenance_retries_stop_on_cancel(spool, fake_restic):
    locked = {"url": "fake:locked", "username": "", "password": "Locks-Pw-1"}
    runner = make_runner(spool, fake_restic, locked, lock_retry_delays=(60.0,))
    start(runner, 1, "forget", {"policy": {"keep_last": 1}})
    wait_for(lambda: any("trying again in 60 s" in text for text in texts(spool, 1)))
    assert runner.cancel(1)
    assert runner.wait_idle(10)
    assert finished(spool, 1)["status"] == "cancelled"
    assert subcommands(fake_restic).count("forget") == 1


def test_a_backup_meeting_a_lock_is_not_retried_by_the_agent(spool, fake_restic):
    locked = {"url": "fake:locked", "username": "", "password": "Locks-Pw-1"}
    runner = make_runner(spool, fake_restic, locked, lock_retry_delays=QUICK_RETRIES)
    start(runner, 1, "backup", {"paths": ["/etc"]})
    assert runner.wait_idle(20)
    assert subcommands(fake_restic) == ["backup"]  # the schedule's retries handle backups
    assert finished(spool, 1)["error"].startswith("the repository is locked by another restic")


# -- after a restart ---------------------------------------------------------------------


def interrupted_home(tmp_path):
    """A spool as an agent killed during job 8 leaves it."""
    job = Spool(tmp_path / "spool", max_bytes=10**7).open_job(8, "a")
    job.append("stdout", "half-way")
    return Spool(tmp_path / "spool", max_bytes=10**7), tmp_path / "interrupted_jobs.json"


def test_after_a_restart_the_next_locking_job_removes_stale_locks_first(tmp_path, fake_restic):
    spool, journal = interrupted_home(tmp_path)
    runner = make_runner(spool, fake_restic, interrupted=InterruptedJobs(journal))
    assert runner.recover_interrupted() == [8]
    assert InterruptedJobs(journal).pending() == [8]  # survives another restart
    start(runner, 1, "snapshots")  # --no-lock: no unlock needed
    assert runner.wait_idle(20)
    assert subcommands(fake_restic) == ["snapshots"]
    start(runner, 2, "check")
    assert runner.wait_idle(20)
    assert subcommands(fake_restic) == ["snapshots", "unlock", "check"]
    log = texts(spool, 2)
    assert log[:4] == [
        "the agent was restarted while job 8 ran: running restic unlock to remove the stale "
        "locks its restic may have left (stale locks only)",
        f"$ {fake_restic} unlock",
        "successfully removed locks",
        "restic unlock finished: stale locks are removed",
    ]
    assert finished(spool, 2)["status"] == "succeeded"
    assert InterruptedJobs(journal).pending() == []
    start(runner, 3, "prune")  # once is enough
    assert runner.wait_idle(20)
    assert subcommands(fake_restic)[3:] == ["prune", "stats"]


def test_a_second_restart_before_the_unlock_still_unlocks(tmp_path, fake_restic):
    spool, journal = interrupted_home(tmp_path)
    make_runner(spool, fake_restic, interrupted=InterruptedJobs(journal)).recover_interrupted()
    again = make_runner(spool, fake_restic, interrupted=InterruptedJobs(journal))
    assert again.recover_interrupted() == []
    start(again, 1, "backup", {"paths": ["/etc"]})
    assert again.wait_idle(20)
    assert subcommands(fake_restic)[:2] == ["unlock", "backup"]
    assert finished(spool, 1)["status"] == "succeeded"


def test_a_failed_unlock_stays_pending(tmp_path, fake_restic):
    spool, journal = interrupted_home(tmp_path)
    locked = {"url": "fake:locked", "username": "", "password": "Locks-Pw-1"}
    runner = make_runner(
        spool, fake_restic, locked, interrupted=InterruptedJobs(journal), lock_retry_delays=()
    )
    runner.recover_interrupted()
    start(runner, 1, "check")
    assert runner.wait_idle(20)
    assert subcommands(fake_restic) == ["unlock", "check"]
    assert any(text.startswith("restic unlock failed (") for text in texts(spool, 1))
    assert InterruptedJobs(journal).pending() == [8]


def test_the_agent_remembers_interrupted_jobs_in_its_home(agent_home, fake_server, fake_restic):
    """The wiring: a restarted Agent writes the interrupted job down and the next check
    (sent by the server) runs restic unlock first."""
    Spool(agent_home / "spool", max_bytes=10**7).open_job(8, "a").append("stdout", "half-way")
    fake_server.queue(config_update())
    running = Running(Agent(agent_home, restic_binary=str(fake_restic)))
    try:
        wait_for(lambda: fake_server.events_of(8, "job.finished"), timeout=20)
        assert json.loads((agent_home / "interrupted_jobs.json").read_text()) == [8]
        fake_server.queue(job_run(12, kind="check"))
        (finished,) = wait_for(lambda: fake_server.events_of(12, "job.finished"), timeout=20)
        assert finished["data"]["status"] == "succeeded"
        assert subcommands(fake_restic)[-2:] == ["unlock", "check"]
        assert json.loads((agent_home / "interrupted_jobs.json").read_text()) == []
    finally:
        running.finish()
