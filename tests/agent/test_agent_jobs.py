"""Every job kind through the runner, with the fake restic replaying real 0.14 captures."""

import json
import shlex
import threading

import pytest
from fake_agent_server import wait_for
from restic_samples import load

from agent.actions.backup import BackupReporter
from agent.jobcontext import Throttle
from agent.runner import Runner
from agent.spool import Spool

EVERYDAY = {"url": "fake:ready", "username": "", "password": "Everyday-Pw-1"}
FULL_ID = "39cddcb58e6e2e74cf4b0c439cc17c0e27c6d88972355872f04b25b17f777062"


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool", max_bytes=10**7)


class Ran:
    """What one job left in the spool: its events and its log."""

    def __init__(self, spool, job_id):
        self.events = [(event["type"], event["data"]) for event in spool.pending_events()]
        batch = spool.job(job_id).pending_batch(max_records=10_000)
        self.records = batch[1] if batch else []

    def of(self, event_type):
        return [data for kind, data in self.events if kind == event_type]

    @property
    def types(self):
        return [kind for kind, _ in self.events]

    @property
    def finished(self):
        (data,) = self.of("job.finished")
        return data

    @property
    def texts(self):
        return [record["text"] for record in self.records]


def run(spool, fake_restic, kind, params=None, credentials=None, version="0.14.0", **kwargs):
    credentials = dict(EVERYDAY) if credentials is None else credentials
    runner = Runner(
        spool,
        lambda: credentials,
        restic_binary=str(fake_restic),
        restic_version=version,
        **kwargs,
    )
    runner.prepare(1, "att")
    assert runner.start(1, "att", kind, params or {})
    assert runner.wait_idle(timeout=30)
    return Ran(spool, 1)


def argvs(fake_restic):
    return [call["argv"][1:] for call in fake_restic.calls()]


# -- backup ------------------------------------------------------------------------------


BACKUP = {"group": "default", "paths": ["/etc"], "excludes": ["*.tmp"], "tags": ["default"]}


def test_backup_reports_progress_summary_snapshots_and_stats(spool, fake_restic):
    ran = run(spool, fake_restic, "backup", BACKUP)
    assert ran.types == [
        "job.started",
        "job.progress",  # the second status line came within the same second
        "snapshots.report",
        "repo.stats",
        "job.finished",
    ]
    assert ran.of("job.progress")[0]["percent"] == 0.0
    assert ran.of("snapshots.report")[0]["snapshots"] == json.loads(
        load("30_snapshots_json.txt").stdout
    )
    assert ran.of("repo.stats")[0]["total_size"] == 603058520
    finished = ran.finished
    assert finished["status"] == "succeeded" and finished["exit_code"] == 0
    assert finished["error"] is None
    assert finished["stats"] == {
        "snapshot_id": FULL_ID,  # 0.14's short id, resolved through the snapshot list
        "files_new": 4,
        "files_changed": 0,
        "files_unmodified": 0,
        "dirs_new": 5,
        "dirs_changed": 0,
        "data_added": 3003545,
        "total_files_processed": 4,
        "total_bytes_processed": 3000024,
        "duration_seconds": 0.236,
        "error_count": 0,
        "missing_paths": [],
    }
    assert argvs(fake_restic) == [
        # backup_paths' default keeps the secret stores under /etc out (docs/agent.md)
        [
            *("backup", "--json", "--tag", "default", "--exclude", "*.tmp"),
            *("--exclude", "/etc/shadow", "--exclude", "/etc/shadow-"),
            *("--exclude", "/etc/gshadow", "--exclude", "/etc/gshadow-"),
            *("--exclude", "/etc/ssh/*_key", "--", "/etc"),
        ],
        ["--no-lock", "snapshots", "--json"],
        ["--no-lock", "stats", "--json", "--mode", "raw-data"],
    ]
    assert fake_restic.calls()[0]["env"]["RESTIC_PROGRESS_FPS"] == "2"
    assert not any('"message_type"' in text for text in ran.texts)  # no raw JSON in the log
    assert not any(text.startswith("[{") for text in ran.texts)
    assert (
        "snapshot 39cddcb5 saved: 4 new, 0 changed, 0 unmodified files; 2.9 MiB added; 0.2 s"
        in ran.texts
    )
    assert "the repository has 10 snapshots" in ran.texts
    assert "repository: 575.1 MiB stored in 490 blobs, 10 snapshots" in ran.texts


