"""Issue 13 fault tests, with a real `serve`, real agents and real restic: the server
killed during concurrent backups, the server down while an every-minute schedule fires,
agents killed mid-backup (one comes back, one does not), and maintenance dispatched while
a backup runs. Every job ends once, no log line is lost or doubled, no lock is left."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.e2e.processes import (
    AgentProcess,
    Api,
    Server,
    require_restic,
    restic_snapshots,
    wait_until,
    write_tree,
)

pytestmark = pytest.mark.e2e

REPO_PASSWORD = "e2e-Faults-Repo-Password-7d4e"
ADMIN_PASSWORD = "admin password for faults e2e"
TERMINAL = {"succeeded", "warning", "failed", "cancelled", "lost"}


@dataclass
class Host:
    id: int
    agent: AgentProcess
    repo: Path
    data: Path


@pytest.fixture
def agents():
    """Agents a test starts, killed (with their restic) when it ends."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def add_host(api: Api, server: Server, tmp_path: Path, agents: list, name: str) -> Host:
    """A host whose agent enrolls, starts and initialises its repository."""
    repo = tmp_path / f"repo-{name}"
    data = tmp_path / f"data-{name}"
    write_tree(data, 20, size=400)
    token = api.post(
        "/enrollment-tokens",
        {
            "hostname": name,
            "repo_url": str(repo),
            "repo_password": REPO_PASSWORD,
            "paths": [str(data)],
        },
    )["token"]
    # Its own process group: a kill -9 takes its restic down with it, as systemd would.
    agent = AgentProcess(tmp_path / f"home-{name}", tmp_path / f"agent-{name}.log", own_group=True)
    agent.enroll(server.url, token)
    host_id = next(h["id"] for h in api.get("/hosts").json()["items"] if h["hostname"] == name)
    agent.start()
    agents.append(agent)
    return Host(host_id, agent, repo, data)


def add_random_data(host: Host, megabytes: int) -> None:
    """New incompressible files in the host's source, so the next backup has work to do."""
    write_tree(host.data / f"big-{time.monotonic_ns()}", megabytes, 1_000_000, random_bytes=True)


def slow_backup(api: Api, host: Host, kib_per_second: int) -> int:
    """A backup of the host's default group that uploads at most ``kib_per_second``."""
    return api.run(host.id, "backup", {"limit_upload_kib": kib_per_second})


def wait_progress(api: Api, job_id: int, timeout: float = 90) -> None:
    wait_until(
        lambda: (api.get(f"/jobs/{job_id}").json()["progress"] or {}).get("percent"),
        timeout,
        f"job {job_id} to report progress",
        interval=0.2,
    )


def jobs_of(api: Api, host_id: int, kind: str | None = None) -> list[dict]:
    query = f"/jobs?host_id={host_id}" + (f"&kind={kind}" if kind else "")
    return api.get(query).json()["items"]


def wait_all_ended(api: Api, host_id: int, timeout: float = 60) -> list[dict]:
    def ended():
        jobs = jobs_of(api, host_id)
        return jobs if all(job["status"] in TERMINAL for job in jobs) else None

    return wait_until(ended, timeout, f"host {host_id}'s jobs to end", interval=0.5)


def log_records(api: Api, job: dict) -> list[dict]:
    return [json.loads(line) for line in api.get(f"/jobs/{job['id']}/log.ndjson").text.splitlines()]


def assert_log_whole(api: Api, job: dict) -> None:
    """Its log is 1..log_lines, each seq once: nothing lost, nothing doubled."""
    seqs = [record["seq"] for record in log_records(api, job)]
    assert job["log_lines"] > 0, job
    assert seqs == list(range(1, job["log_lines"] + 1)), (job["id"], seqs)


def restic_ids(repo: Path) -> list[str]:
    return sorted(snapshot["id"] for snapshot in restic_snapshots(repo, REPO_PASSWORD))


def snapshot_time(snapshot: dict) -> datetime:
    """restic's snapshot time (nanoseconds, its own time zone) as an aware datetime."""
    return datetime.fromisoformat(re.sub(r"\.\d+", "", snapshot["time"]).replace("Z", "+00:00"))


def repo_locks(repo: Path) -> list[Path]:
    return list((repo / "locks").iterdir())


