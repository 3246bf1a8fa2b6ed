"""restic wrapping: pure argv builders, the fresh environment, error classes, the one seam."""

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from restic_samples import sample

from agent.restic import errors, execute
from agent.restic.environment import Masker, restic_environment, secrets_of
from agent.restic.probe import probe_argv
from agent.restic.version import parse_version, version_argv


def test_probe_argv_is_exact():
    assert probe_argv() == ("restic", "--no-lock", "cat", "config")
    assert probe_argv("/opt/restic") == ("/opt/restic", "--no-lock", "cat", "config")
    assert version_argv() == ("restic", "version")


def test_version_parsing():
    _, stdout, _ = sample("00_version.txt")
    assert parse_version("\n".join(stdout)) == "0.14.0"
    assert parse_version("restic 0.18.1 compiled with go1.24.1 on linux/arm64") == "0.18.1"
    assert parse_version("bash: restic: command not found") is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("E01_wrong_password.txt", errors.WrongPassword),
        ("E03_missing_repo_cat_config.txt", errors.RepositoryNotFound),
        ("E09_repo_dir_not_a_repo.txt", errors.RepositoryNotFound),
        ("E21_snapshots_while_exclusively_locked.txt", errors.RepositoryLocked),
        ("E10_unsupported_backend.txt", errors.ResticFailed),
    ],
)
def test_classification_of_restic_014_stderr(name, expected):
    exit_code, _, stderr = sample(name)
    assert exit_code == 1  # 0.14 has no dedicated exit codes
    failure = errors.classify(exit_code, stderr)
    assert type(failure) is expected
    assert str(failure)


def test_classification_by_exit_code_on_newer_restic():
    assert isinstance(
        errors.classify(10, ["Fatal: repository does not exist: …"]), errors.RepositoryNotFound
    )
    assert isinstance(errors.classify(11, []), errors.RepositoryLocked)
    assert isinstance(errors.classify(12, []), errors.WrongPassword)
    assert isinstance(errors.classify(130, []), errors.Interrupted)
    assert errors.classify(0, ["noise"]) is None
    assert str(errors.classify(1, [])) == "restic exited with status 1"


def test_error_message_prefers_the_fatal_line_and_drops_escapes():
    tail = ["\x1b[2Ksignal interrupt received, cleaning up", "Fatal: unable to save snapshot"]
    assert errors.error_message(tail, 1) == "Fatal: unable to save snapshot"
    assert errors.error_message(["\x1b[2Kcleaning up"], 130) == "cleaning up"


def test_environment_is_fresh_and_carries_the_secrets():
    base = {
        "PATH": "/usr/bin",
        "HTTPS_PROXY": "http://proxy:3128",
        "RESTIC_PASSWORD_FILE": "/root/other-password",  # would win over RESTIC_PASSWORD
        "RESTIC_PASSWORD_COMMAND": "cat /root/x",
        "AWS_SECRET_ACCESS_KEY": "from-the-agent-env",
        "RM_AGENT_HOME": "/var/lib/x",
    }
    credentials = {"url": "/srv/repo", "username": "", "password": "s3cret-Pass"}
    env = restic_environment(credentials, Path("/var/cache/rm"), base=base)
    assert env == {
        "PATH": "/usr/bin",
        "HTTPS_PROXY": "http://proxy:3128",
        "RESTIC_PROGRESS_FPS": "1",
        "RESTIC_CACHE_DIR": "/var/cache/rm",
        "RESTIC_REPOSITORY": "/srv/repo",
        "RESTIC_PASSWORD": "s3cret-Pass",
    }


def test_secrets_include_a_password_inside_the_repository_url():
    credentials = {"url": "rest:https://backup:url%2Fpass@rs.example/web-1", "password": "pw2"}
    found = secrets_of(credentials)
    assert "pw2" in found and "url/pass" in found and "url%2Fpass" in found
    mask = Masker(found)
    assert mask("Fatal: rest:https://backup:url%2Fpass@rs.example/ pw2") == (
        "Fatal: rest:https://backup:******@rs.example/ ******"
    )
    assert secrets_of(None) == [] and Masker([])("x") == "x"


