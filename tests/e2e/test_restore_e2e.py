"""Issue 6 "done when", with real processes and real restic: a file deleted on the host is
found in the snapshot browser, downloaded, and restored with one API call (into a new
directory and in place); the diff of the two snapshots names the deleted and the added
file; the agent refuses a target its restore_paths does not allow. No secret leaks."""

from __future__ import annotations

import os
import time

import pytest

from tests.e2e.processes import AgentProcess, Api, require_restic

REPO_PASSWORD = "e2e-Restore-Repo-Password-5d1e"
ADMIN_PASSWORD = "admin password for restore e2e"


@pytest.fixture
def server(start_server):
    return start_server(
        RM_OFFLINE_AFTER_SECONDS="20",
        RM_POLL_WAIT_SECONDS="10",
        RM_LOG_FLUSH_SECONDS="2",
        RM_RPC_WAIT_SECONDS="20",  # the first ls opens the repository: slow machines
    )


def test_find_a_deleted_file_and_restore_it(server, tmp_path):
    require_restic()
    token = server.admin_token(password=ADMIN_PASSWORD)
    api = Api(server, token)
    home = tmp_path / "home"  # the agent's $HOME: the default restore target lives here
    home.mkdir()
    data = tmp_path / "data"
    (data / "docs").mkdir(parents=True)
    report = data / "docs" / "report.txt"
    report.write_text("quarterly numbers\n" * 50)
    notes = data / "docs" / "notes [draft].md"  # restic pattern characters in the name
    notes.write_text("# notes\n")
    photo = data / "photo.bin"
    photo.write_bytes(os.urandom(2_500_000))  # several 1 MiB chunks when downloaded
    originals = {path: path.read_bytes() for path in (report, notes, photo)}

    repo = tmp_path / "repo"
    enroll_token = api.post(
        "/enrollment-tokens",
        {
            "hostname": "e2e-restore",
            "repo_url": str(repo),
            "repo_password": REPO_PASSWORD,
            "paths": [str(data)],
        },
    )["token"]
    agent = AgentProcess(tmp_path / "agent-home", tmp_path / "agent.log", HOME=str(home))
    agent.enroll(server.url, enroll_token)
    agent.configure(restore_paths=f"$HOME/rm-restore, {data}")
    host_id = api.get("/hosts").json()["items"][0]["id"]
    agent.start()
    try:
        api.wait_repo_ready(host_id)
        first = api.wait_job(api.run(host_id, "backup"))
        assert first["status"] == "succeeded", first
        before = first["stats"]["snapshot_id"]

        # The accident: a file is deleted, another one appears; the nightly backup runs.
        report.unlink()
        (data / "docs" / "new.txt").write_text("new\n")
        second = api.wait_job(api.run(host_id, "backup"))
        assert second["status"] == "succeeded", second
        after = second["stats"]["snapshot_id"]

        # Found in the snapshot browser: walk down from the top.
        started = time.monotonic()
        path, items = "/", []
        for name in [part for part in str(data / "docs").split("/") if part]:
            listing = api.get(
                f"/hosts/{host_id}/snapshots/{before[:8]}/tree", params={"path": path}
            ).json()
            names = [item["name"] for item in listing["items"]]
            assert name in names, (path, names)
            path = listing["items"][names.index(name)]["path"]
        items = api.get(f"/hosts/{host_id}/snapshots/{before}/tree", params={"path": path}).json()[
            "items"
        ]
        assert {item["name"]: item["size"] for item in items} == {
            "notes [draft].md": len(originals[notes]),
            "report.txt": len(originals[report]),
        }
        browse_seconds = time.monotonic() - started
        cached = api.get(f"/hosts/{host_id}/snapshots/{before}/tree", params={"path": path})
        assert cached.json()["cached"] is True
        missing = api.session.get(
            f"{api.base}/hosts/{host_id}/snapshots/{before}/tree",
            params={"path": str(data / "nope")},
            timeout=30,
        )
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"

        # "I need that one file back": download it, bytes intact.
        download = api.session.get(
            f"{api.base}/hosts/{host_id}/snapshots/{before}/download",
            params={"path": str(photo)},
            timeout=60,
        )
        assert download.status_code == 200, download.text[:300]
        assert download.content == originals[photo]
        assert int(download.headers["Content-Length"]) == len(originals[photo])

        # The diff names the deleted and the added file.
        diff = api.wait_job(api.run(host_id, "diff", {"snapshot_a": before, "snapshot_b": after}))
        assert diff["status"] == "succeeded", diff
        changes = api.get(f"/jobs/{diff['id']}/diff").json()
        by_path = {item["path"]: item for item in changes["items"]}
        assert by_path[str(report)]["modifier"] == "-"
        assert by_path[str(report)]["size_before"] == len(originals[report])
        assert by_path[str(data / "docs" / "new.txt")]["modifier"] == "+"
        assert by_path[str(data / "docs" / "new.txt")]["size_after"] == 4

        # One API call restores two files into a new directory (the default target).
        restore = api.post(
            f"/hosts/{host_id}/restores",
            {"snapshot_id": before[:8], "include": [str(report), str(notes)]},
        )
        assert restore["params"]["target"] == f"$HOME/rm-restore/{restore['id']}"
        restore = api.wait_job(restore["id"], timeout=120)
        assert restore["status"] == "succeeded", restore
        target = home / "rm-restore" / str(restore["id"])
        for original in (report, notes):
            copy = target / str(original).lstrip("/")
            assert copy.read_bytes() == originals[original], copy
        assert not (target / str(photo).lstrip("/")).exists()  # only what was selected
        assert restore["stats"]["target"] == str(target)
        assert restore["stats"]["files_restored"] == 2
        total = time.monotonic() - started
        assert total < 120, f"find + restore took {total:.0f} s (browse {browse_seconds:.1f} s)"

        # In place: refused without the host name, done with it; the file is back.
        refused = api.session.post(
            f"{api.base}/hosts/{host_id}/restores",
            json={"snapshot_id": before, "include": [str(report)], "in_place": True},
            timeout=10,
        )
        assert refused.status_code == 422 and refused.json()["error"] == "confirmation_required"
        in_place = api.post(
            f"/hosts/{host_id}/restores",
            {
                "snapshot_id": before,
                "include": [str(report)],
                "in_place": True,
                "confirm_hostname": "e2e-restore",
            },
        )
        assert api.wait_job(in_place["id"])["status"] == "succeeded"
        assert report.read_bytes() == originals[report]

        # The host owner's veto: a target outside restore_paths fails before restic runs.
        forbidden = tmp_path / "elsewhere"
        vetoed = api.post(
            f"/hosts/{host_id}/restores",
            {"snapshot_id": before, "include": [str(report)], "target": str(forbidden)},
        )
        vetoed = api.wait_job(vetoed["id"])
        assert vetoed["status"] == "failed"
        assert "outside restore_paths" in vetoed["error"], vetoed["error"]
        assert not forbidden.exists()

        # Nothing leaked the repository password.
        logs = [
            api.get(f"/jobs/{job_id}/log.txt").text
            for job_id in (restore["id"], diff["id"], in_place["id"], vetoed["id"])
        ]
        for text in [*logs, server.log(), agent.log()]:
            assert REPO_PASSWORD not in text
    finally:
        agent.kill()
