"""Backups whose source paths do not exist, against the real restic (issue 11).

restic 0.14 to 0.18 skip a missing source with a text line on stderr and exit 0; the agent
must not call that a success. Skipped when restic is not installed, unless
RM_REQUIRE_RESTIC=1 (CI): then it fails.
"""

import json
import os
import subprocess

import pytest

from agent.restic import errors
from tests.agent.real_restic import RESTIC, RunnerJobs, needs_restic, run_restic

PASSWORD = "real-Missing-pass-7c6d5e"

pytestmark = needs_restic()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-missing")
    jobs = RunnerJobs(root, lambda: {"url": str(root / "repo"), "password": PASSWORD})
    assert jobs.run("init").finished["status"] == "succeeded"
    return root / "repo"


@pytest.fixture
def jobs(tmp_path, repo):
    return RunnerJobs(tmp_path, lambda: {"url": str(repo), "password": PASSWORD})


def snapshots(repo):
    return json.loads(run_restic(repo, PASSWORD, "snapshots", "--json"))


def test_some_paths_missing_is_a_warning_naming_them(tmp_path, jobs, repo):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("kept\n")
    gone, also_gone = str(tmp_path / "gone"), str(tmp_path / "also gone")
    ran = jobs.run("backup", {"paths": [gone, str(data), also_gone], "tags": ["t1"]})
    finished = ran.finished
    assert finished["status"] == "warning", ran.texts
    assert finished["exit_code"] == 0  # restic itself calls it a success
    assert finished["stats"]["missing_paths"] == [gone, also_gone]  # in the job's order
    assert finished["error"] == (
        f"2 source paths do not exist: {gone}, {also_gone}; the snapshot holds the other paths"
    )
    assert finished["stats"]["files_new"] == 1 and finished["stats"]["error_count"] == 0
    # restic's own stderr lines are in the log, and the snapshot holds the path that exists
    assert f"{gone} does not exist, skipping" in ran.texts
    assert f"{also_gone} does not exist, skipping" in ran.texts
    (saved,) = [item for item in snapshots(repo) if item["id"] == finished["stats"]["snapshot_id"]]
    assert saved["paths"] == [str(data)]
    assert ran.of("snapshots.report") and ran.of("repo.stats")


def test_every_path_missing_fails_and_saves_nothing(tmp_path, jobs, repo):
    before = len(snapshots(repo))
    gone = [str(tmp_path / "nope-1"), str(tmp_path / "nope-2")]
    ran = jobs.run("backup", {"paths": gone})
    finished = ran.finished
    assert finished["status"] == "failed" and finished["exit_code"] == 1, ran.texts
    assert finished["stats"] == {"missing_paths": gone}
    assert finished["error"] == (
        f"nothing was backed up: none of the source paths exists ({gone[0]}, {gone[1]})"
    )
    assert "Fatal: all target directories/files do not exist" in ran.texts  # 0.14's words
    assert len(snapshots(repo)) == before


def test_all_paths_present_is_a_success_with_an_empty_missing_list(tmp_path, jobs):
    data = tmp_path / "present"
    data.mkdir()
    (data / "b.txt").write_text("here\n")
    ran = jobs.run("backup", {"paths": [str(data)]})
    assert ran.finished["status"] == "succeeded", ran.texts
    assert ran.finished["error"] is None
    assert ran.finished["stats"]["missing_paths"] == []


def test_a_dangling_symlink_as_source_is_backed_up_not_missing(tmp_path, jobs):
    # restic checks sources with lstat: the link itself exists and is saved.
    link = tmp_path / "link"
    os.symlink(tmp_path / "target-that-is-gone", link)
    ran = jobs.run("backup", {"paths": [str(link)]})
    assert ran.finished["status"] == "succeeded", ran.texts
    assert ran.finished["stats"]["missing_paths"] == []


def test_a_missing_exclude_file_fails_the_backup_and_the_error_names_it(tmp_path, repo):
    # The agent passes excludes as --exclude patterns, never as a file; this pins down what
    # restic does with a missing --exclude-file, should one ever be passed.
    data = tmp_path / "data"
    data.mkdir()
    missing = tmp_path / "excludes.txt"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_CACHE_DIR": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [RESTIC, "backup", "--json", "--exclude-file", str(missing), "--", str(data)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stdout == ""
    stderr = result.stderr.splitlines()
    failure = errors.classify(result.returncode, stderr, "backup")
    assert isinstance(failure, errors.ResticFailed)
    assert errors.describe(failure) == f"open {missing}: no such file or directory"