def test_backup_with_unreadable_files_is_a_warning(spool, fake_restic):
    ran = run(spool, fake_restic, "backup", BACKUP, credentials=dict(EVERYDAY, url="fake:warning"))
    finished = ran.finished
    assert finished["status"] == "warning" and finished["exit_code"] == 3
    assert "could not be read" in finished["error"]
    assert finished["stats"]["error_count"] == 3 and finished["stats"]["files_new"] == 1
    assert finished["stats"]["error_paths"] == [
        "/srv/demo/permdata/lockeddir",
        "/srv/demo/permdata/secret.txt",
    ]
    assert "error: /srv/demo/permdata/secret.txt: open: Permission denied (during archival)" in (
        ran.texts
    )
    assert any(text.endswith("; 3 items could not be read") for text in ran.texts)
    assert ran.of("snapshots.report") and ran.of("repo.stats")  # the snapshot exists


def test_logged_command_lines_are_shell_quoted_so_a_pasted_line_runs_the_same(spool, fake_restic):
    params = dict(BACKUP, paths=["/srv/my data", "/srv/it's"], excludes=["*.tmp", "$HOME"])
    ran = run(spool, fake_restic, "backup", params)
    logged = [text[2:] for text in ran.texts if text.startswith("$ ")]
    assert len(logged) == len(fake_restic.calls()) == 3  # backup, snapshots, stats
    assert [shlex.split(line) for line in logged] == [call["argv"] for call in fake_restic.calls()]
    quoted = "--exclude '*.tmp' --exclude '$HOME' -- '/srv/my data' '/srv/it'\"'\"'s'"
    assert logged[0].endswith(quoted)
    assert EVERYDAY["password"] not in "\n".join(ran.texts)


MISSING = "/srv/demo/does-not-exist"
TWO_PATHS = dict(BACKUP, paths=["/srv/demo/data", MISSING])


def test_backup_with_a_missing_source_path_is_a_warning_naming_it(spool, fake_restic):
    # restic 0.14 to 0.18: exit 0, the path named only by a text line on stderr (sample 20).
    url = "fake:onemissing"
    ran = run(spool, fake_restic, "backup", TWO_PATHS, credentials=dict(EVERYDAY, url=url))
    finished = ran.finished
    assert finished["status"] == "warning" and finished["exit_code"] == 0
    assert finished["error"] == (
        f"source path {MISSING} does not exist; the snapshot holds the other paths"
    )
    assert finished["stats"]["missing_paths"] == [MISSING]
    assert finished["stats"]["error_count"] == 0 and finished["stats"]["files_new"] == 5
    assert f"{MISSING} does not exist, skipping" in ran.texts  # restic's own line, kept
    assert any(text.endswith("; 1 source path missing") for text in ran.texts)
    assert ran.of("snapshots.report") and ran.of("repo.stats")  # the snapshot exists


def test_backup_with_a_missing_source_path_exit_3_of_restic_0_19(spool, fake_restic):
    url = "fake:missing019"
    ran = run(spool, fake_restic, "backup", TWO_PATHS, credentials=dict(EVERYDAY, url=url))
    finished = ran.finished
    assert finished["status"] == "warning" and finished["exit_code"] == 3
    assert finished["stats"]["missing_paths"] == [MISSING]
    # every file that exists was read: no claim of unreadable files
    assert "could not be read" not in finished["error"]
    assert MISSING in finished["error"]


def test_backup_where_no_source_path_exists_fails_naming_them(spool, fake_restic):
    url = "fake:allmissing"
    params = dict(BACKUP, paths=[MISSING])
    ran = run(spool, fake_restic, "backup", params, credentials=dict(EVERYDAY, url=url))
    finished = ran.finished
    assert finished["status"] == "failed" and finished["exit_code"] == 1
    assert finished["error"] == f"nothing was backed up: source path {MISSING} does not exist"
    assert finished["stats"] == {"missing_paths": [MISSING]}
    assert ran.types == ["job.started", "job.finished"]  # no snapshot: nothing to report


