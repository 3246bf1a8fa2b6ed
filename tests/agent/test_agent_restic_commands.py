"""One restic subcommand per module: exact argv, and parsers fed with real 0.14 captures."""

import json

import pytest
from restic_samples import load, sample

from agent.restic import errors
from agent.restic.backup import (
    backup_argv,
    missing_paths_error,
    nothing_exists_error,
    nothing_to_back_up,
    progress,
    read_stdout_line,
    skipped_source,
    summary_line,
)
from agent.restic.check import check_argv
from agent.restic.forget import counts, forget_argv, group_lines, parse_forget
from agent.restic.init import init_argv, repository_id
from agent.restic.messages import error_detail, file_error_text, stderr_text
from agent.restic.prune import prune_argv
from agent.restic.snapshots import full_id, parse_snapshots, snapshots_argv
from agent.restic.stats import parse_raw_data_stats, stats_argv, stats_line
from agent.restic.units import format_bytes, format_seconds
from agent.restic.unlock import takes_lock, unlock_argv
from agent.restic.version import at_least, version_tuple

# -- argv --------------------------------------------------------------------------------


def test_init_argv_uses_json_from_015():
    assert init_argv() == ("restic", "init")
    assert init_argv("/opt/restic", "0.14.0") == ("/opt/restic", "init")
    assert init_argv("restic", "0.15.0") == ("restic", "init", "--json")
    assert init_argv("restic", "0.18.1") == ("restic", "init", "--json")
    assert init_argv("restic", None) == ("restic", "init")  # unknown: the oldest behaviour


def test_backup_argv_is_exact():
    assert backup_argv("restic", ["/etc"]) == ("restic", "backup", "--json", "--", "/etc")
    assert backup_argv(
        "/usr/bin/restic",
        ["/etc", "/srv/data dir"],
        excludes=["*.tmp", "-rf"],
        tags=["default", "nightly"],
        limit_upload_kib=500,
        limit_download_kib=2000,
    ) == (
        "/usr/bin/restic",
        "backup",
        "--json",
        "--tag",
        "default",
        "--tag",
        "nightly",
        "--exclude",
        "*.tmp",
        "--exclude",
        "-rf",
        "--limit-upload",
        "500",
        "--limit-download",
        "2000",
        "--",
        "/etc",
        "/srv/data dir",
    )
    # 0 KiB/s means unlimited to restic: no flag at all.
    assert "--limit-upload" not in backup_argv("restic", ["/etc"], limit_upload_kib=0)


def test_snapshots_stats_prune_check_unlock_argv():
    assert snapshots_argv() == ("restic", "--no-lock", "snapshots", "--json")
    assert stats_argv("r") == ("r", "--no-lock", "stats", "--json", "--mode", "raw-data")
    assert prune_argv() == ("restic", "prune")
    assert check_argv() == ("restic", "check")
    assert check_argv("restic", "1/5") == ("restic", "check", "--read-data-subset=1/5")
    assert check_argv("restic", "10%") == ("restic", "check", "--read-data-subset=10%")
    assert unlock_argv() == ("restic", "unlock")
    assert unlock_argv("restic", remove_all=True) == ("restic", "unlock", "--remove-all")


def test_forget_argv_is_exact():
    policy = {
        "keep_within": "1y2m",
        "keep_daily": 7,
        "keep_last": 3,
        "keep_yearly": 2,
        "keep_hourly": None,
    }
    assert forget_argv("restic", policy, ["default"], "host,paths", dry_run=True) == (
        "restic",
        "forget",
        "--json",
        "--keep-last",
        "3",
        "--keep-daily",
        "7",
        "--keep-yearly",
        "2",
        "--keep-within",
        "1y2m",
        "--tag",
        "default",
        "--group-by",
        "host,paths",
        "--dry-run",
    )
    assert forget_argv("restic", {"keep_last": 1}) == (
        "restic",
        "forget",
        "--json",
        "--keep-last",
        "1",
    )


def test_no_argv_carries_a_secret():
    everything = (
        init_argv("restic", "0.18.0")
        + backup_argv("restic", ["/etc"], ["x"], ["t"])
        + forget_argv("restic", {"keep_last": 1})
        + snapshots_argv()
        + stats_argv()
        + prune_argv()
        + check_argv()
        + unlock_argv()
    )
    assert not any("password" in word.lower() or "RESTIC_" in word for word in everything)


def test_which_commands_leave_a_lock_behind():
    assert takes_lock(backup_argv("restic", ["/etc"]))
    assert takes_lock(forget_argv("restic", {"keep_last": 1}))
    assert takes_lock(prune_argv()) and takes_lock(check_argv())
    assert not takes_lock(snapshots_argv()) and not takes_lock(stats_argv())
    assert not takes_lock(init_argv()) and not takes_lock(unlock_argv())