def test_server_killed_during_concurrent_backups(start_server, tmp_path, agents):
    require_restic()
    server = start_server(
        RM_OFFLINE_AFTER_SECONDS="30", RM_POLL_WAIT_SECONDS="5", RM_LOG_FLUSH_SECONDS="1"
    )
    api = Api(server, server.admin_token(password=ADMIN_PASSWORD))
    hosts = [add_host(api, server, tmp_path, agents, f"e2e-kill-{n}") for n in range(3)]
    for host in hosts:
        api.wait_repo_ready(host.id)
        add_random_data(host, 24)
    # 24 MB at 2 MB/s each: about 12 s of backup, three at once.
    backups = [slow_backup(api, host, 2000) for host in hosts]
    for job_id in backups:
        wait_progress(api, job_id)

    server.kill()  # kill -9 of the whole server (gunicorn and its worker)
    # The agents finish their backups with the server gone and spool what they report.
    for host in hosts:
        wait_until(lambda h=host: restic_ids(h.repo), 120, f"{host.repo}'s snapshot", 1)
    server.start()

    for host, job_id in zip(hosts, backups):
        job = api.wait_job(job_id, timeout=120)
        assert job["status"] == "succeeded", job
        assert_log_whole(api, job)
        (snapshot_id,) = restic_ids(host.repo)  # one backup, one snapshot
        assert job["stats"]["snapshot_id"] == snapshot_id, job
        # Every job of the host ends, once: the bring-up and the one backup.
        done = wait_all_ended(api, host.id)
        assert sorted(j["kind"] for j in done) == ["backup", "init", "probe"], done
        for other in done:
            assert other["status"] == "succeeded", other
            assert_log_whole(api, other)
        listed = wait_until(
            lambda h=host: api.get(f"/hosts/{h.id}/snapshots").json()["items"] or None,
            60,
            f"host {host.id}'s snapshot list",
            0.5,
        )
        assert [item["id"] for item in listed] == [snapshot_id]


def test_server_down_while_an_every_minute_schedule_fires(start_server, tmp_path, agents):
    """No cron slot shorter than a minute exists, so this test takes about three minutes."""
    require_restic()
    server = start_server(
        RM_OFFLINE_AFTER_SECONDS="20",
        RM_POLL_WAIT_SECONDS="5",
        RM_LOG_FLUSH_SECONDS="1",
        RM_TICKER_SECONDS="2",
    )
    api = Api(server, server.admin_token(password=ADMIN_PASSWORD))
    host = add_host(api, server, tmp_path, agents, "e2e-sched-down")
    api.wait_repo_ready(host.id)
    schedule = api.post(
        f"/hosts/{host.id}/schedules",
        {"name": "every-minute", "cron": "* * * * *", "source_groups": ["default"]},
    )
    wait_until(
        lambda: api.get(f"/hosts/{host.id}/schedules").json()["in_sync"],
        30,
        "the agent to apply the schedule",
        interval=0.25,
    )
    while time.localtime().tm_sec > 50:  # stop well before a slot, not while one registers
        time.sleep(0.5)
    stopped_at = datetime.now(timezone.utc)
    assert server.stop() == 0

    def fired_while_down():
        snapshots = restic_snapshots(host.repo, REPO_PASSWORD)
        return [snapshot for snapshot in snapshots if snapshot_time(snapshot) > stopped_at]

    # Two slots fire with the server away; the agent runs them and spools their reports.
    down = wait_until(
        lambda: len(found := fired_while_down()) >= 2 and found,
        150,
        "two scheduled backups with the server down",
        interval=1,
    )
    server.start()

    def reported():
        jobs = jobs_of(api, host.id, "backup")
        done = {job["stats"].get("snapshot_id") for job in jobs if job["finished_at"]}
        return {snapshot["id"] for snapshot in down} <= done

    wait_until(reported, 120, "the scheduled runs to be reported", interval=0.5)
    # No more slots: then every run there was must be there once.
    api.call("DELETE", f"/hosts/{host.id}/schedules/{schedule['id']}", expect=204)
    # Its poll loop may still sit out its backoff (up to 60 s) while the uploader is through.
    wait_until(
        lambda: api.get(f"/hosts/{host.id}/schedules").json()["in_sync"],
        120,
        "the agent to drop the schedule",
        interval=0.25,
    )

    def settled():
        jobs = [j for j in jobs_of(api, host.id, "backup") if j["actor"]["type"] == "schedule"]
        if not all(job["finished_at"] for job in jobs):
            return None
        snapshots = restic_ids(host.repo)
        reported_ids = sorted(job["stats"].get("snapshot_id", "") for job in jobs)
        return (jobs, snapshots) if reported_ids == snapshots else None

    jobs, snapshots = wait_until(settled, 120, "each slot's job and snapshot to match", 1)
    assert len(jobs) == len(snapshots) >= 2
    slots = [job["created_at"][:16] for job in jobs]  # YYYY-MM-DDTHH:MM: the minute it fired
    assert len(set(slots)) == len(slots), slots  # each slot reported once
    for job in jobs:
        assert job["status"] == "succeeded", job
        assert_log_whole(api, job)


