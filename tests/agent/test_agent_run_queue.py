"""Runs fired but not started yet survive an agent stop, sealed (their params hold hooks)."""

import base64
from datetime import datetime, timezone

from agent.config import new_secrets_key
from agent.runs import PlannedRun, QueuedRuns, RunQueue


def planned(number: int) -> PlannedRun:
    return PlannedRun(
        kind="backup",
        params={"group": f"g{number}", "paths": ["/etc"], "pre_hook": "echo hook-body-secret"},
        fired_at=datetime(2026, 11, 25, 2, 30, tzinfo=timezone.utc),
        schedule_id=4,
        schedule_version=7,
    )


def test_queued_runs_are_kept_sealed_until_they_start(tmp_path):
    key = base64.b64decode(new_secrets_key())
    store = QueuedRuns(tmp_path / "queued-runs.sealed", key)
    first = RunQueue(client=None, runner=None, spool=None, store=store)
    runs = [planned(1), planned(2)]
    for run in runs:
        first.submit(run)
    assert b"hook-body-secret" not in (tmp_path / "queued-runs.sealed").read_bytes()

    # The agent stops before they start; the next one picks them up, in order.
    again = RunQueue(client=None, runner=None, spool=None, store=store)
    assert again.pending() == 2
    loaded = store.load()
    assert [run.run_id for run in loaded] == [run.run_id for run in runs]
    assert loaded[0].params["pre_hook"] == "echo hook-body-secret"
    assert loaded[0].fired_at == runs[0].fired_at and loaded[0].schedule_version == 7
    again._started(loaded[0])
    assert [run.run_id for run in store.load()] == [runs[1].run_id]


def test_an_unreadable_queue_is_dropped_not_fatal(tmp_path):
    (tmp_path / "queued-runs.sealed").write_bytes(b"\x01garbage" * 10)
    store = QueuedRuns(tmp_path / "queued-runs.sealed", base64.b64decode(new_secrets_key()))
    assert RunQueue(client=None, runner=None, spool=None, store=store).pending() == 0


class Clock:
    def __init__(self):
        self.at = datetime(2026, 11, 25, 2, 30, tzinfo=timezone.utc)

    def __call__(self):
        return self.at


def test_a_failed_scheduled_run_is_retried_with_backoff_then_given_up(tmp_path):
    from datetime import timedelta

    clock = Clock()
    store = QueuedRuns(tmp_path / "queued-runs.sealed", base64.b64decode(new_secrets_key()))
    runs = RunQueue(client=None, runner=None, spool=None, store=store, now=clock)
    first = planned(1)
    first.retry_max, first.retry_backoff_seconds = 2, 60
    runs.finished(first, "succeeded")
    runs.finished(first, "cancelled")
    assert runs.pending() == 0  # only failures are retried
    runs.finished(first, "failed")
    assert runs.next_due() is None  # waits 60 s
    clock.at += timedelta(seconds=61)
    second = runs.next_due()
    assert (second.attempt, second.run_id != first.run_id) == (2, True)
    assert second.schedule_id == first.schedule_id and second.params == first.params
    runs._started(second)
    runs.finished(second, "failed")
    # The backoff doubles, and the retry survives an agent restart.
    restarted = RunQueue(client=None, runner=None, spool=None, store=store, now=clock)
    clock.at += timedelta(seconds=100)
    assert restarted.next_due() is None
    clock.at += timedelta(seconds=21)
    third = restarted.next_due()
    assert third.attempt == 3
    restarted._started(third)
    restarted.finished(third, "failed")
    assert restarted.pending() == 0 and store.load() == []  # retry_max 2: given up


def test_run_now_jobs_and_groups_without_retries_are_not_retried(tmp_path):
    runs = RunQueue(client=None, runner=None, spool=None)
    manual = planned(1)
    manual.schedule_id = None
    manual.retry_max = 3
    runs.finished(manual, "failed")
    runs.finished(planned(2), "failed")  # retry_max 0
    assert runs.pending() == 0