def test_version_gates():
    assert version_tuple("0.17.3-dev") == (0, 17, 3)
    assert version_tuple(None) is None and version_tuple("garbage") is None
    assert at_least("0.15.0", (0, 15, 0)) and not at_least("0.14.0", (0, 15, 0))
    assert not at_least(None, (0, 14, 0))


# -- init ----------------------------------------------------------------------------------


def test_init_output_of_014_and_015():
    assert repository_id(load("01_init_json_unsupported.txt").stdout_lines) == "e8cb0f49df"
    line = json.dumps({"message_type": "initialized", "id": "ab" * 32, "repository": "/r"})
    assert repository_id([line]) == "ab" * 32
    assert repository_id(["nothing useful"]) is None


def test_init_on_an_existing_repository_is_recognised():
    captured = load("02_init_again_config_file_already_exists.txt")
    failure = errors.classify(captured.exit_code, captured.stderr_lines, "init")
    assert isinstance(failure, errors.AlreadyInitialised)
    # 0.18 says it in an exit_error line; S3 & co. say "already initialized".
    exit_error = json.dumps(
        {
            "message_type": "exit_error",
            "code": 1,
            "message": "create repository at /r failed: config file already exists",
        }
    )
    assert isinstance(errors.classify(1, [exit_error], "init"), errors.AlreadyInitialised)
    s3 = ["Fatal: create key in repository at s3:x failed: repository master key and config "]
    s3[0] += "already initialized"
    assert isinstance(errors.classify(1, s3, "init"), errors.AlreadyInitialised)
    # Only init reads it that way.
    assert isinstance(errors.classify(1, captured.stderr_lines), errors.ResticFailed)


# -- backup --------------------------------------------------------------------------------


def test_missing_source_lines_of_014_and_later_versions():
    _, _, stderr = sample("20_backup_json_one_source_missing_exit0.txt")
    assert [skipped_source(line) for line in stderr] == ["/srv/demo/does-not-exist"]
    assert not nothing_to_back_up(stderr)
    code, _, stderr = sample("21_backup_json_all_sources_missing_exit1.txt")
    assert code == 1 and nothing_to_back_up(stderr)
    # later wording, and 0.18's JSON exit_error line on stderr
    assert nothing_to_back_up(["Fatal: all source directories/files do not exist"])
    assert nothing_to_back_up(
        [
            '{"message_type":"exit_error","code":1,'
            '"message":"Fatal: all source directories/files do not exist"}'
        ]
    )
    assert skipped_source("/srv/a b does not exist, skipping") == "/srv/a b"
    assert skipped_source(" does not exist, skipping") is None
    assert skipped_source("Warning: at least one source file could not be read") is None
    assert skipped_source('{"message_type":"status","percent_done":0}') is None
    # JSON errors count only for a source path itself, and only when it is not there
    error = (
        '{"message_type":"error","error":{"message":"lstat /srv/a: no such file"},"item":"/srv/a"}'
    )
    assert skipped_source(error, ["/srv/a"]) == "/srv/a"
    assert skipped_source(error, ["/srv/b"]) is None
    denied = (
        '{"message_type":"error","error":{"Op":"open","Path":"/srv/a","Err":13},"item":"/srv/a"}'
    )
    assert skipped_source(denied, ["/srv/a"]) is None


def test_missing_paths_messages_name_at_most_ten():
    assert missing_paths_error(["/a"]) == (
        "source path /a does not exist; the snapshot holds the other paths"
    )
    many = [f"/p{number}" for number in range(12)]
    assert missing_paths_error(many) == (
        "12 source paths do not exist: /p0, /p1, /p2, /p3, /p4, /p5, /p6, /p7, /p8, /p9 "
        "and 2 more; the snapshot holds the other paths"
    )
    assert nothing_exists_error(["/a", "/b"]) == (
        "nothing was backed up: none of the source paths exists (/a, /b)"
    )


def test_backup_status_and_summary_lines_of_014():
    lines = load("10_backup_json_first.txt").stdout_lines
    kinds = [read_stdout_line(line)[0] for line in lines]
    assert kinds == ["progress", "progress", "summary"]
    first = read_stdout_line(lines[0])[1]
    assert first == {
        "percent": 0.0,
        "files_done": 0,  # left out by restic when zero
        "total_files": 1,
        "bytes_done": 0,
        "total_bytes": 12,
        "seconds_elapsed": 0,
        "error_count": 0,
        "seconds_remaining": None,
        "current_files": [],
    }
    second = read_stdout_line(lines[1])[1]
    assert second["percent"] == 95.74 and second["files_done"] == 3
    assert second["current_files"] == ["/srv/demo/data/big.bin"]
    stats = read_stdout_line(lines[2])[1]
    assert stats == {
        "snapshot_id": "39cddcb5",  # 0.14: the short id
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
    }
    assert summary_line(stats) == (
        "snapshot 39cddcb5 saved: 4 new, 0 changed, 0 unmodified files; 2.9 MiB added; 0.2 s"
    )


