"""Every job kind against the real restic and real local repositories, including cancels.

Skipped when restic is not installed, unless RM_REQUIRE_RESTIC=1 (CI): then it fails.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fake_agent_server import wait_for

from tests.agent.real_restic import RunnerJobs, needs_restic, run_restic

PASSWORD = "real-Jobs-pass-5a4b3c"
BIG_FILES, BIG_FILE_BYTES = 20, 10 * 1024 * 1024  # 200 MiB of incompressible data
# … uploaded at 50 MiB/s at most, so the backup lasts seconds even on a fast disk.
SLOW_BACKUP = {"limit_upload_kib": 50 * 1024}

pytestmark = needs_restic()


def restic_json(repo, *args):
    """Run restic directly (not through the agent) and parse what it prints."""
    return json.loads(run_restic(repo, PASSWORD, *args))


class Jobs(RunnerJobs):
    def __init__(self, root, repo, grace_seconds=10.0):
        credentials = {"url": str(repo), "username": "", "password": PASSWORD}
        super().__init__(root, lambda: credentials, grace_seconds=grace_seconds)
        self.repo = repo


def write_tree(root, files, size, random_bytes=False):
    root.mkdir(parents=True)
    for number in range(files):
        content = os.urandom(size) if random_bytes else (b"line %d\n" % number) * (size // 8)
        (root / f"file-{number:03d}.dat").write_bytes(content)
    return root


def tree_bytes(root):
    return sum(path.stat().st_size for path in root.iterdir())


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository the agent initialised, shared by the lifecycle tests in order."""
    root = tmp_path_factory.mktemp("real-jobs")
    jobs = Jobs(root, root / "repo")
    init = jobs.run("init")
    assert init.finished["status"] == "succeeded", init.texts
    assert init.of("repo.status") == [{"status": "ready", "reason": None}]
    assert (root / "repo" / "config").exists()
    assert any(text.startswith("created restic repository ") for text in init.texts)
    again = jobs.run("init")  # an existing repository is not an error
    assert again.finished["status"] == "succeeded" and again.finished["exit_code"] == 1
    assert again.of("repo.status") == [{"status": "ready", "reason": None}]
    return root / "repo"


@pytest.fixture
def jobs(tmp_path, repo):
    return Jobs(tmp_path, repo)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    yield write_tree(root / "data", BIG_FILES, BIG_FILE_BYTES, random_bytes=True)
    shutil.rmtree(root, ignore_errors=True)  # do not leave 200 MiB behind in /tmp


def backup_reports_progress_stats_snapshots_and_size(tmp_path, jobs, repo):
    data = write_tree(tmp_path / "data", 30, 40_000)
    (data / "big.bin").write_bytes(os.urandom(3_000_000))
    ran = jobs.run("backup", {"paths": [str(data)], "tags": ["default"], "excludes": ["*.tmp"]})
    finished = ran.finished
    assert finished["status"] == "succeeded", ran.texts
    stats = finished["stats"]
    assert stats["files_new"] == 31 and stats["files_changed"] == 0
    assert stats["total_files_processed"] == 31
    assert stats["total_bytes_processed"] == tree_bytes(data)
    assert stats["data_added"] > 3_000_000 and stats["error_count"] == 0
    progress = ran.of("job.progress")
    assert progress and all(0 <= event["percent"] <= 100 for event in progress)
    listed = restic_json(repo, "snapshots", "--json")
    assert ran.of("snapshots.report") == [{"snapshots": listed}]
    assert stats["snapshot_id"] in [snapshot["id"] for snapshot in listed]  # the full id
    assert listed[-1]["tags"] == ["default"] and listed[-1]["paths"] == [str(data)]
    (size,) = ran.of("repo.stats")
    direct = restic_json(repo, "stats", "--json", "--mode", "raw-data")
    assert size["total_size"] == direct["total_size"] and size["snapshots_count"] == 1
    assert any(
        text.startswith(f"snapshot {stats['snapshot_id'][:8]} saved: 31 new") for text in ran.texts
    )
    assert not any('"message_type"' in text for text in ran.texts)


