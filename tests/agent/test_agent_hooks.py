"""Backup hooks (docs/protocol.md, "Hooks"): order, failure, RM_JOB_STATUS, the veto."""

import pytest
from fake_agent_server import wait_for

from agent.actions.backup import HOOKS_DISABLED
from agent.runner import Runner
from agent.spool import Spool

PASSWORD = "Hook-Repo-Secret-9"


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool", max_bytes=10**7)


def run_backup(spool, fake_restic, params, repo="fake:ready", wait=True, **runner_options):
    runner = Runner(
        spool,
        lambda: {"url": repo, "password": PASSWORD},
        restic_binary=str(fake_restic),
        restic_version="0.14.0",
        **runner_options,
    )
    runner.prepare(1, "att")
    assert runner.start(1, "att", "backup", dict({"group": "etc", "paths": ["/etc"]}, **params))
    if wait:
        assert runner.wait_idle(timeout=30)
    return runner


def log_texts(spool):
    _first, records = spool.job(1).pending_batch()
    return [record["text"] for record in records]


def finished(spool):
    (event,) = [e for e in spool.pending_events() if e["type"] == "job.finished"]
    return event["data"]


def backup_calls(fake_restic):
    return [call for call in fake_restic.calls() if "backup" in call["argv"]]


def test_hooks_run_around_restic_with_the_job_status(spool, fake_restic):
    run_backup(
        spool,
        fake_restic,
        {
            "pre_hook": "echo pre $RM_HOOK $RM_GROUP pw=${RESTIC_PASSWORD:-none}; echo err >&2",
            "post_hook": "echo post status=$RM_JOB_STATUS snap=${RM_SNAPSHOT_ID:-none}",
        },
    )
    texts = log_texts(spool)
    pre = texts.index("pre-hook: pre pre etc pw=none")  # no repository secret in a hook
    assert "pre-hook: err" in texts
    restic = next(i for i, text in enumerate(texts) if text.startswith("$ ") and "backup" in text)
    post = next(i for i, text in enumerate(texts) if text.startswith("post-hook: post"))
    assert pre < restic < post
    assert texts[post].startswith("post-hook: post status=succeeded snap=39cddcb5")
    assert finished(spool)["status"] == "succeeded"
    records = spool.job(1).pending_batch()[1]
    assert {r["stream"] for r in records if r["text"].startswith("pre-hook:")} == {"agent"}


def test_a_failed_pre_hook_fails_the_job_and_restic_does_not_run(spool, fake_restic):
    run_backup(
        spool,
        fake_restic,
        {"pre_hook": "echo cannot dump; exit 3", "post_hook": "echo post $RM_JOB_STATUS"},
    )
    data = finished(spool)
    assert data["status"] == "failed" and data["error"] == "pre-hook failed with status 3"
    assert backup_calls(fake_restic) == []
    texts = log_texts(spool)
    assert "pre-hook: cannot dump" in texts
    assert "post-hook: post failed" in texts  # the post-hook always runs


def test_the_post_hook_sees_a_failed_backup(spool, fake_restic):
    run_backup(spool, fake_restic, {"post_hook": "echo post $RM_JOB_STATUS"}, repo="fake:wrongpw")
    assert finished(spool)["status"] == "failed"
    assert "post-hook: post failed" in log_texts(spool)


def test_allow_hooks_false_refuses_a_backup_with_hooks(spool, fake_restic, tmp_path):
    marker = tmp_path / "ran"
    run_backup(spool, fake_restic, {"pre_hook": f"touch {marker}"}, allow_hooks=False)
    data = finished(spool)
    assert data["status"] == "failed" and data["error"] == HOOKS_DISABLED
    assert HOOKS_DISABLED == "hooks are disabled on this host (allow_hooks = false in agent.conf)"
    assert not marker.exists() and backup_calls(fake_restic) == []


def test_a_backup_without_hooks_runs_when_hooks_are_disallowed(spool, fake_restic):
    run_backup(spool, fake_restic, {"pre_hook": None, "post_hook": ""}, allow_hooks=False)
    assert finished(spool)["status"] == "succeeded"


def test_a_hook_that_runs_too_long_is_stopped(spool, fake_restic):
    run_backup(spool, fake_restic, {"pre_hook": "sleep 30"}, hook_timeout_seconds=0.5)
    data = finished(spool)
    assert data["status"] == "failed" and data["error"] == "pre-hook timed out after 0.5 s"
    assert backup_calls(fake_restic) == []


def test_cancel_during_the_pre_hook(spool, fake_restic):
    runner = run_backup(
        spool,
        fake_restic,
        {"pre_hook": "echo started; sleep 30", "post_hook": "echo post $RM_JOB_STATUS"},
        wait=False,
    )
    wait_for(lambda: "pre-hook: started" in log_texts(spool))
    assert runner.cancel(1)
    assert runner.wait_idle(timeout=20)
    assert finished(spool)["status"] == "cancelled"
    assert backup_calls(fake_restic) == []
    assert "post-hook: post cancelled" in log_texts(spool)


def test_hooks_are_only_for_backups(spool, fake_restic):
    runner = Runner(
        spool, lambda: {"url": "fake:ready", "password": "x"}, restic_binary=str(fake_restic)
    )
    runner.prepare(1, "att")
    runner.start(1, "att", "probe", {"pre_hook": "exit 1"})
    assert runner.wait_idle(timeout=20)
    assert finished(spool)["status"] == "succeeded"
    assert not any(text.startswith("pre-hook") for text in log_texts(spool))
