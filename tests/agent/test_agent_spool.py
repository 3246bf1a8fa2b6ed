"""The spool on real files: order, seq numbers, restarts, quota, rewinds, truncation."""

import json
import os
import stat

from agent.jobspool import MAX_TEXT_BYTES, split_text
from agent.spool import Spool, spool_stats_from_disk


def test_events_keep_creation_order_across_restart(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10**6)
    ids = [spool.add_event("job.started", 1, "a1", {"n": n}) for n in range(3)]
    assert [event["event_id"] for event in spool.pending_events()] == ids
    assert spool.ack_events([ids[1]]) == 1

    reopened = Spool(tmp_path / "spool", max_bytes=10**6)  # the agent restarted
    later = reopened.add_event("job.finished", 1, "a1", {})
    pending = reopened.pending_events()
    assert [event["event_id"] for event in pending] == [ids[0], ids[2], later]
    assert pending[0] == {
        "event_id": ids[0],
        "type": "job.started",
        "job_id": 1,
        "attempt_id": "a1",
        "ts": pending[0]["ts"],
        "data": {"n": 0},
    }
    assert pending[0]["ts"].endswith("Z")
    names = sorted(path.name for path in (tmp_path / "spool" / "events").iterdir())
    assert names[0].startswith("000000000001-") and names[-1].startswith("000000000004-")
    for path in (tmp_path / "spool" / "events").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_records_get_seq_once_and_survive_restart(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10**6)
    job = spool.open_job(12, "att-1")
    for number in range(5):
        job.append("stdout", f"line {number + 1}")
    first_seq, records = job.pending_batch(max_records=3)
    assert first_seq == 1
    assert [(record["stream"], record["text"]) for record in records] == [
        ("stdout", f"line {n}") for n in (1, 2, 3)
    ]
    assert all(sorted(record) == ["stream", "text", "ts"] for record in records)
    job.set_committed(3)
    job.sync_if_due(force=True)

    reopened = Spool(tmp_path / "spool", max_bytes=10**6)
    job = reopened.job(12)
    assert (job.attempt_id, job.acked_seq, job.next_seq) == ("att-1", 3, 6)
    job.append("stderr", "after restart")
    first_seq, records = job.pending_batch()
    assert first_seq == 4
    assert [record["text"] for record in records] == ["line 4", "line 5", "after restart"]
    lines = (tmp_path / "spool" / "jobs" / "12" / "records.ndjson").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    cursor = json.loads((tmp_path / "spool" / "jobs" / "12" / "cursor.json").read_text())
    assert cursor["attempt_id"] == "att-1" and cursor["acked_seq"] == 3
    assert cursor["finished"] is False


def test_torn_record_from_a_crash_is_cut(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10**6)
    spool.open_job(3, "a").append("stdout", "complete")
    records_file = tmp_path / "spool" / "jobs" / "3" / "records.ndjson"
    with open(records_file, "ab") as handle:
        handle.write(b'{"seq": 2, "ts": "x", "str')
    job = Spool(tmp_path / "spool", max_bytes=10**6).job(3)
    assert job.next_seq == 2
    job.append("stdout", "next")
    lines = records_file.read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["complete", "next"]


def test_long_lines_are_split_at_16_kib_on_character_boundaries(tmp_path):
    text = "é" * 20000  # 40000 bytes
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(len(piece.encode()) <= MAX_TEXT_BYTES for piece in pieces)
    job = Spool(tmp_path / "spool", max_bytes=10**6).open_job(1, "a")
    assert job.append("stdout", text) == len(pieces) == 3
    assert job.next_seq == 4


def test_gap_rewind_resends_from_committed_plus_one(tmp_path):
    job = Spool(tmp_path / "spool", max_bytes=10**6).open_job(1, "a")
    for number in range(6):
        job.append("stdout", str(number + 1))
    job.set_committed(6)
    assert job.pending_batch() is None
    job.set_committed(2)  # a 416 said the server only has 1..2
    first_seq, records = job.pending_batch()
    assert first_seq == 3 and [r["text"] for r in records] == ["3", "4", "5", "6"]


def test_truncated_stops_sending_and_counts_dropped(tmp_path):
    job = Spool(tmp_path / "spool", max_bytes=10**6).open_job(1, "a")
    for number in range(10):
        job.append("stdout", str(number))
    job.set_committed(4)
    job.stop("truncated")
    assert job.pending_batch() is None and not job.has_unsent_records()
    job.append("stdout", "after the cap")
    final_seq, dropped = job.finish()
    assert (final_seq, dropped) == (10, 7)


def test_quota_drops_are_counted_and_reported_once_there_is_room(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=4096)
    job = spool.open_job(5, "a")
    written = sum(job.append("stdout", "x" * 100) for _ in range(100))
    assert 0 < written < 100
    final_seq, dropped = job.finish()
    assert final_seq == written and dropped == 100 - written
    assert spool.dropped_counts() == {"events": 0, "log_records": dropped}
    # Events still fit: they have a reserve the log records cannot use.
    finished = spool.add_event("job.finished", 5, "a", {"lines_dropped": dropped})
    assert finished is not None
    assert spool.report_dropped() is None  # still full: nothing reported yet
    spool.sync()

    reopened = Spool(tmp_path / "spool", max_bytes=4096)  # counts survive a restart
    assert reopened.dropped_counts()["log_records"] == dropped
    reopened.job(5).set_committed(final_seq)
    reopened.ack_events([finished])
    assert reopened.remove_delivered_jobs() == [5]
    report = reopened.report_dropped()
    assert report is not None
    (event,) = reopened.pending_events()
    assert event["type"] == "agent.spool_dropped"
    assert event["data"] == {"events": 0, "log_records": dropped}
    assert reopened.dropped_counts() == {"events": 0, "log_records": 0}
    assert reopened.report_dropped() is None