def snapshots_job_matches_restic(tmp_path, jobs, repo):
    data = write_tree(tmp_path / "more", 5, 1000)
    assert jobs.run("backup", {"paths": [str(data)]}).finished["status"] == "succeeded"
    ran = jobs.run("snapshots")
    listed = restic_json(repo, "snapshots", "--json")
    assert len(listed) == 2
    assert ran.of("snapshots.report") == [{"snapshots": listed}]
    assert ran.finished["stats"] == {"count": 2}


def forget_with_a_policy_then_prune(tmp_path, jobs, repo):
    data = write_tree(tmp_path / "more", 5, 1000)
    for _ in range(2):
        assert jobs.run("backup", {"paths": [str(data)]}).finished["status"] == "succeeded"
    before = restic_json(repo, "snapshots", "--json")
    assert len(before) == 4  # three groups (paths): one tree per test, this one twice
    dry = jobs.run("forget", {"policy": {"keep_last": 1}, "dry_run": True})
    assert dry.finished["stats"] == {"kept": 3, "removed": 1, "dry_run": True}
    assert dry.of("snapshots.report") == [] and len(restic_json(repo, "snapshots", "--json")) == 4
    forget = jobs.run("forget", {"policy": {"keep_last": 1}, "group_by": "host,paths"})
    assert forget.finished["status"] == "succeeded", forget.texts
    assert forget.finished["stats"] == {"kept": 3, "removed": 1, "dry_run": False}
    after = restic_json(repo, "snapshots", "--json")
    assert len(after) == 3
    assert forget.of("snapshots.report") == [{"snapshots": after}]
    assert forget.of("repo.stats")[0]["snapshots_count"] == 3
    prune = jobs.run("prune")
    assert prune.finished["status"] == "succeeded", prune.texts
    assert "done" in prune.texts
    assert prune.of("repo.stats")[0]["total_size"] <= forget.of("repo.stats")[0]["total_size"]


def check_reads_a_subset_and_unlock_and_stats_run(tmp_path, jobs, repo):
    check = jobs.run("check", {"read_data_subset": "50%"})
    assert check.finished["status"] == "succeeded", check.texts
    assert "no errors were found" in check.texts
    unlock = jobs.run("unlock")
    assert unlock.finished["status"] == "succeeded"
    assert "successfully removed locks" in unlock.texts
    stats = jobs.run("stats")
    direct = restic_json(repo, "stats", "--json", "--mode", "raw-data")
    assert stats.finished["stats"] == stats.of("repo.stats")[0]
    assert stats.finished["stats"]["total_size"] == direct["total_size"]
    assert stats.finished["stats"]["total_blob_count"] == direct["total_blob_count"]


def test_one_repository_from_its_first_backup_to_prune(tmp_path, repo):
    # The steps build on each other's snapshots in one repository: one test runs them in
    # order (pytest-xdist hands the tests of a module to different workers, each of which
    # would make the module's repository afresh).
    for step in (
        backup_reports_progress_stats_snapshots_and_size,
        snapshots_job_matches_restic,
        forget_with_a_policy_then_prune,
        check_reads_a_subset_and_unlock_and_stats_run,
    ):
        root = tmp_path / step.__name__
        root.mkdir()
        step(root, Jobs(root, repo), repo)


def test_wrong_params_never_reach_restic(jobs):
    ran = jobs.run("check", {"read_data_subset": "all of it"})
    assert ran.finished["status"] == "failed"
    assert ran.finished["error"].startswith("invalid check parameters: read_data_subset:")
    assert not any(text.startswith("$ ") for text in ran.texts)


@pytest.fixture
def fresh(tmp_path):
    """Jobs on a new repository of their own, deleted afterwards (it holds big packs)."""
    jobs = Jobs(tmp_path, tmp_path / "repo", grace_seconds=2.0)
    assert jobs.run("init").finished["status"] == "succeeded"
    yield jobs
    shutil.rmtree(tmp_path / "repo", ignore_errors=True)


def wait_for_progress(jobs, job_id, count=2):
    """Wait until the backup reported ``count`` progress events (it is under way)."""
    return wait_for(lambda: len(jobs.progress(job_id)) >= count, timeout=60)