def test_backup_progress_with_elapsed_and_remaining_times():
    lines = load("12_backup_json_progress_fps4.txt").stdout_lines
    data = read_stdout_line(lines[5])[1]
    assert data["seconds_elapsed"] == 1 and data["seconds_remaining"] == 1
    assert len(data["current_files"]) == 2 and data["total_bytes"] == 600000441


def test_absurd_seconds_remaining_is_null():
    # --stdin: 0.14 reports 2^63 seconds left (samples E28, and E40 cut by SIGTERM).
    lines = load("E28_backup_stdin_that_held_the_lock.txt").stdout_lines[1:-1]
    lines += load("E40_sigterm_during_backup.txt").stdout_lines[1:]
    for line in lines:
        kind, data = read_stdout_line(line)
        assert kind == "progress" and data["seconds_remaining"] is None
    assert progress({"percent_done": 1.7})["percent"] == 100.0  # clamped
    assert progress({"message_type": "status"})["percent"] == 0.0


def test_scan_finished_typed_status_and_verbose_lines_are_skipped():
    lines = load("11_backup_json_verbose2.txt").stdout_lines
    kinds = [read_stdout_line(line)[0] for line in lines]
    assert kinds[1] == "skip"  # {"message_type":"status","action":"scan_finished",…} in 0.14
    assert kinds == ["progress"] + ["skip"] * 10 + ["summary"]


def test_stdout_cut_short_after_sigint():
    lines = load("E30_sigint_during_backup.txt").stdout_lines
    assert [read_stdout_line(line)[0] for line in lines] == ["progress"] * 7
    assert read_stdout_line('{"message_type":"status","percent_do') == ("skip", None)
    assert read_stdout_line("") == ("text", "")
    assert read_stdout_line("/srv/x does not exist, skipping")[0] == "text"


def test_quiet_and_dry_run_summaries():
    (line,) = load("14_backup_json_quiet.txt").stdout_lines
    assert read_stdout_line(line)[0] == "summary"
    stats = read_stdout_line(load("15_backup_json_dry_run.txt").stdout_lines[-1])[1]
    assert stats["files_unmodified"] == 4


def test_summary_without_snapshot_and_with_errors():
    stats = read_stdout_line('{"message_type":"summary","total_duration":75.2}')[1]
    stats["error_count"] = 2
    assert summary_line(stats) == (
        "no snapshot saved: 0 new, 0 changed, 0 unmodified files; 0 B added; 1 min 15 s; "
        "2 items could not be read"
    )


def test_per_file_error_lines_of_014_become_readable():
    captured = load("22_backup_json_unreadable_files_exit3.txt")
    assert captured.exit_code == 3
    assert [stderr_text(line) for line in captured.stderr_lines] == [
        "error: /srv/demo/permdata/lockeddir: no details (restic before 0.17.1 does not "
        "report them) (during scan)",
        "error: /srv/demo/permdata/lockeddir: no details (restic before 0.17.1 does not "
        "report them) (during archival)",
        "error: /srv/demo/permdata/secret.txt: open: Permission denied (during archival)",
        "Warning: at least one source file could not be read",
    ]
    failure = errors.classify(captured.exit_code, captured.stderr_lines, "backup")
    assert isinstance(failure, errors.PartialBackup)
    # exit 3 of another command is an ordinary failure.
    assert isinstance(errors.classify(3, captured.stderr_lines), errors.ResticFailed)


def test_error_shapes_of_newer_versions():
    assert error_detail({"message": "open /x: permission denied"}) == "open /x: permission denied"
    assert error_detail("plain") == "plain"
    line = {"message_type": "error", "error": {"message": "lstat /y: no such file"}, "item": "/y"}
    assert file_error_text(line) == "error: /y: lstat /y: no such file"


def test_018_exit_error_lines_become_the_message():
    tail = [
        json.dumps(
            {
                "message_type": "exit_error",
                "code": 11,
                "message": "unable to create lock in backend: repository is already locked "
                "by PID 4 on vm by root (UID 0, GID 0)",
            }
        )
    ]
    failure = errors.classify(11, tail)
    assert isinstance(failure, errors.RepositoryLocked)
    assert str(failure).startswith("Fatal: unable to create lock in backend")
    assert errors.describe(failure).startswith("the repository is locked by another restic")


