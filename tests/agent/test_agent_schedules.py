"""Schedules on the agent (docs/protocol.md, "Schedules on the agent"): schedule.set, the
clock, missed runs, and runs started while the server is away."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from fake_agent_server import all_files, wait_for
from running_agent import Running, config_update

from agent.cli import collect_status, main
from agent.paths import AgentPaths
from agent.scheduler import Scheduler
from agent.schedules import parse_schedule_set
from agent.service import Agent

PRE_HOOK = "echo dumping-the-database-Secret-Hook-7"
START = datetime(2026, 11, 25, 2, 29, 30, tzinfo=timezone.utc)


class Clock:
    """A clock the test steps by hand."""

    def __init__(self, now=START):
        self.current = now

    def now(self):
        return self.current

    def advance(self, **delta):
        self.current += timedelta(**delta)


def schedule_payload(
    version=1,
    cron="* * * * *",
    missed_policy="run_once",
    enabled=True,
    pre_hook=None,
    limits=None,
    groups=None,
):
    return {
        "version": version,
        "limits": limits or {"upload_kib": None, "download_kib": None},
        "hooks_allowed_by_server": True,
        "groups": groups
        or [
            {
                "id": 3,
                "name": "etc",
                "paths": ["/etc"],
                "excludes": ["*.tmp"],
                "pre_hook": pre_hook,
                "post_hook": None,
            }
        ],
        "schedules": [
            {
                "id": 4,
                "name": "nightly",
                "cron": cron,
                "enabled": enabled,
                "missed_policy": missed_policy,
                "groups": [3],
            }
        ],
    }


def schedule_set_command(payload, command_id="c-sched-1"):
    return {
        "command_id": command_id,
        "type": "schedule.set",
        "delivery_count": 1,
        "job_id": None,
        "attempt_id": None,
        "payload": payload,
    }


# -- schedule.set ------------------------------------------------------------------------


def test_schedule_set_is_sealed_applied_reported_and_older_versions_ignored(
    agent_home, fake_restic
):
    agent = Agent(agent_home, restic_binary=str(fake_restic), clock=Clock().now)
    agent.handle_command(schedule_set_command(schedule_payload(7, pre_hook=PRE_HOOK), "c1"))
    agent.handle_command(schedule_set_command(schedule_payload(6), "c2"))
    agent.handle_command(schedule_set_command(schedule_payload(7), "c3"))
    agent.handle_command(schedule_set_command(schedule_payload(8, cron="61 * * * *"), "c4"))
    results = [(ack["command_id"], ack["result"]) for ack in agent.pending_acks()]
    assert results == [("c1", "accepted"), ("c2", "noop"), ("c3", "noop"), ("c4", "rejected")]
    assert "cron '61 * * * *'" in agent.pending_acks()[-1]["reason"]

    applied = agent.schedules.load()
    assert applied.version == 7 and applied.groups[3].pre_hook == PRE_HOOK
    events = agent.spool.pending_events()
    assert [(e["type"], e["job_id"], e["data"]) for e in events] == [
        ("schedule.applied", None, {"version": 7})
    ]
    for path in all_files(agent_home):  # hooks are secrets: sealed on disk
        assert b"Secret-Hook-7" not in path.read_bytes(), path

    status = collect_status(AgentPaths(agent_home))["schedules"]
    assert status["version"] == 7
    assert status["groups"][0]["pre_hook"] is True  # there is one; its body is not shown
    assert "Secret-Hook-7" not in json.dumps(status)
    assert status["schedules"][0]["groups"] == ["etc"]

    restarted = Agent(agent_home, restic_binary=str(fake_restic))
    restarted.handle_command(schedule_set_command(schedule_payload(7), "c5"))
    assert restarted.pending_acks() == [{"command_id": "c5", "result": "noop"}]


def test_schedule_set_validation():
    with pytest.raises(ValueError, match="unknown groups"):
        payload = schedule_payload()
        payload["schedules"][0]["groups"] = [99]
        parse_schedule_set(payload)
    with pytest.raises(ValueError, match="missed_policy"):
        parse_schedule_set(schedule_payload(missed_policy="always"))
    with pytest.raises(ValueError, match="absolute"):
        parse_schedule_set(schedule_payload(groups=[{"id": 3, "name": "x", "paths": ["etc"]}]))
    parsed = parse_schedule_set(schedule_payload(limits={"upload_kib": 0, "download_kib": 2048}))
    params = parsed.backup_params(parsed.groups[3])
    assert params == {
        "group": "etc",
        "paths": ["/etc"],
        "excludes": ["*.tmp"],
        "tags": ["etc"],
        "limit_upload_kib": None,
        "limit_download_kib": 2048,
        "pre_hook": None,
        "post_hook": None,
    }


# -- the clock ---------------------------------------------------------------------------


def make_scheduler(tmp_path, clock, payload):
    fired = []
    scheduler = Scheduler(
        tmp_path / "schedule_state.json",
        lambda schedule_set, schedule, at: fired.append((schedule.id, at)),
        now=clock.now,
    )
    scheduler.apply(parse_schedule_set(payload))
    return scheduler, fired


def test_fires_on_each_cron_slot_and_never_for_the_past(tmp_path):
    clock = Clock()
    scheduler, fired = make_scheduler(tmp_path, clock, schedule_payload(cron="30 2 * * *"))
    assert scheduler.tick() == []  # first seen at 02:29:30: nothing for the past
    clock.advance(seconds=29)
    assert scheduler.tick() == []
    clock.advance(seconds=2)  # 02:30:01
    assert scheduler.tick() == [4]
    assert fired == [(4, datetime(2026, 11, 25, 2, 30, tzinfo=timezone.utc))]
    assert scheduler.tick() == []  # the same slot never fires twice
    clock.advance(days=1)
    assert scheduler.tick() == [4]
    assert fired[-1][1] == datetime(2026, 11, 26, 2, 30, tzinfo=timezone.utc)
    assert 0 < scheduler.seconds_to_next() <= 30


def test_a_restart_never_fires_the_same_slot_twice(tmp_path):
    clock = Clock()
    scheduler, fired = make_scheduler(tmp_path, clock, schedule_payload())
    scheduler.tick()
    clock.advance(seconds=40)  # 02:30:10
    assert scheduler.tick() == [4]
    restarted, fired_again = make_scheduler(tmp_path, clock, schedule_payload())
    assert restarted.tick() == []
    clock.advance(seconds=60)
    assert restarted.tick() == [4]
    assert len(fired) == 1 and len(fired_again) == 1


@pytest.mark.parametrize(("policy", "fires"), [("run_once", 1), ("skip", 0)])
def test_missed_runs_after_a_long_stop(tmp_path, policy, fires):
    clock = Clock()
    scheduler, _ = make_scheduler(tmp_path, clock, schedule_payload(missed_policy=policy))
    scheduler.tick()
    clock.advance(hours=5)  # the agent was stopped for 300 slots
    restarted, fired = make_scheduler(tmp_path, clock, schedule_payload(missed_policy=policy))
    restarted.tick()
    restarted.tick()
    assert len(fired) == fires
    if fires:
        assert fired[0][1] == clock.now()  # once, now; not once per missed slot
    clock.advance(minutes=1)
    restarted.tick()
    assert len(fired) == fires + 1  # then on time again


def test_a_host_asleep_while_the_agent_runs_counts_as_missed(tmp_path):
    clock = Clock()
    scheduler, _ = make_scheduler(tmp_path, clock, schedule_payload(missed_policy="skip"))
    scheduler.tick()
    clock.advance(minutes=30)
    assert scheduler.tick() == []
    clock.advance(minutes=1)
    assert scheduler.tick() == [4]


def test_a_changed_cron_or_a_reenabled_schedule_starts_from_now(tmp_path):
    clock = Clock()
    scheduler, fired = make_scheduler(tmp_path, clock, schedule_payload(cron="0 1 * * *"))
    scheduler.tick()
    clock.advance(hours=12)
    scheduler.apply(parse_schedule_set(schedule_payload(2, cron="30 2 * * *")))
    assert scheduler.tick() == []  # 02:30 today is in the past of the new cron
    scheduler.apply(parse_schedule_set(schedule_payload(3, enabled=False)))
    clock.advance(hours=1)
    assert scheduler.tick() == []
    scheduler.apply(parse_schedule_set(schedule_payload(4)))
    assert scheduler.tick() == []
    assert fired == []


# -- runs the agent starts ---------------------------------------------------------------


def start_scheduled_agent(agent_home, fake_restic, clock, payload):
    agent = Agent(
        agent_home, restic_binary=str(fake_restic), clock=clock.now, scheduler_tick_seconds=0.1
    )
    agent.handle_command(config_update("c-config"))
    agent.handle_command(schedule_set_command(payload))
    return Running(agent)


def backups(fake_restic):
    return [call for call in fake_restic.calls() if "backup" in call["argv"]]


def assert_delivered_once(fake_server, job_id):
    (finished,) = wait_for(lambda: fake_server.events_of(job_id, "job.finished"), timeout=60)
    assert finished["data"]["status"] == "succeeded"
    final_seq = finished["data"]["final_seq"]
    assert [record["seq"] for record in fake_server.logs[job_id]] == list(range(1, final_seq + 1))
    assert sum(len(r["records"]) for r in fake_server.log_requests if r["job_id"] == job_id) >= 1
    types = [event["type"] for event in fake_server.events_of(job_id)]
    expected = ["job.started", "job.progress", "snapshots.report", "repo.stats", "job.finished"]
    assert types == expected
    assert {e["attempt_id"] for e in fake_server.events_of(job_id)} == {f"run-attempt-{job_id}"}
    assert fake_server.committed_when_received[finished["event_id"]] == final_seq
    return finished


def test_a_schedule_fires_while_the_server_is_down_and_is_delivered_later(
    fake_server, agent_home, fake_restic
):
    clock = Clock()
    fake_server.down = True
    running = start_scheduled_agent(
        agent_home, fake_restic, clock, schedule_payload(pre_hook=PRE_HOOK)
    )
    try:
        agent = running.agent
        wait_for(lambda: agent.scheduler.started)
        clock.advance(seconds=40)  # 02:30:10: the * * * * * slot of 02:30
        agent.scheduler.wake()
        wait_for(lambda: backups(fake_restic), timeout=20)
        (run,) = wait_for(lambda: agent.spool.pending_runs())
        wait_for(lambda: run.finished, timeout=20)
        assert agent.running() == []  # the server does not know it: not in hello/poll
        assert fake_server.runs == {}

        fake_server.down = False
        finished = assert_delivered_once(fake_server, 1000)
    except BaseException:
        running.finish()
        raise
    assert running.finish() == {"status": 0}

    (run_id,) = fake_server.runs
    registration = fake_server.runs[run_id]["body"]
    assert registration == {
        "run_id": run_id,
        "schedule_id": 4,
        "schedule_version": 1,
        "kind": "backup",
        "params": {
            "group": "etc",
            "paths": ["/etc"],
            "excludes": ["*.tmp"],
            "tags": ["etc"],
            "limit_upload_kib": None,
            "limit_download_kib": None,
        },
        "fired_at": "2026-11-25T02:30:00.000Z",
    }
    texts = [record["text"] for record in fake_server.logs[1000]]
    assert "pre-hook: dumping-the-database-Secret-Hook-7" in texts  # ran; never sent back
    assert b"Secret-Hook-7" not in b"".join(
        body for body in fake_server.raw_bodies if b'"run_id"' in body
    )
    assert finished["data"]["stats"]["snapshot_id"]
    (applied,) = fake_server.events_of(event_type="schedule.applied")
    assert applied["data"] == {"version": 1} and applied["job_id"] is None
    assert (backups(fake_restic)[0]["argv"][-2:]) == ["--", "/etc"]
    wait_for(lambda: not any((agent_home / "spool" / "jobs").iterdir()))


def test_an_unregistered_finished_run_survives_an_agent_restart(
    fake_server, agent_home, fake_restic
):
    clock = Clock()
    fake_server.down = True
    running = start_scheduled_agent(agent_home, fake_restic, clock, schedule_payload())
    wait_for(lambda: running.agent.scheduler.started)
    clock.advance(seconds=40)
    running.agent.scheduler.wake()
    (run,) = wait_for(lambda: running.agent.spool.pending_runs(), timeout=20)
    wait_for(lambda: run.finished, timeout=20)
    assert running.finish() == {"status": 0}

    fake_server.down = False
    restarted = Running(Agent(agent_home, restic_binary=str(fake_restic), clock=clock.now))
    try:
        assert_delivered_once(fake_server, 1000)
        assert len(backups(fake_restic)) == 1  # the slot did not fire again
    finally:
        restarted.finish()


def test_a_schedule_fired_while_the_server_answers_registers_first(
    fake_server, agent_home, fake_restic
):
    clock = Clock()
    limits = {"upload_kib": None, "download_kib": 2048}
    running = start_scheduled_agent(agent_home, fake_restic, clock, schedule_payload(limits=limits))
    try:
        wait_for(lambda: fake_server.hellos and running.agent.scheduler.started)
        clock.advance(seconds=40)
        running.agent.scheduler.wake()
        assert_delivered_once(fake_server, 1000)
        (request,) = fake_server.run_requests  # registered once, before restic ran
        timeline = fake_server.timeline
        assert timeline.index("runs") < timeline.index("logs")
        assert request["params"]["limit_download_kib"] == 2048
        argv = backups(fake_restic)[0]["argv"]
        assert argv[argv.index("--limit-download") + 1] == "2048"
        assert "--limit-upload" not in argv
    finally:
        running.finish()


def test_run_now_backups_use_the_caps_the_server_resolved_and_add_none(agent_home, fake_restic):
    # The server resolves a run-now backup's caps (its override, else the host's) and sends
    # them in the params; the agent only guards them, it never falls back to the host caps
    # of the applied schedule set.
    agent = Agent(agent_home, restic_binary=str(fake_restic))
    agent.handle_command(config_update("c-config"))
    limits = {"upload_kib": 512, "download_kib": 2048}
    agent.handle_command(schedule_set_command(schedule_payload(limits=limits)))
    runs = (
        (1, {"limit_upload_kib": 512, "limit_download_kib": 2048}),  # the host's caps
        (2, {"limit_upload_kib": 100, "limit_download_kib": 0}),
        (3, {}),
    )
    for job_id, params in runs:
        params.update({"group": "etc", "paths": ["/etc"]})
        agent.handle_command(
            {
                "command_id": f"c-run-{job_id}",
                "type": "job.run",
                "job_id": job_id,
                "attempt_id": "a",
                "payload": {"kind": "backup", "params": params},
            }
        )
        assert agent.runner.wait_idle(timeout=20)
    first, second, third = (call["argv"] for call in backups(fake_restic))
    assert first[first.index("--limit-upload") + 1] == "512"
    assert first[first.index("--limit-download") + 1] == "2048"
    assert second[second.index("--limit-upload") + 1] == "100"
    assert "--limit-download" not in second  # 0 = unlimited
    assert "--limit-upload" not in third and "--limit-download" not in third


def test_status_shows_when_each_schedule_really_fired(agent_home, fake_restic, capsys):
    def payload(version=1, enabled=True):
        return schedule_payload(version, "30 2 * * *", "skip", enabled)

    clock = Clock()
    agent = Agent(agent_home, restic_binary=str(fake_restic), clock=clock.now)
    agent.handle_command(schedule_set_command(payload()))
    scheduler, fired = make_scheduler(agent_home, clock, payload())
    scheduler.tick()  # first seen at 02:29:30: applying it is no fire

    def schedule_status():
        assert main(["--home", str(agent_home), "status"]) == 0
        text = capsys.readouterr().out
        lines = text.splitlines()
        (heading,) = [n for n, line in enumerate(lines) if line.startswith("  nightly: 30 2 * * *")]
        return lines[heading + 1]

    assert schedule_status().startswith("    last fired never, next ")
    (reported,) = collect_status(AgentPaths(agent_home))["schedules"]["schedules"]
    assert reported["last_fire_at"] is None
    assert reported["next_fire_at"]  # the host's clock, not the test's
    clock.advance(seconds=40)  # 02:30:10
    assert scheduler.tick() == [4]
    assert schedule_status().startswith("    last fired 2026-11-25 02:30:00+00:00, next ")
    assert scheduler.last_fires() == {"4": "2026-11-25T02:30:00+00:00"}

    clock.advance(days=2)  # missed slots, skipped: no fire, the last one stays
    assert scheduler.tick() == []
    assert schedule_status().startswith("    last fired 2026-11-25 02:30:00+00:00")
    assert fired == [(4, datetime(2026, 11, 25, 2, 30, tzinfo=timezone.utc))]

    # Disabled, it keeps its last fire and has no next one; re-enabled, it starts from now.
    agent.handle_command(schedule_set_command(payload(2, enabled=False), "c-2"))
    scheduler.apply(parse_schedule_set(payload(2, enabled=False)))  # writes the state last
    assert schedule_status() == "    last fired 2026-11-25 02:30:00+00:00"
    (reported,) = collect_status(AgentPaths(agent_home))["schedules"]["schedules"]
    assert reported["last_fire_at"] == "2026-11-25T02:30:00+00:00"
    assert reported["next_fire_at"] is None
    scheduler.apply(parse_schedule_set(payload(3)))
    assert scheduler.tick() == []
    assert scheduler.last_fires() == {"4": "2026-11-25T02:30:00+00:00"}
