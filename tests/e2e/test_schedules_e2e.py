"""Issue 5 "done when", with real processes and real restic: two source groups with their
own paths, a schedule attached to both; the agent applies it, the server goes away, the
schedule fires on the agent's clock anyway and backs both groups up with the right paths
and tags; when the server is back the runs appear as scheduled jobs with their logs, and
the snapshot list has both tags. Then maintenance runs on its cadence from the server's
ticker."""

from __future__ import annotations

import time

import pytest

from tests.e2e.processes import (
    AgentProcess,
    Api,
    require_restic,
    restic_snapshots,
    wait_until,
    write_tree,
)

REPO_PASSWORD = "e2e-Schedules-Repo-Password-3b1"
ADMIN_PASSWORD = "admin password for schedules e2e"


@pytest.fixture
def server(start_server):
    return start_server(
        RM_OFFLINE_AFTER_SECONDS="20",
        RM_POLL_WAIT_SECONDS="5",
        RM_LOG_FLUSH_SECONDS="2",
        RM_TICKER_SECONDS="2",
    )


def test_a_schedule_fires_on_the_agent_while_the_server_is_down(server, tmp_path):
    require_restic()
    token = server.admin_token(password=ADMIN_PASSWORD)
    api = Api(server, token)
    repo = tmp_path / "repo"
    home_tree = write_tree(tmp_path / "home", 40, size=300)
    etc_tree = write_tree(tmp_path / "etc", 20, size=300)
    enroll_token = api.post(
        "/enrollment-tokens",
        {
            "hostname": "e2e-sched",
            "repo_url": str(repo),
            "repo_password": REPO_PASSWORD,
            "paths": [str(home_tree)],
        },
    )["token"]
    agent = AgentProcess(tmp_path / "agent-home", tmp_path / "agent.log")
    agent.enroll(server.url, enroll_token)
    host_id = api.get("/hosts").json()["items"][0]["id"]
    agent.start()
    try:
        api.wait_repo_ready(host_id)
        api.post(
            f"/hosts/{host_id}/source-groups",
            {"name": "etc", "includes": [str(etc_tree)], "retention": {"keep_last": 5}},
        )
        api.post(
            f"/hosts/{host_id}/schedules",
            {"name": "every-minute", "cron": "* * * * *", "source_groups": ["default", "etc"]},
        )
        wait_until(
            lambda: api.get(f"/hosts/{host_id}/schedules").json()["in_sync"],
            30,
            "the agent to apply the schedule",
            interval=0.25,
        )
        # The server goes away before the next minute starts; the agent's clock fires anyway.
        while time.localtime().tm_sec > 50:
            time.sleep(1)
        assert server.stop() == 0
        snapshots = wait_until(
            lambda: (found := restic_snapshots(repo, REPO_PASSWORD)) and len(found) >= 2 and found,
            90,
            "the scheduled backups to run with the server down",
            interval=1,
        )
        by_tag = {snapshot["tags"][0]: snapshot for snapshot in snapshots}
        assert by_tag["default"]["paths"] == [str(home_tree)]
        assert by_tag["etc"]["paths"] == [str(etc_tree)]
        server.start()

        def scheduled_jobs():
            items = api.get(f"/jobs?host_id={host_id}&kind=backup").json()["items"]
            done = [
                job for job in items if job["actor"]["type"] == "schedule" and job["finished_at"]
            ]
            return done if len(done) >= 2 else None

        jobs = wait_until(scheduled_jobs, 120, "the scheduled runs to be reported", interval=0.5)
        for job in jobs[:2]:
            assert job["status"] == "succeeded", job
            assert job["actor"]["label"] == "every-minute"
            assert job["log_lines"] > 0
        listed = api.get(f"/hosts/{host_id}/snapshots").json()["items"]
        assert {item["tags"][0] for item in listed} >= {"default", "etc"}

        # Maintenance runs on the server's cadence (the leader's ticker, every 2 s here):
        # forget applies each group's own retention to its own tag ("default" has none).
        api.session.put(
            f"{api.base}/hosts/{host_id}/repo-maintenance",
            json={
                "enabled": True,
                "forget_cron": "* * * * *",
                "prune_cron": None,
                "check_cron": None,
                "check_subset_percent": None,
            },
            timeout=10,
        ).raise_for_status()

        def maintenance_forget():
            items = api.get(f"/jobs?host_id={host_id}&kind=forget").json()["items"]
            return next(
                (
                    job
                    for job in items
                    if job["actor"]["label"] == "maintenance" and job["finished_at"]
                ),
                None,
            )

        forget = wait_until(maintenance_forget, 100, "the maintenance forget", interval=0.5)
        assert forget["status"] == "succeeded", forget
        assert forget["params"]["groups"] == [{"tag": "etc", "policy": {"keep_last": 5}}]
    finally:
        agent.kill()
    for where, text in {"server log": server.log(), "agent log": agent.log()}.items():
        assert REPO_PASSWORD not in text, f"repository password leaked into {where}"