def test_execute_streams_lines_masks_secrets_and_closes_stdin(fake_restic):
    credentials = {"url": "fake:ready", "password": "p4ss-Word-xyz"}
    lines = []
    outcome = execute.run(
        (str(fake_restic), "--no-lock", "cat", "config"),
        restic_environment(credentials),
        on_line=lambda stream, text: lines.append((stream, text)),
        masker=Masker(secrets_of(credentials)),
    )
    assert outcome.exit_code == 0 and not outcome.cancelled
    assert ("stdout", '  "version": 2,') in lines
    assert ("stderr", "debug: using password ******") in lines
    assert "p4ss-Word-xyz" not in repr(lines) + repr(outcome)
    (call,) = fake_restic.calls()
    assert call["argv"][1:] == ["--no-lock", "cat", "config"]
    assert call["stdin_eof"] is True  # stdin is /dev/null: restic cannot wait for a password
    assert call["env"]["RESTIC_PASSWORD"] == "p4ss-Word-xyz"
    assert not any("p4ss" in argument for argument in call["argv"])


def test_execute_keeps_the_stderr_tail(fake_restic):
    outcome = execute.run(
        (str(fake_restic), "cat", "config"), restic_environment({"url": "fake:missing"})
    )
    assert outcome.exit_code == 1
    assert outcome.stderr_tail[-1] == "/srv/repo"
    assert isinstance(
        errors.classify(outcome.exit_code, outcome.stderr_tail), errors.RepositoryNotFound
    )


def test_cancel_sends_sigint(fake_restic):
    cancel = threading.Event()
    lines = []

    def on_line(stream, text):
        lines.append(text)
        if text == "working":
            cancel.set()

    outcome = execute.run(
        (str(fake_restic), "check"), restic_environment({"url": "fake:slow"}), on_line, cancel
    )
    assert outcome.cancelled and not outcome.killed
    assert outcome.exit_code == 130
    assert lines[-1] == "\x1b[2Ksignal interrupt received, cleaning up"


def test_cancel_kills_after_the_grace_when_sigint_is_ignored(fake_restic):
    cancel = threading.Event()
    started = time.monotonic()
    outcome = execute.run(
        (str(fake_restic), "backup"),
        restic_environment({"url": "fake:stubborn"}),
        on_line=lambda stream, text: cancel.set(),
        cancel=cancel,
        grace_seconds=0.5,
    )
    assert outcome.cancelled and outcome.killed and outcome.exit_code == -9
    assert time.monotonic() - started < 10


def test_missing_binary_is_a_clear_error(tmp_path):
    with pytest.raises(errors.ResticNotInstalled, match="not installed"):
        execute.run((str(tmp_path / "no-restic"), "version"), {"PATH": "/nonexistent"})


def test_a_long_line_is_handed_out_whole_and_masked_across_reads():
    # The secret straddles the 64 KiB read boundary of the pump.
    script = "import sys; sys.stdout.write('x' * 65530 + 'Secret-99' + 'y' * 100000 + '\\nend')"
    lines = []
    outcome = execute.run(
        (sys.executable, "-c", script),
        {"PATH": "/usr/bin:/bin"},
        on_line=lambda stream, text: lines.append(text),
        masker=Masker(["Secret-99"]),
    )
    assert outcome.exit_code == 0
    assert [len(line) for line in lines] == [65530 + 6 + 100000, 3]
    assert "******" in lines[0] and lines[1] == "end"  # the last line had no newline


def test_captured_stdout_is_kept_whole_and_masked():
    script = "print('[' + ','.join(['{\"id\": \"pw-Secret\"}'] * 20000) + ']')"
    lines = []
    outcome = execute.run(
        (sys.executable, "-c", script),
        {"PATH": "/usr/bin:/bin"},
        on_line=lambda stream, text: lines.append(text),
        masker=Masker(["pw-Secret"]),
        capture_stdout=True,
    )
    assert lines == [] and outcome.stdout_complete
    assert json.loads(outcome.stdout) == [{"id": "******"}] * 20000


def test_timeout_stops_restic_like_a_cancel(fake_restic):
    outcome = execute.run(
        (str(fake_restic), "check"), restic_environment({"url": "fake:slow"}), timeout=0.3
    )
    assert outcome.timed_out and not outcome.cancelled and outcome.exit_code == 130


def test_a_cancelled_job_never_starts_restic(fake_restic):
    cancel = threading.Event()
    cancel.set()
    outcome = execute.run((str(fake_restic), "check"), {}, cancel=cancel)
    assert outcome.cancelled and outcome.exit_code is None
    assert fake_restic.calls() == []