def test_a_missing_source_is_only_a_line_of_text():
    captured = load("20_backup_json_one_source_missing_exit0.txt")
    assert errors.classify(captured.exit_code, captured.stderr_lines, "backup") is None
    assert [stderr_text(line) for line in captured.stderr_lines] == [
        "/srv/demo/does-not-exist does not exist, skipping"
    ]


def test_all_sources_missing_fails_with_the_fatal_line():
    captured = load("21_backup_json_all_sources_missing_exit1.txt")
    failure = errors.classify(captured.exit_code, captured.stderr_lines, "backup")
    assert type(failure) is errors.ResticFailed
    assert str(failure) == "Fatal: all target directories/files do not exist"


def test_locked_repository_message_names_the_holder():
    captured = load("E50_backup_blocked_by_stale_exclusive_lock.txt")
    failure = errors.classify(captured.exit_code, captured.stderr_lines, "backup")
    assert isinstance(failure, errors.RepositoryLocked)
    assert str(failure) == (
        "unable to create lock in backend: repository is already locked exclusively by PID "
        "20449 on vm by root (UID 0, GID 0) / lock was created at 2026-11-25 19:45:52 "
        "(3.006303532s ago)"
    )


def test_killed_and_interrupted():
    assert isinstance(errors.classify(-9, []), errors.Killed)
    assert str(errors.classify(-15, [])) == "restic was killed by signal 15"
    captured = load("E30_sigint_during_backup.txt")
    assert isinstance(errors.classify(130, captured.stderr_lines), errors.Interrupted)


# -- snapshots, forget, stats, check ------------------------------------------------------------


def test_snapshots_are_passed_on_as_restic_printed_them():
    captured = load("30_snapshots_json.txt")
    snapshots = parse_snapshots(captured.stdout)
    assert snapshots == json.loads(captured.stdout)
    assert len(snapshots) == 10 and len(snapshots[0]["id"]) == 64
    assert "parent" not in snapshots[0] and snapshots[1]["parent"]
    assert parse_snapshots(load("34_snapshots_json_no_match.txt").stdout) == []
    assert full_id("39cddcb5", snapshots) == snapshots[0]["id"]
    assert full_id("", snapshots) is None and full_id("ffffffff", snapshots) is None


@pytest.mark.parametrize("text", ["", "not json", '{"id": "x"}', '[{"no_id": 1}]'])
def test_snapshots_parser_refuses_what_is_not_a_list(text):
    with pytest.raises(errors.UnexpectedOutput):
        parse_snapshots(text)


def test_forget_output_counts_and_lines():
    groups = parse_forget(load("91_forget_json_keep_daily.txt").stdout)
    assert counts(groups) == (2, 3)
    (line,) = group_lines(groups, dry_run=False)
    assert line.startswith("host testhost, paths /srv/demo/data: kept 2, removed 3 (78899276, ")
    dry = parse_forget(load("90_forget_json_dry_run.txt").stdout)
    assert "would remove" in group_lines(dry, dry_run=True)[0]
    # restic prints nothing when snapshot ids are given or no group matched.
    assert parse_forget(load("92_forget_json_explicit_id_no_output.txt").stdout) == []
    with pytest.raises(errors.UnexpectedOutput):
        parse_forget("loading indexes...")


def test_raw_data_stats_of_014_and_later():
    stats = parse_raw_data_stats(load("61_stats_json_raw_data.txt").stdout)
    assert stats == {
        "mode": "raw-data",
        "total_size": 603058520,
        "total_blob_count": 490,
        "snapshots_count": 10,
        "total_uncompressed_size": None,  # 0.14 does not report compression
        "compression_ratio": None,
    }
    assert stats_line(stats) == "repository: 575.1 MiB stored in 490 blobs, 10 snapshots"
    newer = parse_raw_data_stats(
        '{"total_size":100,"total_uncompressed_size":250,"compression_ratio":2.5,'
        '"compression_progress":100,"compression_space_saving":60,"snapshots_count":1}'
    )
    assert newer["total_uncompressed_size"] == 250 and newer["compression_ratio"] == 2.5
    assert newer["total_blob_count"] == 0  # omitted when zero
    assert stats_line(newer).endswith("(compression ratio 2.50)")
    with pytest.raises(errors.UnexpectedOutput):
        parse_raw_data_stats("[]")


def test_check_of_a_damaged_repository():
    captured = load("E60_check_damaged_repo.txt")
    failure = errors.classify(captured.exit_code, captured.stderr_lines)
    assert str(failure) == "Fatal: repository contains errors"


def test_units():
    assert format_bytes(0) == "0 B" and format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3003545) == "2.9 MiB"
    assert format_bytes(5 * 1024**4) == "5.0 TiB"
    assert format_seconds(0.236) == "0.2 s" and format_seconds(3720) == "1 h 2 min"