def test_dropped_events_are_counted_when_even_the_reserve_is_full(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.spool.EVENT_RESERVE_BYTES", 0)
    spool = Spool(tmp_path / "spool", max_bytes=300)
    assert spool.add_event("job.started", 1, "a", {"pad": "x" * 100}) is not None
    assert spool.add_event("job.started", 2, "a", {"pad": "x" * 200}) is None
    assert spool.dropped_counts() == {"events": 1, "log_records": 0}


def test_delivered_job_directories_are_removed(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10**6)
    job = spool.open_job(9, "a")
    job.append("stdout", "one")
    finished = spool.add_event("job.finished", 9, "a", {})
    job.finish()
    assert spool.remove_delivered_jobs() == []  # a record and an event are still unsent
    job.set_committed(1)
    assert spool.remove_delivered_jobs() == []  # the event is still unsent
    spool.ack_events([finished])
    assert spool.remove_delivered_jobs() == [9]
    assert not (tmp_path / "spool" / "jobs" / "9").exists()
    assert spool.used_bytes == 0


def test_compaction_frees_committed_records(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.jobspool.COMPACT_AFTER_BYTES", 1000)
    spool = Spool(tmp_path / "spool", max_bytes=10**6)
    job = spool.open_job(1, "a")
    for number in range(100):
        job.append("stdout", f"record {number + 1:03d} " + "x" * 40)
    size_before = spool.used_bytes
    job.set_committed(90)
    assert spool.used_bytes < size_before / 5
    first_seq, records = job.pending_batch()
    assert first_seq == 91 and len(records) == 10
    reopened = Spool(tmp_path / "spool", max_bytes=10**6).job(1)
    assert reopened.pending_batch()[0] == 91 and reopened.next_seq == 101
    reopened.set_committed(10)  # the server lost records the agent no longer has
    assert reopened.stopped == "gap_unfillable"


def test_stats_from_disk_match_the_live_spool(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10**6)
    job = spool.open_job(1, "a")
    for number in range(4):
        job.append("stdout", str(number))
    job.set_committed(1)
    job.sync_if_due(force=True)
    spool.add_event("job.started", 1, "a")
    on_disk = spool_stats_from_disk(tmp_path / "spool")
    assert on_disk["events"] == 1 and on_disk["log_records"] == 3 and on_disk["jobs"] == 1
    assert on_disk["bytes"] >= spool.used_bytes
    assert spool.stats()["log_records"] == 3
    assert spool_stats_from_disk(tmp_path / "nothing") == {
        "events": 0,
        "log_records": 0,
        "jobs": 0,
        "bytes": 0,
    }
    assert os.listdir(tmp_path / "spool" / "jobs") == ["1"]


def test_a_removed_job_spool_ignores_late_writes(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10**6)
    job = spool.open_job(4, "stale")
    job.append("stdout", "before")
    spool.remove_job(4)  # e.g. a 409 stale_attempt while restic still runs
    assert job.append("stdout", "after") == 0
    job.set_committed(1)
    assert job.finish() == (1, 1)
    assert not (tmp_path / "spool" / "jobs" / "4").exists()
    assert spool.jobs() == [] and spool.used_bytes == 0


def test_a_run_is_adopted_under_the_server_ids_in_order_and_across_a_restart(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=10**7)
    spool.add_event("schedule.applied", data={"version": 1})
    job = spool.open_run("r1", {"run_id": "r1", "kind": "backup"})
    spool.add_event("job.started", "r1", "r1", {})
    job.append("agent", "written offline")
    job.finish()
    spool.add_event("job.finished", "r1", "r1", {"status": "succeeded"})
    assert [j.job_id for j in spool.pending_runs()] == ["r1"]

    reopened = Spool(tmp_path / "spool", max_bytes=10**7)  # an agent restart
    (run,) = reopened.pending_runs()
    assert run.registration == {"run_id": "r1", "kind": "backup"} and run.finished
    assert reopened.adopt_run("r1", 51, "att-51") is run
    assert reopened.pending_runs() == [] and reopened.job(51) is run
    events = [(e["type"], e["job_id"], e["attempt_id"]) for e in reopened.pending_events()]
    assert events == [
        ("schedule.applied", None, None),
        ("job.started", 51, "att-51"),
        ("job.finished", 51, "att-51"),
    ]
    assert run.pending_batch()[1][0]["text"] == "written offline"
    # A job thread that still writes under the run_id lands on the registered job.
    reopened.add_event("repo.stats", "r1", "r1", {})
    assert reopened.pending_events()[-1]["job_id"] == 51
    assert not (tmp_path / "spool" / "jobs" / "run-r1").exists()
    assert Spool(tmp_path / "spool", max_bytes=10**7).job(51).attempt_id == "att-51"


def test_event_data_loses_nul_characters_the_server_would_refuse(tmp_path):
    spool = Spool(tmp_path / "spool", 1024 * 1024)
    spool.add_event(
        "job.finished", 7, "att", {"error": "restic: bad\x00 byte", "paths": ["/a\x00b"]}
    )
    (event,) = spool.pending_events()
    assert event["data"] == {"error": "restic: bad byte", "paths": ["/ab"]}
