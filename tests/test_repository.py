"""Repository bring-up, job parameters, snapshot lists and size history on the server."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Command, Host, Job, RepoStats, Role, Snapshot
from app.models.types import utcnow
from app.services import job_params
from app.services.errors import ValidationFailed
from tests.factories import TS, enroll_agent

SAMPLES = "/work/shared/reference/restic-samples"
NEW_PASSWORD = "brand-new-Repo-Secret-77"


@pytest.fixture
def app(protocol_app):
    """The API clients below talk to the protocol app."""
    return protocol_app


def _event(event_id, type_, job_id, attempt, data=None):
    return {
        "event_id": event_id,
        "type": type_,
        "job_id": job_id,
        "attempt_id": attempt,
        "ts": TS,
        "data": data or {},
    }


def _job_runs(agent):
    answer = agent.poll().get_json() or {}
    return [c for c in answer.get("commands", []) if c["type"] == "job.run"]


def _snapshot(number: int, tags=("default",), time="2026-11-25T19:38:57.123456789+01:00"):
    return {
        "time": time,
        "tree": "a" * 64,
        "paths": ["/etc"],
        "hostname": "web-1",
        "username": "root",
        "tags": list(tags),
        "id": f"{number:064x}",
        "short_id": f"{number:08x}",
    }


# --- bring-up ----------------------------------------------------------------------------


def test_first_connect_probes_then_initialises_a_missing_repository(protocol_app):
    agent, host_id = enroll_agent(protocol_app, bring_up=True)
    agent.hello()
    agent.hello()  # a second hello does not queue a second probe
    (probe,) = _job_runs(agent)
    assert probe["payload"] == {"kind": "probe", "params": {}}
    job = db.session.get(Job, probe["job_id"])
    assert (job.actor_type, job.actor_label) == ("system", "repository bring-up")

    attempt = probe["attempt_id"]
    answer = agent.post(
        "/events",
        {
            "events": [
                _event("b1", "job.started", job.id, attempt),
                _event("b2", "repo.status", job.id, attempt, {"status": "missing", "reason": "x"}),
                _event("b3", "job.finished", job.id, attempt, {"status": "succeeded"}),
            ]
        },
    ).get_json()
    assert answer["rejected"] == []
    db.session.expire_all()
    assert db.session.get(Host, host_id).repo_status == "initializing"
    (init,) = _job_runs(agent)
    assert init["payload"]["kind"] == "init"

    agent.post(
        "/events",
        {
            "events": [
                _event("b4", "repo.status", init["job_id"], init["attempt_id"], {"status": "ready"})
            ]
        },
    )
    db.session.expire_all()
    host = db.session.get(Host, host_id)
    assert (host.repo_status, host.repo_status_reason) == ("ready", None)
    agent.hello()
    assert _job_runs(agent) == []  # a ready repository is not probed on every connect


def test_init_failure_is_kept_with_restics_reason(protocol_app):
    agent, host_id = enroll_agent(protocol_app, bring_up=True)
    agent.hello()
    (probe,) = _job_runs(agent)
    reason = "Fatal: create repository at /srv/repo failed: permission denied"
    agent.post(
        "/events",
        {
            "events": [
                _event(
                    "f1", "repo.status", probe["job_id"], probe["attempt_id"], {"status": "missing"}
                )
            ]
        },
    )
    (init,) = _job_runs(agent)
    agent.post(
        "/events",
        {
            "events": [
                _event(
                    "f2",
                    "repo.status",
                    init["job_id"],
                    init["attempt_id"],
                    {"status": "init_failed", "reason": reason},
                )
            ]
        },
    )
    db.session.expire_all()
    host = db.session.get(Host, host_id)
    assert (host.repo_status, host.repo_status_reason) == ("init_failed", reason)


def test_unknown_repo_status_is_refused_and_changes_nothing(protocol_app):
    agent, host_id = enroll_agent(protocol_app, bring_up=True)
    agent.hello()
    (probe,) = _job_runs(agent)
    answer = agent.post(
        "/events",
        {
            "events": [
                _event(
                    "u1", "repo.status", probe["job_id"], probe["attempt_id"], {"status": "pwned"}
                )
            ]
        },
    ).get_json()
    assert answer["rejected"][0]["error"] == "invalid_event"
    db.session.expire_all()
    assert db.session.get(Host, host_id).repo_status == "unknown"


def test_saving_credentials_pushes_them_and_probes_again(protocol_app, api):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()  # the enrollment's config.update
    admin = api(Role.admin)
    answer = admin.put(
        f"/api/v1/hosts/{host_id}/repository",
        json={"url": "/srv/new-repo", "username": None, "password": NEW_PASSWORD},
    )
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["url"] == "/srv/new-repo" and body["password_set"] is True
    assert body["repo_status"] == "unknown"
    assert NEW_PASSWORD not in answer.get_data(as_text=True)
    commands = agent.poll().get_json()["commands"]
    assert [c["type"] for c in commands] == ["config.update", "job.run"]
    assert commands[0]["payload"]["repository"]["password"] == NEW_PASSWORD
    assert commands[1]["payload"]["kind"] == "probe"
    stored = json.dumps([row.payload for row in db.session.scalars(select(AuditLog))])
    stored += json.dumps([row.payload for row in db.session.scalars(select(Command))])
    assert NEW_PASSWORD not in stored
    assert "host.repository_updated" in stored or db.session.scalar(
        select(func.count()).where(AuditLog.action == "host.repository_updated")
    )

    operator = api(Role.operator)
    refused = operator.put(
        f"/api/v1/hosts/{host_id}/repository", json={"url": "/x", "password": "p"}
    )
    assert refused.status_code == 403
    bad = admin.put(f"/api/v1/hosts/{host_id}/repository", json={"url": "/x", "password": ""})
    assert bad.status_code == 422 and "password" in bad.get_json()["message"].lower()


# --- job parameters ----------------------------------------------------------------------


def test_backup_params_come_from_the_source_group(protocol_app):
    _, host_id = enroll_agent(protocol_app)
    host = db.session.get(Host, host_id)
    kind, params = job_params.validate(host, "backup", {"limit_upload_kib": "512"})
    assert kind == "backup"
    assert params == {
        "group": "default",
        "paths": ["/etc", "/home"],
        "excludes": [],
        "tags": ["default"],
        "limit_upload_kib": 512,
        "limit_download_kib": None,
    }


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("backup", {"group": "nope"}, "no source group named 'nope'"),
        ("backup", {"limit_upload_kib": -1}, "limit_upload_kib must be a whole number"),
        ("backup", {"paths": ["/"]}, "Unknown parameter 'paths'"),
        ("forget", {}, "policy must be an object"),
        ("forget", {"policy": {}}, "at least one retention rule"),
        (
            "forget",
            {"policy": {"keep_daily": 0, "keep_within": "forever"}},
            "keep_within is a duration",
        ),
        ("forget", {"policy": {"keep_fortnightly": 2}}, "Unknown retention rule"),
        ("forget", {"policy": {"keep_last": 1}, "tags": ["bad tag"]}, "not a valid tag"),
        ("forget", {"policy": {"keep_last": 1}, "group_by": "host,color"}, "group_by"),
        ("check", {"read_data_subset": "0%"}, "above 0"),
        ("check", {"read_data_subset": "3/2"}, "between 1 and t"),
        ("check", {"read_data_subset": "--help"}, "must look like"),
        ("unlock", {"remove_all": "yes"}, "true or false"),
        ("prune", {"max_unused": "5%"}, "Unknown parameter"),
        ("init", {}, "'kind' must be one of"),
        ("rm -rf", {}, "'kind' must be one of"),
    ],
)
def test_bad_job_params_get_precise_messages(protocol_app, kind, params, message):
    _, host_id = enroll_agent(protocol_app)
    host = db.session.get(Host, host_id)
    with pytest.raises(ValidationFailed) as refused:
        job_params.validate(host, kind, params)
    assert message in refused.value.message


def test_good_job_params_are_normalised(protocol_app):
    _, host_id = enroll_agent(protocol_app)
    host = db.session.get(Host, host_id)
    assert job_params.validate(
        host, "forget", {"policy": {"keep_daily": "7", "keep_within": "1y6m"}, "tags": "a,b"}
    )[1] == {
        "policy": {"keep_daily": 7, "keep_within": "1y6m"},
        "tags": ["a", "b"],
        "group_by": "host,paths",
        "dry_run": False,
    }
    assert job_params.validate(host, "check", {"read_data_subset": "500m"})[1] == {
        "read_data_subset": "500M"
    }
    assert job_params.validate(host, "check", {"read_data_subset": "2.5%"})[1] == {
        "read_data_subset": "2.5%"
    }
    assert job_params.validate(host, "unlock", None)[1] == {"remove_all": False}


def test_api_runs_every_kind_and_leaves_nothing_behind_on_bad_input(protocol_app, api):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()
    operator = api()
    bad = operator.post(
        f"/api/v1/hosts/{host_id}/jobs", json={"kind": "forget", "params": {"policy": {}}}
    )
    assert bad.status_code == 422
    assert bad.get_json()["fields"] == {"params.policy": [bad.get_json()["message"]]}
    assert db.session.scalar(select(func.count()).select_from(Job)) == 0
    for kind, params in [
        ("backup", {}),
        ("forget", {"policy": {"keep_last": 3}}),
        ("prune", {}),
        ("check", {"read_data_subset": "10%"}),
        ("unlock", {}),
        ("stats", {}),
        ("snapshots", {}),
    ]:
        created = operator.post(
            f"/api/v1/hosts/{host_id}/jobs", json={"kind": kind, "params": params}
        )
        assert created.status_code == 201, created.get_json()
        assert created.get_json()["kind"] == kind
    runs = _job_runs(agent)
    assert [run["payload"]["kind"] for run in runs] == [
        "backup",
        "forget",
        "prune",
        "check",
        "unlock",
        "stats",
        "snapshots",
    ]
    assert runs[0]["payload"]["params"]["paths"] == ["/etc", "/home"]


# --- snapshots and stats -----------------------------------------------------------------


def _running_job(protocol_app, agent, host_id, api):
    created = api().post(f"/api/v1/hosts/{host_id}/jobs", json={"kind": "backup"}).get_json()
    (run,) = _job_runs(agent)
    return created["id"], run["attempt_id"]


def test_snapshot_report_replaces_the_list_atomically(protocol_app, api):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()
    job_id, attempt = _running_job(protocol_app, agent, host_id, api)
    first = [_snapshot(1), _snapshot(2, tags=("etc",), time="2026-11-26T01:00:00Z")]
    agent.post(
        "/events",
        {"events": [_event("s1", "snapshots.report", job_id, attempt, {"snapshots": first})]},
    )
    viewer = api(Role.viewer)
    listed = viewer.get(f"/api/v1/hosts/{host_id}/snapshots").get_json()["items"]
    assert [item["short_id"] for item in listed] == ["00000002", "00000001"]
    assert listed[1]["time"] == "2026-11-25T18:38:57Z"  # +01:00 converted to UTC
    assert [
        i["id"]
        for i in viewer.get(f"/api/v1/hosts/{host_id}/snapshots?tag=etc").get_json()["items"]
    ] == [f"{2:064x}"]
    host = viewer.get(f"/api/v1/hosts/{host_id}").get_json()
    assert host["snapshot_count"] == 2 and host["latest_snapshot_at"] == "2026-11-26T01:00:00Z"

    # A broken report changes nothing; an empty one (after forgetting all) empties the list.
    broken = agent.post(
        "/events",
        {
            "events": [
                _event(
                    "s2",
                    "snapshots.report",
                    job_id,
                    attempt,
                    {"snapshots": [_snapshot(3), {"id": "zz"}]},
                )
            ]
        },
    ).get_json()
    assert "snapshots[1].id" in broken["rejected"][0]["message"]
    assert db.session.scalar(select(func.count()).select_from(Snapshot)) == 2
    agent.post(
        "/events",
        {"events": [_event("s3", "snapshots.report", job_id, attempt, {"snapshots": []})]},
    )
    assert viewer.get(f"/api/v1/hosts/{host_id}/snapshots").get_json()["items"] == []
    db.session.expire_all()
    assert db.session.get(Host, host_id).snapshot_count == 0


def test_repo_stats_keep_a_history_and_set_the_repository_size(protocol_app, api):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()
    job_id, attempt = _running_job(protocol_app, agent, host_id, api)
    for number, size in enumerate((1000, 2500), start=1):
        agent.post(
            "/events",
            {
                "events": [
                    _event(
                        f"r{number}",
                        "repo.stats",
                        job_id,
                        attempt,
                        {
                            "mode": "raw-data",
                            "total_size": size,
                            "total_blob_count": 4,
                            "snapshots_count": number,
                        },
                    )
                ]
            },
        )
    bad = agent.post(
        "/events",
        {"events": [_event("r9", "repo.stats", job_id, attempt, {"total_size": "a lot"})]},
    ).get_json()
    assert bad["rejected"][0]["error"] == "invalid_event"
    viewer = api(Role.viewer)
    history = viewer.get(f"/api/v1/hosts/{host_id}/repo-stats").get_json()["items"]
    assert [row["total_size"] for row in history] == [1000, 2500]
    assert viewer.get(f"/api/v1/hosts/{host_id}").get_json()["repo_size_bytes"] == 2500
    assert db.session.scalar(select(func.count()).select_from(RepoStats)) == 2


def test_finished_backup_sets_the_hosts_last_backup(protocol_app, api):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()
    job_id, attempt = _running_job(protocol_app, agent, host_id, api)
    agent.post(
        "/events",
        {
            "events": [
                _event("w1", "job.started", job_id, attempt),
                _event(
                    "w2",
                    "job.progress",
                    job_id,
                    attempt,
                    {"percent": 50.0, "current_files": ["/etc/a"], "evil": {"nested": "x"}},
                ),
            ]
        },
    )
    db.session.expire_all()
    assert db.session.get(Job, job_id).progress == {"percent": 50.0, "current_files": ["/etc/a"]}
    agent.post(
        "/events",
        {
            "events": [
                _event(
                    "w3",
                    "job.finished",
                    job_id,
                    attempt,
                    {"status": "warning", "exit_code": 3, "error": "some files could not be read"},
                )
            ]
        },
    )
    host = api(Role.viewer).get(f"/api/v1/hosts/{host_id}").get_json()
    assert host["last_backup_status"] == "warning"
    assert host["last_backup_job_id"] == job_id
    assert host["last_backup_at"] == "2026-11-25T20:31:00Z"


def test_enrollment_turns_maintenance_on_and_forget_takes_per_group_policies(protocol_app, api):
    from app.models import RepoMaintenance

    _, host_id = enroll_agent(protocol_app)
    maintenance = db.session.get(RepoMaintenance, host_id)
    assert (maintenance.enabled, maintenance.forget_cron, maintenance.check_subset_percent) == (
        True,
        "0 3 * * *",
        5.0,
    )
    host = db.session.get(Host, host_id)
    _, params = job_params.validate(
        host,
        "forget",
        {
            "groups": [
                {"tag": "default", "policy": {"keep_daily": "7"}},
                {"tag": "etc", "policy": {"keep_last": 2}},
            ]
        },
    )
    assert params == {
        "groups": [
            {"tag": "default", "policy": {"keep_daily": 7}},
            {"tag": "etc", "policy": {"keep_last": 2}},
        ],
        "group_by": "host,paths",
        "dry_run": False,
    }
    for bad, message in [
        ({"groups": []}, "1 to 100"),
        ({"groups": [{"tag": "a", "policy": {}}]}, "at least one retention rule"),
        ({"groups": [{"tag": "a", "policy": {"keep_last": 1}}] * 2}, "listed twice"),
        (
            {"groups": [{"tag": "a", "policy": {"keep_last": 1}}], "policy": {"keep_last": 1}},
            "not both",
        ),
    ]:
        with pytest.raises(ValidationFailed) as refused:
            job_params.validate(host, "forget", bad)
        assert message in refused.value.message


def test_the_admin_credential_follows_a_new_repository_url(protocol_app, api):
    from app.services import repo_settings

    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()
    host = db.session.get(Host, host_id)
    box = protocol_app.extensions["secretbox"]
    repo_settings.save_admin_credential(
        box, host, username="admin", password="admin-Secret-9", now=utcnow()
    )
    db.session.commit()
    agent.poll()
    admin = api(Role.admin)
    assert admin.get(f"/api/v1/hosts/{host_id}/repository").get_json()["admin_set"] is True
    admin.put(
        f"/api/v1/hosts/{host_id}/repository",
        json={"url": "/srv/moved", "password": NEW_PASSWORD},
    )
    update = next(c for c in agent.poll().get_json()["commands"] if c["type"] == "config.update")
    assert update["payload"]["admin_repository"] == {
        "url": "/srv/moved",
        "username": "admin",
        "password": "admin-Secret-9",
    }


def _finish(agent, job_id, attempt, event_id, data):
    answer = agent.post(
        "/events",
        {
            "events": [
                _event(f"{event_id}-s", "job.started", job_id, attempt),
                _event(f"{event_id}-f", "job.finished", job_id, attempt, data),
            ]
        },
    ).get_json()
    assert answer["rejected"] == []


def test_missing_source_paths_and_the_last_successful_backup_reach_the_api(protocol_app, api):
    agent, host_id = enroll_agent(protocol_app)
    agent.hello()
    agent.poll()
    viewer = api(Role.viewer)

    warned, attempt = _running_job(protocol_app, agent, host_id, api)
    stats = {
        "snapshot_id": "1a2b3c4d" + "0" * 56,
        "total_files_processed": 1204,
        "data_added": int(4.2 * 1024**2),
        "error_count": 0,
        "missing_paths": ["/srv/a", "/srv/b"],
    }
    error = "2 source paths do not exist: /srv/a, /srv/b; the snapshot holds the other paths"
    _finish(
        agent,
        warned,
        attempt,
        "m1",
        {"status": "warning", "exit_code": 0, "error": error, "stats": stats},
    )
    job = viewer.get(f"/api/v1/jobs/{warned}").get_json()
    assert job["status"] == "warning" and job["error"] == error
    assert job["stats"]["missing_paths"] == ["/srv/a", "/srv/b"]
    assert job["summary"] == (
        "snapshot 1a2b3c4d, 1,204 files, 4.2 MiB added; 2 paths missing: /srv/a, /srv/b"
    )
    host = viewer.get(f"/api/v1/hosts/{host_id}").get_json()
    assert (host["last_backup_status"], host["last_backup_job_id"]) == ("warning", warned)
    # a warning saved a snapshot: it is the last successful backup too
    assert host["last_successful_backup_job_id"] == warned
    assert host["last_successful_backup_at"] == host["last_backup_at"] == "2026-11-25T20:31:00Z"

    cancelled, attempt = _running_job(protocol_app, agent, host_id, api)
    stopped = "restic was stopped because the job was cancelled"
    _finish(agent, cancelled, attempt, "m2", {"status": "cancelled", "error": stopped})
    nothing, attempt = _running_job(protocol_app, agent, host_id, api)
    none_there = "nothing was backed up: source path /srv/gone does not exist"
    _finish(
        agent,
        nothing,
        attempt,
        "m3",
        {
            "status": "failed",
            "exit_code": 1,
            "error": none_there,
            "stats": {"missing_paths": ["/srv/gone"]},
        },
    )
    host = viewer.get(f"/api/v1/hosts/{host_id}").get_json()
    assert (host["last_backup_status"], host["last_backup_job_id"]) == ("failed", nothing)
    assert host["last_successful_backup_job_id"] == warned  # not hidden by the later runs
    listed = viewer.get(f"/api/v1/jobs?host_id={host_id}&kind=backup").get_json()["items"]
    assert [(item["id"], item["summary"]) for item in listed] == [
        (nothing, none_there),
        (cancelled, stopped),
        (warned, job["summary"]),
    ]
    assert listed[0]["stats"] == {"missing_paths": ["/srv/gone"]}


def test_last_successful_backup_follows_the_highest_job_id(app):
    """A late result of an older job never replaces a newer one (agents deliver late)."""
    from app.services.jobs import note_backup_finished

    host = Host(hostname="late-1")
    db.session.add(host)
    db.session.flush()
    now = utcnow()

    def finished(job_id, status, kind="backup"):
        job = Job(
            id=job_id,
            host_id=host.id,
            kind=kind,
            status=status,
            attempt_id="a" * 32,
            actor_type="system",
            actor_label="t",
            finished_at=now.replace(microsecond=job_id),
        )
        note_backup_finished(host, job)

    finished(5, "succeeded")
    finished(7, "cancelled")
    finished(3, "succeeded")  # older, arriving late
    finished(9, "succeeded", kind="check")  # not a backup
    assert (host.last_backup_job_id, host.last_backup_status) == (7, "cancelled")
    assert host.last_successful_backup_job_id == 5
    assert host.last_successful_backup_at == now.replace(microsecond=5)
    finished(8, "warning")
    assert (host.last_backup_job_id, host.last_successful_backup_job_id) == (8, 8)
    finished(8, "warning")  # the same result again changes nothing
    assert host.last_successful_backup_job_id == 8
    db.session.rollback()