def test_backup_reporter_collects_missing_paths_in_the_given_order():
    logged = []

    class Job:
        def log(self, text, stream="agent"):
            logged.append((stream, text))

        def emit(self, *args):
            pass

    reporter = BackupReporter(Job(), paths=["/a", "/b c", "/d"])
    reporter.stderr_line("/d does not exist, skipping")
    reporter.stderr_line("\x1b[2K/b c does not exist, skipping")
    reporter.stderr_line("/d does not exist, skipping")  # said twice, listed once
    # a later restic might say it as a JSON error about the source path itself
    reporter.stderr_line(
        '{"message_type":"error","error":{"Op":"lstat","Path":"/a","Err":2},'
        '"during":"scan","item":"/a"}'
    )
    reporter.stderr_line(  # a file below a source is an unreadable file, not a missing path
        '{"message_type":"error","error":{"message":"no such file"},'
        '"during":"archival","item":"/d/gone"}'
    )
    assert reporter.missing_paths == ["/a", "/b c", "/d"]
    assert reporter.error_count == 1
    assert ("stderr", "/b c does not exist, skipping") in logged


def test_backup_of_a_locked_repository_fails_without_reports(spool, fake_restic):
    ran = run(spool, fake_restic, "backup", BACKUP, credentials=dict(EVERYDAY, url="fake:locked"))
    assert ran.finished["status"] == "failed"
    assert ran.finished["error"].startswith(
        "the repository is locked by another restic: unable to create lock in backend"
    )
    assert ran.types == ["job.started", "job.finished"]


def test_failing_reports_after_a_backup_do_not_change_its_status(spool, fake_restic):
    ran = run(spool, fake_restic, "backup", BACKUP, credentials=dict(EVERYDAY, url="fake:nolist"))
    assert ran.finished["status"] == "succeeded"
    assert ran.finished["stats"]["snapshot_id"] == "39cddcb5"  # could not be resolved
    assert ran.types == ["job.started", "job.progress", "job.finished"]
    assert (
        "could not report the snapshot list: Fatal: unable to load index: connection reset by peer"
        in ran.texts
    )
    assert any(text.startswith("could not report the repository size: ") for text in ran.texts)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "paths: at least one path to back up is needed"),
        ({"paths": ["etc"]}, "paths: 'etc' is not an absolute path"),
        ({"paths": "/etc"}, "paths: must be a list of non-empty strings"),
        ({"paths": ["/etc"], "tags": ["a,b"]}, "tags: 'a,b' contains a comma"),
        ({"paths": ["/etc"], "limit_upload_kib": -1}, "limit_upload_kib: must be null or"),
    ],
)
def test_backup_params_are_checked_again(spool, fake_restic, params, message):
    ran = run(spool, fake_restic, "backup", params)
    assert ran.finished["status"] == "failed"
    assert ran.finished["error"].startswith("invalid backup parameters: " + message)
    assert ran.texts == [ran.finished["error"]]
    assert fake_restic.calls() == []


def test_cancelled_backup_is_cancelled_and_its_cut_line_dropped(spool, fake_restic):
    ended = threading.Event()
    runner = Runner(
        spool,
        lambda: dict(EVERYDAY, url="fake:slow"),
        restic_binary=str(fake_restic),
        restic_version="0.14.0",
        on_job_end=lambda _: ended.set(),
    )
    runner.prepare(1, "att")
    runner.start(1, "att", "backup", BACKUP)
    wait_for(lambda: any(event["type"] == "job.progress" for event in spool.pending_events()))
    runner.cancel(1, "att")
    assert ended.wait(15)
    ran = Ran(spool, 1)
    assert ran.types == ["job.started", "job.progress", "job.finished"]
    assert ran.of("job.progress")[0]["percent"] == 25.0
    assert ran.finished["status"] == "cancelled" and ran.finished["exit_code"] == 130
    assert ran.finished["error"] == "restic was stopped because the job was cancelled"
    assert "signal interrupt received, cleaning up" in ran.texts  # escape code removed
    assert not any("percent_done" in text for text in ran.texts)
    assert "unlock" not in json.dumps(argvs(fake_restic))  # restic removed its own lock


def test_a_killed_restic_is_followed_by_unlock(spool, fake_restic):
    ended = threading.Event()
    runner = Runner(
        spool,
        lambda: dict(EVERYDAY, url="fake:stubborn"),
        restic_binary=str(fake_restic),
        restic_version="0.14.0",
        grace_seconds=0.5,
        on_job_end=lambda _: ended.set(),
    )
    runner.prepare(1, "att")
    runner.start(1, "att", "backup", BACKUP)
    wait_for(lambda: "ignoring SIGINT" in Ran(spool, 1).texts)  # its handler is in place
    runner.cancel(1, "att")
    assert ended.wait(15)
    ran = Ran(spool, 1)
    assert ran.finished["status"] == "cancelled" and ran.finished["exit_code"] == -9
    assert argvs(fake_restic)[-1] == ["unlock"]  # stale locks only, never --remove-all
    assert (
        "restic did not stop within the grace period and was killed (SIGKILL); running restic "
        "unlock to remove the stale lock it may have left"
    ) in ran.texts
    assert "successfully removed locks" in ran.texts
    assert "restic unlock finished: stale locks are removed" in ran.texts
    assert ran.types == ["job.started", "job.finished"]  # no reports after a cancel