def test_killed_agents_never_leave_a_job_running_or_a_repository_locked(
    start_server, tmp_path, agents
):
    require_restic()
    server = start_server(
        RM_OFFLINE_AFTER_SECONDS="15",
        RM_POLL_WAIT_SECONDS="5",
        RM_LOG_FLUSH_SECONDS="1",
        RM_TICKER_SECONDS="2",
        RM_LOST_JOB_AFTER_SECONDS="60",
    )
    api = Api(server, server.admin_token(password=ADMIN_PASSWORD))
    back = add_host(api, server, tmp_path, agents, "e2e-comes-back")
    gone = add_host(api, server, tmp_path, agents, "e2e-stays-away")
    for host in (back, gone):
        api.wait_repo_ready(host.id)
        add_random_data(host, 30)
    interrupted = {host.id: slow_backup(api, host, 1500) for host in (back, gone)}
    for job_id in interrupted.values():
        wait_progress(api, job_id)
    for host in (back, gone):
        host.agent.kill()  # kill -9 of the agent and its restic
        assert repo_locks(host.repo), "restic's lock should still be there"

    # One agent comes back: its job ends, and the repository works without a manual unlock.
    back.agent.start()
    ended = api.wait_job(interrupted[back.id], timeout=90)
    assert ended["status"] in ("lost", "failed"), ended
    assert ended["error"], ended
    backup = api.wait_job(api.run(back.id, "backup"), timeout=180)
    assert backup["status"] == "succeeded", backup
    check = api.wait_job(api.run(back.id, "check"), timeout=120)
    assert check["status"] == "succeeded", check
    prune = api.wait_job(api.run(back.id, "prune"), timeout=120)
    assert prune["status"] == "succeeded", prune
    assert not repo_locks(back.repo)
    unlocked = [
        job
        for job in jobs_of(api, back.id)
        if "stale locks" in api.get(f"/jobs/{job['id']}/log.txt").text
    ]
    assert unlocked, "no job says it removed the stale locks"

    # The other never comes back: its job ends lost once the host was silent long enough.
    lost = api.wait_job(interrupted[gone.id], timeout=180)
    assert lost["status"] == "lost", lost
    assert "has not been heard from" in lost["error"], lost


def test_forget_and_prune_dispatched_while_a_backup_runs(start_server, tmp_path, agents):
    require_restic()
    server = start_server(
        RM_OFFLINE_AFTER_SECONDS="30", RM_POLL_WAIT_SECONDS="5", RM_LOG_FLUSH_SECONDS="1"
    )
    api = Api(server, server.admin_token(password=ADMIN_PASSWORD))
    host = add_host(api, server, tmp_path, agents, "e2e-overlap")
    api.wait_repo_ready(host.id)
    first = api.wait_job(api.run(host.id, "backup"))
    assert first["status"] == "succeeded", first
    add_random_data(host, 30)
    backup = slow_backup(api, host, 2000)  # about 15 s
    wait_progress(api, backup)
    forget = api.run(host.id, "forget", {"policy": {"keep_last": 1}})
    prune = api.run(host.id, "prune")

    backup_job = api.wait_job(backup, timeout=180)
    forget_job = api.wait_job(forget, timeout=180)
    prune_job = api.wait_job(prune, timeout=180)
    for job in (backup_job, forget_job, prune_job):
        assert job["status"] == "succeeded", job
    # Both waited for their turn (the backup's, then each other's) instead of failing...
    waited = [record["text"] for record in log_records(api, forget_job)]
    assert waited[0].startswith(f"waiting for backup job {backup}"), waited
    assert log_records(api, prune_job)[0]["text"].startswith("waiting for backup job"), prune_job
    # ...and forget, after the backup, forgot the first snapshot.
    assert forget_job["stats"]["removed"] == 1, forget_job
    assert restic_ids(host.repo) == [backup_job["stats"]["snapshot_id"]]
    assert not repo_locks(host.repo)
