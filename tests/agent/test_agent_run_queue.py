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