def test_restic_killed_by_someone_else_fails_and_is_unlocked(spool, fake_restic):
    ran = run(spool, fake_restic, "backup", BACKUP, credentials=dict(EVERYDAY, url="fake:oom"))
    assert ran.finished["status"] == "failed" and ran.finished["exit_code"] == -9
    assert ran.finished["error"] == "restic was killed by signal 9"
    assert argvs(fake_restic)[-1] == ["unlock"]
    assert any(
        text.startswith("restic died of signal 9; running restic unlock") for text in ran.texts
    )


# -- init ----------------------------------------------------------------------------------


def test_init_on_restic_014_creates_the_repository(spool, fake_restic):
    missing = dict(EVERYDAY, url="fake:missing")
    ran = run(spool, fake_restic, "init", credentials=missing)
    assert argvs(fake_restic) == [["init"]]
    assert ran.types == ["job.started", "repo.status", "job.finished"]
    assert ran.of("repo.status") == [{"status": "ready", "reason": None}]
    assert ran.finished["status"] == "succeeded"
    assert "created restic repository e8cb0f49df at /srv/demo/repo" in ran.texts


def test_init_uses_json_from_015(spool, fake_restic):
    ran = run(
        spool, fake_restic, "init", credentials=dict(EVERYDAY, url="fake:missing"), version="0.15.2"
    )
    assert argvs(fake_restic) == [["init", "--json"]]
    assert "created restic repository e8cb0f49df" + "0" * 54 in ran.texts
    assert ran.finished["status"] == "succeeded"


def test_init_asks_restic_for_its_version_when_nobody_told_it(spool, fake_restic):
    fake_restic.set_version("0.17.3")
    run(spool, fake_restic, "init", credentials=dict(EVERYDAY, url="fake:missing"), version=None)
    # version=None means "known to be unknown"; leave the argument out to have it asked.
    assert argvs(fake_restic) == [["init"]]
    runner = Runner(
        Spool(spool.root.parent / "other", 10**7),
        lambda: dict(EVERYDAY, url="fake:missing"),
        restic_binary=str(fake_restic),
    )
    assert runner.restic_version == "0.17.3"


def test_init_of_an_existing_repository_succeeds(spool, fake_restic):
    ran = run(spool, fake_restic, "init")
    assert ran.of("repo.status") == [{"status": "ready", "reason": None}]
    assert ran.finished["status"] == "succeeded" and ran.finished["exit_code"] == 1
    assert "a repository already exists at this location: nothing to initialise" in ran.texts


def test_init_failures_are_reported_with_restics_reason(spool, fake_restic):
    ran = run(spool, fake_restic, "init", credentials=dict(EVERYDAY, url="fake:nonsense"))
    assert ran.of("repo.status") == [
        {
            "status": "init_failed",
            "reason": "Fatal: parsing repository location failed: invalid backend",
        }
    ]
    assert ran.finished["status"] == "failed"


def test_init_without_credentials(spool, fake_restic):
    ran = run(spool, fake_restic, "init", credentials={})
    assert ran.of("repo.status") == [
        {"status": "init_failed", "reason": "this host has no repository credentials yet"}
    ]
    assert ran.finished["error"] == "this host has no repository credentials yet"


# -- snapshots, stats ---------------------------------------------------------------------


def test_snapshots_job_reports_the_complete_list(spool, fake_restic):
    ran = run(spool, fake_restic, "snapshots")
    assert ran.types == ["job.started", "snapshots.report", "job.finished"]
    assert len(ran.of("snapshots.report")[0]["snapshots"]) == 10
    assert ran.finished["stats"] == {"count": 10}
    assert ran.texts == [
        "$ " + " ".join((str(fake_restic), "--no-lock", "snapshots", "--json")),
        "the repository has 10 snapshots",
    ]