def test_cancel_of_a_long_backup(fresh, big_tree):
    jobs = fresh
    job_id = jobs.start("backup", dict(SLOW_BACKUP, paths=[str(big_tree)]))
    wait_for_progress(jobs, job_id)
    asked = time.monotonic()
    assert jobs.runner.cancel(job_id, "a")
    assert jobs.runner.wait_idle(30)
    took = time.monotonic() - asked
    ran = jobs.result(job_id)
    assert ran.finished["status"] == "cancelled", ran.texts
    assert ran.finished["exit_code"] == 130 and took < 10
    assert 0 < jobs.progress(job_id)[-1]["percent"] < 100
    assert ran.of("snapshots.report") == []
    assert not list((jobs.repo / "locks").iterdir())  # restic removed its own lock
    assert not any("restic unlock" in text for text in ran.texts)
    # The next job needs an exclusive lock: nothing blocks it.
    forget = jobs.run("forget", {"policy": {"keep_last": 1}})
    assert forget.finished["status"] == "succeeded", forget.texts


def test_a_restic_that_must_be_killed_is_unlocked_after(fresh, big_tree):
    jobs = fresh
    job_id = jobs.start("backup", dict(SLOW_BACKUP, paths=[str(big_tree)]))
    wait_for_progress(jobs, job_id, count=1)
    # Freeze restic (as if it hung on a dead backend): SIGINT stays pending, so the agent
    # has to SIGKILL it after the grace period, and the lock it holds stays behind.
    (pid,) = _live_restic_children(str(big_tree))
    os.kill(pid, signal.SIGSTOP)
    assert len(list((jobs.repo / "locks").iterdir())) == 1
    assert jobs.runner.cancel(job_id, "a")
    assert jobs.runner.wait_idle(30)
    ran = jobs.result(job_id)
    assert ran.finished["status"] == "cancelled" and ran.finished["exit_code"] == -9
    assert (
        "restic did not stop within the grace period and was killed (SIGKILL); running restic "
        "unlock to remove the stale lock it may have left"
    ) in ran.texts
    assert "successfully removed locks" in ran.texts
    assert "restic unlock finished: stale locks are removed" in ran.texts
    assert not list((jobs.repo / "locks").iterdir())
    # Exclusive-lock jobs run right after.
    forget = jobs.run("forget", {"policy": {"keep_last": 1}})
    assert forget.finished["status"] == "succeeded", forget.texts
    prune = jobs.run("prune")
    assert prune.finished["status"] == "succeeded", prune.texts


def _live_restic_children(path: str) -> list:
    """restic processes of this test that are alive (not zombies left by earlier tests)
    and back up ``path``."""
    found = []
    listed = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-x", "restic"], capture_output=True, text=True
    ).stdout.split()
    for pid in map(int, listed):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if state != "Z" and path.encode() in argv:
            found.append(pid)
    return found


def test_maintenance_forget_applies_each_groups_policy_to_its_tag(fresh, tmp_path):
    jobs = fresh
    for tag, runs in (("etc", 3), ("home", 3)):
        data = write_tree(tmp_path / tag, 3, 500)
        for _ in range(runs):
            backup = jobs.run("backup", {"paths": [str(data)], "tags": [tag]})
            assert backup.finished["status"] == "succeeded", backup.texts
    forget = jobs.run(
        "forget",
        {
            "groups": [
                {"tag": "etc", "policy": {"keep_last": 1}},
                {"tag": "home", "policy": {"keep_last": 2}},
            ]
        },
    )
    assert forget.finished["status"] == "succeeded", forget.texts
    assert forget.finished["stats"] == {"kept": 3, "removed": 3, "dry_run": False}
    left = restic_json(jobs.repo, "snapshots", "--json")
    assert sorted(snapshot["tags"][0] for snapshot in left) == ["etc", "home", "home"]
    assert len(forget.of("snapshots.report")) == 1  # reported once, after both
    bad = jobs.run("forget", {"groups": [{"tag": "etc", "policy": {}}]})
    assert bad.finished["status"] == "failed"
    assert "groups[0].policy: at least one keep rule" in bad.finished["error"]
