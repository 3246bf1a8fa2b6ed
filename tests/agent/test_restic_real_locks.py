"""Repository locks with the real restic: maintenance dispatched during a backup waits its
turn, a lock left by a killed restic is removed after an agent restart, and maintenance
that meets another process's live lock tries again.

Skipped when restic is not installed, unless RM_REQUIRE_RESTIC=1 (CI): then it fails.
"""

import os
import subprocess

import pytest
from fake_agent_server import wait_for

from agent.journal import InterruptedJobs
from agent.spool import Spool
from tests.agent.real_restic import RESTIC, RunnerJobs, needs_restic, run_restic

PASSWORD = "real-Locks-pass-7c6d5e"

pytestmark = needs_restic()


class Jobs(RunnerJobs):
    def __init__(self, root, repo, **runner_options):
        credentials = {"url": str(repo), "username": "", "password": PASSWORD}
        super().__init__(root, lambda: credentials, **runner_options)
        self.repo = repo


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    run_restic(repo, PASSWORD, "init")
    return repo


def write_tree(root, files, size):
    root.mkdir(parents=True)
    for number in range(files):
        (root / f"file-{number:03d}.dat").write_bytes(os.urandom(size))
    return root


def locks(repo):
    return list((repo / "locks").iterdir())


def direct_restic(repo, *args, **options):
    """restic started directly, as another program on the host would (not waited for)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo.parent),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_CACHE_DIR": str(repo.parent / "direct-cache"),
    }
    return subprocess.Popen(
        [RESTIC, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options
    )


def test_forget_and_prune_dispatched_while_a_backup_runs_wait_and_succeed(tmp_path, repo):
    jobs = Jobs(tmp_path, repo)
    small = write_tree(tmp_path / "small", 3, 1000)
    assert jobs.run("backup", {"paths": [str(small)]}).finished["status"] == "succeeded"
    big = write_tree(tmp_path / "big", 6, 5 * 1024 * 1024)
    # 30 MiB at 4 MiB/s: the backup holds its lock for several seconds.
    backup = jobs.start("backup", {"paths": [str(big)], "limit_upload_kib": 4 * 1024})
    wait_for(lambda: locks(repo), timeout=60)

    side_by_side = jobs.start("backup", {"paths": [str(small)]})  # shares the repository
    wait_for(lambda: not jobs.runner.is_running(side_by_side), timeout=60)
    assert jobs.runner.is_running(backup)
    forget = jobs.start("forget", {"policy": {"keep_last": 1}})
    wait_for(lambda: any(text.startswith("waiting for") for text in jobs.result(forget).texts))
    prune = jobs.start("prune")
    assert jobs.runner.wait_idle(180)

    for job_id in (backup, side_by_side, forget, prune):
        ran = jobs.result(job_id)
        assert ran.finished["status"] == "succeeded", ran.texts
        assert not any("already locked" in text for text in ran.texts)
    assert not any("waiting for" in text for text in jobs.result(side_by_side).texts)
    forget_log = jobs.result(forget).texts
    assert (
        f"waiting for backup job {backup} to finish: forget needs the repository to itself"
        in forget_log
    )
    assert any(text.startswith("the repository is free: forget starts") for text in forget_log)
    prune_log = jobs.result(prune).texts
    assert (
        f"waiting for backup job {backup}, forget job {forget} to finish: prune needs the "
        "repository to itself"
    ) in prune_log
    assert f"waiting for forget job {forget} to finish: prune needs the repository to itself" in (
        prune_log
    )
    # restic ran them one after another: forget only after the backup, prune after forget.
    finished_order = [
        event["job_id"] for event in jobs.spool.pending_events() if event["type"] == "job.finished"
    ]
    assert finished_order.index(backup) < finished_order.index(forget)
    assert finished_order.index(forget) < finished_order.index(prune)
    assert not locks(repo)


def test_a_lock_left_by_a_killed_restic_is_removed_after_an_agent_restart(tmp_path, repo):
    # What an agent killed during a backup leaves behind: the job's spool without its end,
    # and the lock of its restic, killed with it.
    Spool(tmp_path / "spool", max_bytes=10**7).open_job(7, "a").append("agent", "$ restic backup")
    big = write_tree(tmp_path / "big", 4, 5 * 1024 * 1024)
    killed = direct_restic(repo, "backup", "--limit-upload", "1024", str(big))
    wait_for(lambda: locks(repo), timeout=60)
    killed.kill()
    killed.wait()
    killed.stderr.close()
    with pytest.raises(subprocess.CalledProcessError) as blocked:
        run_restic(repo, PASSWORD, "check")
    assert b"repository is already locked" in blocked.value.stderr

    journal = tmp_path / "interrupted_jobs.json"
    jobs = Jobs(tmp_path, repo, interrupted=InterruptedJobs(journal))  # the restarted agent
    assert jobs.runner.recover_interrupted() == [7]
    check = jobs.run("check")
    assert check.finished["status"] == "succeeded", check.texts
    assert check.texts[:2] == [
        "the agent was restarted while job 7 ran: running restic unlock to remove the stale "
        "locks its restic may have left (stale locks only)",
        "$ restic unlock",
    ]
    assert "restic unlock finished: stale locks are removed" in check.texts
    assert "no errors were found" in check.texts
    prune = jobs.run("prune")
    assert prune.finished["status"] == "succeeded", prune.texts
    assert "$ restic unlock" not in prune.texts  # once was enough
    assert not locks(repo) and InterruptedJobs(journal).pending() == []


@pytest.fixture
def held_lock(repo):
    """A live restic of another program holding a lock: a backup reading stdin that waits
    for more (a non-exclusive lock still keeps forget, prune and check out)."""
    holder = direct_restic(
        repo, "backup", "--stdin", "--stdin-filename", "held.txt", stdin=subprocess.PIPE
    )
    holder.stdin.write(b"held\n")
    holder.stdin.flush()
    wait_for(lambda: locks(repo), timeout=60)
    yield holder
    if holder.poll() is None:
        holder.stdin.close()
        holder.wait(60)
    holder.stderr.close()


def test_maintenance_meeting_a_live_lock_tries_again_then_fails_clearly(tmp_path, repo, held_lock):
    jobs = Jobs(tmp_path, repo, lock_retry_delays=(0.5, 0.5))
    ran = jobs.run("forget", {"policy": {"keep_last": 1}})
    assert ran.finished["status"] == "failed"
    error = ran.finished["error"]
    assert error.startswith(
        "the repository stayed locked through 3 tries over 1 s; if no other restic is using "
        "it, run an unlock job (the repository is locked by another restic: unable to create "
        f"lock in backend: repository is already locked by PID {held_lock.pid} on "
    )
    assert sum(text.startswith("$ restic forget") for text in ran.texts) == 3
    assert ran.texts.count("$ restic unlock") == 2
    assert locks(repo)  # restic unlock leaves a live lock alone


def test_maintenance_succeeds_once_the_other_process_lets_go(tmp_path, repo, held_lock):
    jobs = Jobs(tmp_path, repo, lock_retry_delays=(5.0, 5.0))
    prune = jobs.start("prune")
    wait_for(
        lambda: any(
            text.endswith("trying again in 5 s (try 2 of 3)") for text in jobs.result(prune).texts
        ),
        timeout=60,
    )
    held_lock.stdin.close()  # the other backup completes and removes its lock
    assert held_lock.wait(60) == 0
    assert jobs.runner.wait_idle(120)
    ran = jobs.result(prune)
    assert ran.finished["status"] == "succeeded", ran.texts
    assert sum(text == "$ restic prune" for text in ran.texts) == 2
    assert not locks(repo)