def test_snapshots_job_of_a_missing_repository_fails(spool, fake_restic):
    ran = run(spool, fake_restic, "snapshots", credentials=dict(EVERYDAY, url="fake:missing"))
    assert ran.finished["status"] == "failed"
    assert ran.finished["error"].startswith("no repository at this location (run init first)")


def test_stats_job(spool, fake_restic):
    ran = run(spool, fake_restic, "stats")
    assert ran.types == ["job.started", "repo.stats", "job.finished"]
    assert ran.finished["stats"] == ran.of("repo.stats")[0]
    assert ran.finished["stats"]["snapshots_count"] == 10


# -- forget, prune (admin credentials) -----------------------------------------------------


ADMIN = {"url": "fake:ready", "username": "admin", "password": "Admin-Pw-2"}


def test_forget_uses_the_admin_credentials_and_reports(spool, fake_restic):
    stored = dict(EVERYDAY, admin_repository=ADMIN)
    params = {"policy": {"keep_daily": 7, "keep_last": 2}, "tags": ["default"]}
    ran = run(spool, fake_restic, "forget", params, credentials=stored)
    assert ran.finished["status"] == "succeeded"
    assert ran.finished["stats"] == {"kept": 2, "removed": 3, "dry_run": False}
    assert ran.types == ["job.started", "snapshots.report", "repo.stats", "job.finished"]
    calls = fake_restic.calls()
    assert calls[0]["argv"][1:] == [
        "forget",
        "--json",
        "--keep-last",
        "2",
        "--keep-daily",
        "7",
        "--tag",
        "default",
    ]
    assert calls[0]["env"]["RESTIC_PASSWORD"] == "Admin-Pw-2"
    # The reports afterwards only read: the everyday credentials do.
    assert [call["env"]["RESTIC_PASSWORD"] for call in calls[1:]] == ["Everyday-Pw-1"] * 2
    assert "using the admin credentials of the repository" in ran.texts
    assert any(
        text.startswith("host testhost, paths /srv/demo/data: kept 2, removed 3")
        for text in ran.texts
    )


def test_forget_dry_run_reports_nothing_afterwards(spool, fake_restic):
    params = {"policy": {"keep_last": 1}, "group_by": "host,paths", "dry_run": True}
    ran = run(spool, fake_restic, "forget", params)
    assert ran.finished["stats"] == {"kept": 5, "removed": 5, "dry_run": True}
    assert ran.types == ["job.started", "job.finished"]
    assert argvs(fake_restic) == [
        ["forget", "--json", "--keep-last", "1", "--group-by", "host,paths", "--dry-run"]
    ]
    assert fake_restic.calls()[0]["env"]["RESTIC_PASSWORD"] == "Everyday-Pw-1"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "policy: must be an object with at least one keep rule"),
        ({"policy": {}}, "policy: at least one keep rule is needed"),
        ({"policy": {"keep_last": 0}}, "policy.keep_last: must be an integer of at least 1"),
        ({"policy": {"keep_last": True}}, "policy.keep_last: must be an integer"),
        ({"policy": {"keep_within": "2 weeks"}}, "policy.keep_within: '2 weeks' is not like"),
        ({"policy": {"keep_last": 1}, "group_by": "hostname"}, "group_by: a comma-separated"),
        ({"policy": {"keep_last": 1}, "dry_run": "yes"}, "dry_run: must be true or false"),
    ],
)
def test_forget_params_are_checked_again(spool, fake_restic, params, message):
    ran = run(spool, fake_restic, "forget", params)
    assert ran.finished["error"].startswith("invalid forget parameters: " + message)
    assert fake_restic.calls() == []


def test_prune_uses_the_admin_credentials_and_reports_the_size(spool, fake_restic):
    ran = run(spool, fake_restic, "prune", credentials=dict(EVERYDAY, admin_repository=ADMIN))
    assert ran.finished["status"] == "succeeded" and ran.finished["stats"] == {}
    assert ran.types == ["job.started", "repo.stats", "job.finished"]
    assert fake_restic.calls()[0]["env"]["RESTIC_PASSWORD"] == "Admin-Pw-2"
    assert "remaining:           481 blobs / 575.119 MiB" in ran.texts


# -- check, unlock -------------------------------------------------------------------------


def test_check_with_a_subset(spool, fake_restic):
    ran = run(spool, fake_restic, "check", {"read_data_subset": "1/2"})
    assert argvs(fake_restic) == [["check", "--read-data-subset=1/2"]]
    assert ran.finished["status"] == "succeeded" and ran.finished["stats"] == {}
    assert "no errors were found" in ran.texts
    assert ran.types == ["job.started", "job.finished"]


