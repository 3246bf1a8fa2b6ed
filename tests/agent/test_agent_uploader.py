"""The uploader against the fake server: order, rewinds, stale attempts, truncation."""

import pytest
from fake_agent_server import AGENT_TOKEN

from agent.client import Client, RetryableError
from agent.spool import Spool
from agent.uploader import Uploader


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool", max_bytes=10**7)


def make_uploader(fake_server, spool, cancelled=None):
    cancelled = cancelled if cancelled is not None else []
    return Uploader(
        Client(fake_server.url, agent_token=AGENT_TOKEN, poll_wait_seconds=1),
        spool,
        settings=lambda: {"log_flush_seconds": 0.2, "max_log_batch_records": 4},
        cancel_job=lambda job_id, attempt_id, reason: cancelled.append((job_id, reason)),
    )


def finished_job(spool, job_id=1, lines=10):
    spool.add_event("job.started", job_id, "a", {})
    job = spool.open_job(job_id, "a")
    for number in range(lines):
        job.append("stdout", f"line {number + 1}")
    final_seq, dropped = job.finish()
    spool.add_event(
        "job.finished",
        job_id,
        "a",
        {"status": "succeeded", "final_seq": final_seq, "lines_dropped": dropped},
    )
    return job


def test_everything_is_delivered_in_order_and_the_spool_emptied(fake_server, spool):
    finished_job(spool, lines=10)
    make_uploader(fake_server, spool).flush()
    assert [record["seq"] for record in fake_server.logs[1]] == list(range(1, 11))
    assert [record["text"] for record in fake_server.logs[1]][:2] == ["line 1", "line 2"]
    assert max(len(request["records"]) for request in fake_server.log_requests) == 4
    events = fake_server.events_of(job_id=1)
    assert [event["type"] for event in events] == ["job.started", "job.finished"]
    # job.finished waited for the job's last log record.
    assert fake_server.committed_when_received[events[1]["event_id"]] == 10
    assert spool.jobs() == [] and spool.event_count() == 0


def test_a_gap_rewinds_to_the_servers_committed_seq(fake_server, spool):
    job = finished_job(spool, lines=10)
    job.set_committed(6)  # the agent believes 1..6 are stored; the server has nothing
    make_uploader(fake_server, spool).flush()
    first = fake_server.log_requests[0]
    assert first["first_seq"] == 7
    assert fake_server.log_requests[1]["first_seq"] == 1  # after the 416
    assert [record["seq"] for record in fake_server.logs[1]] == list(range(1, 11))


def test_stale_attempt_drops_the_jobs_spool(fake_server, spool):
    finished_job(spool, job_id=5, lines=3)
    fake_server.stale_jobs.add(5)
    cancelled = []
    make_uploader(fake_server, spool, cancelled).flush()
    assert spool.jobs() == [] and spool.event_count() == 0  # events rejected = acked
    assert cancelled == [(5, "stale_attempt")]
    assert 5 not in fake_server.logs


def test_truncated_stops_sending_records(fake_server, spool):
    job = finished_job(spool, lines=10)
    fake_server.truncate_at[1] = 3
    make_uploader(fake_server, spool).flush()
    assert len(fake_server.logs[1]) == 3
    assert job.stopped == "truncated" and job.lines_dropped == 7
    assert len(fake_server.log_requests) == 1
    assert spool.jobs() == []


def test_cancelling_job_state_cancels_the_job(fake_server, spool):
    job = spool.open_job(2, "a")
    job.append("stdout", "x")
    fake_server.cancelling_jobs.add(2)
    cancelled = []
    make_uploader(fake_server, spool, cancelled).flush()
    assert cancelled == [(2, "cancelled")]


def test_unreachable_server_keeps_everything_and_backs_off(fake_server, spool):
    finished_job(spool, lines=3)
    fake_server.down = True
    uploader = make_uploader(fake_server, spool)
    with pytest.raises(RetryableError):
        uploader.flush()
    delay = uploader.flush_once_logged()
    assert 0 <= delay <= 2 and uploader.last_error
    assert spool.event_count() == 2 and spool.job(1).unsent_count() == 3
    fake_server.down = False
    assert uploader.flush_once_logged() == 0.2
    assert spool.event_count() == 0 and len(fake_server.logs[1]) == 3


def test_a_watched_running_job_is_flushed_at_the_watched_interval(fake_server, spool):
    running = {3}
    uploader = Uploader(
        Client(fake_server.url, agent_token=AGENT_TOKEN, poll_wait_seconds=1),
        spool,
        settings=lambda: {"log_flush_seconds": 10, "log_flush_watched_seconds": 1},
        cancel_job=lambda job_id, attempt_id, reason: None,
        is_running=lambda job_id: job_id in running,
    )
    job = spool.open_job(3, "a")
    job.append("agent", "$ restic backup --json -- /etc")
    assert uploader.flush_once_logged() == 10  # nobody watches
    fake_server.watched_jobs.add(3)
    job.append("stdout", "one more line")
    assert uploader.flush_once_logged() == 1 and uploader.is_watched(3)
    # Progress events ride along with these frequent flushes.
    spool.add_event("job.progress", 3, "a", {"percent": 12.5})
    assert uploader.flush_once_logged() == 1
    assert fake_server.events_of(3, "job.progress")[0]["data"] == {"percent": 12.5}
    # The answer to the next records says nobody watches any more …
    fake_server.watched_jobs.clear()
    job.append("stdout", "last line")
    assert uploader.flush_once_logged() == 10
    # … and a job that ended is not watched, whatever the server said last.
    fake_server.watched_jobs.add(3)
    job.append("stdout", "after")
    assert uploader.flush_once_logged() == 1
    running.clear()
    assert uploader.flush_interval() == 10 and not uploader.is_watched(3)


def test_a_job_that_prints_no_lines_learns_it_is_watched_from_events_and_commands(
    fake_server, spool
):
    running = {4}
    uploader = Uploader(
        Client(fake_server.url, agent_token=AGENT_TOKEN, poll_wait_seconds=1),
        spool,
        settings=lambda: {"log_flush_seconds": 10, "log_flush_watched_seconds": 1},
        cancel_job=lambda job_id, attempt_id, reason: None,
        is_running=lambda job_id: job_id in running,
    )
    spool.open_job(4, "a")
    spool.add_event("job.progress", 4, "a", {"percent": 1.0})
    assert uploader.flush_once_logged() == 10
    # A backup prints only progress (events, no log lines): the events answer says it.
    fake_server.watched_jobs.add(4)
    spool.add_event("job.progress", 4, "a", {"percent": 2.0})
    assert uploader.flush_once_logged() == 1 and uploader.is_watched(4)
    fake_server.watched_jobs.clear()
    spool.add_event("job.progress", 4, "a", {"percent": 3.0})
    assert uploader.flush_once_logged() == 10 and not uploader.is_watched(4)
    # A job.watch command marks it at once (someone just opened the job page) …
    uploader.mark_watched(4)
    assert uploader.is_watched(4) and uploader.flush_interval() == 1
    # … but never a job that is not running here.
    uploader.mark_watched(99)
    assert not uploader.is_watched(99)