@pytest.mark.parametrize("subset", ["3/2", "0/2", "150%", "0%", "lots", 5])
def test_check_refuses_a_bad_subset(spool, fake_restic, subset):
    ran = run(spool, fake_restic, "check", {"read_data_subset": subset})
    assert ran.finished["error"].startswith("invalid check parameters: read_data_subset:")
    assert fake_restic.calls() == []


def test_unlock(spool, fake_restic):
    ran = run(spool, fake_restic, "unlock", {"remove_all": True})
    assert argvs(fake_restic) == [["unlock", "--remove-all"]]
    assert ran.finished["status"] == "succeeded"
    bad = run(Spool(spool.root.parent / "b", 10**7), fake_restic, "unlock", {"remove_all": 1})
    assert bad.finished["error"] == "invalid unlock parameters: remove_all: must be true or false"


def test_no_secret_reaches_the_job_log(spool, fake_restic):
    stored = dict(EVERYDAY, admin_repository=ADMIN)
    ran = run(spool, fake_restic, "probe", credentials=stored)
    assert "debug: using password ******" in ran.texts
    everything = json.dumps(ran.records) + json.dumps(ran.events)
    assert "Everyday-Pw-1" not in everything and "Admin-Pw-2" not in everything


# -- progress throttle ---------------------------------------------------------------------


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class _Job:
    def __init__(self):
        self.events, self.lines = [], []

    def emit(self, event_type, data):
        self.events.append(data)

    def log(self, text, stream="agent"):
        self.lines.append((stream, text))


def test_progress_events_are_throttled_to_one_a_second():
    clock, job = _Clock(), _Job()
    reporter = BackupReporter(job, Throttle(1.0, clock))
    lines = load("12_backup_json_progress_fps4.txt").stdout_lines  # 10 status lines, 4 a second
    for line in lines[:-1]:
        reporter.stdout_line(line)
        clock.now += 0.25
    assert [event["percent"] for event in job.events] == [0.0, 48.73, 81.92]
    reporter.stdout_line(lines[-1])
    assert reporter.stats()["files_new"] == 54 and job.lines == []


def test_reporter_counts_file_errors_into_progress_and_stats():
    job = _Job()
    reporter = BackupReporter(job, Throttle(0, _Clock()))
    captured = load("22_backup_json_unreadable_files_exit3.txt")
    for line in captured.stderr_lines:
        reporter.stderr_line(line)
    for line in captured.stdout_lines:
        reporter.stdout_line(line)
    assert job.events[0]["error_count"] == 3
    assert reporter.stats()["error_count"] == 3
    # restic names the locked directory twice (scan, archival): listed once
    assert reporter.stats()["error_paths"] == [
        "/srv/demo/permdata/lockeddir",
        "/srv/demo/permdata/secret.txt",
    ]
    assert job.lines[-1] == ("stderr", "Warning: at least one source file could not be read")


def test_reporter_keeps_the_first_ten_unreadable_paths():
    job = _Job()
    reporter = BackupReporter(job, Throttle(0, _Clock()), paths=["/srv"])
    for number in range(25):
        reporter.stderr_line(
            json.dumps(
                {
                    "message_type": "error",
                    "error": {"message": "permission denied"},
                    "during": "archival",
                    "item": f"/srv/file-{number:02d}",
                }
            )
        )
    reporter.stderr_line(  # a missing source path is not an unreadable file
        '{"message_type":"error","error":{"Op":"lstat","Path":"/srv","Err":2},'
        '"during":"scan","item":"/srv"}'
    )
    reporter.stderr_line('{"message_type":"error","error":{},"during":"scan"}')  # no item
    reporter.stderr_line(
        json.dumps({"message_type": "error", "error": {}, "item": "/x" + "y" * 5000})
    )
    reporter.stdout_line(load("22_backup_json_unreadable_files_exit3.txt").stdout_lines[-1])
    stats = reporter.stats()
    assert stats["error_count"] == 27
    assert stats["error_paths"] == [f"/srv/file-{number:02d}" for number in range(10)]
    assert stats["missing_paths"] == ["/srv"]


def test_a_clean_backup_has_no_error_paths():
    reporter = BackupReporter(_Job(), Throttle(0, _Clock()))
    reporter.stdout_line(load("10_backup_json_first.txt").stdout_lines[-1])
    assert "error_paths" not in reporter.stats()
