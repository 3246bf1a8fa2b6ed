"""Browse, restore, download and diff against the real restic and a real local repository.

Skipped when restic is not installed, unless RM_REQUIRE_RESTIC=1 (CI): then it fails.
"""

import hashlib
import json
import os
import threading
import uuid

import pytest
from fake_agent_server import all_files, wait_for

from agent.client import Client
from agent.rpc import RpcFailed, RpcRunner
from agent.service import Agent
from tests.agent.real_restic import RESTIC, RunnerJobs, needs_restic, run_restic

PASSWORD = "real-Restore-pass-7c6d5e"
BIG_BYTES = 3 * 1024 * 1024 + 12_345  # spans four 1 MiB chunks

pytestmark = needs_restic()


def restic(repo, *args):
    """Run restic directly (not through the agent); its stdout."""
    return run_restic(repo, PASSWORD, *args)


def back_up(repo, path):
    """A snapshot of ``path``; its full id."""
    restic(repo, "backup", "--json", "--quiet", str(path))
    snapshots = json.loads(restic(repo, "snapshots", "--json", "--path", str(path)))
    return snapshots[-1]["id"]


class Repo:
    def __init__(self, root):
        self.root = root
        self.path = root / "repo"
        self.data = root / "data"
        self.credentials = {"url": str(self.path), "username": "", "password": PASSWORD}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Two snapshots of one tree: ``first`` and ``second`` (b.txt removed, new.txt added,
    a.txt modified)."""
    built = Repo(tmp_path_factory.mktemp("real-restore"))
    restic(built.path, "init")
    data = built.data
    (data / "sub").mkdir(parents=True)
    (data / "empty").mkdir()
    (data / "a.txt").write_bytes(b"alpha\n")
    (data / "b.txt").write_bytes(b"bravo bravo\n")
    (data / "sub" / "c.txt").write_bytes(b"charlie\n")
    (data / "a*b.txt").write_bytes(b"a star b\n")
    (data / "[x].txt").write_bytes(b"bracket x\n")
    (data / "big.bin").write_bytes(os.urandom(BIG_BYTES))
    (data / "link").symlink_to("a.txt")
    built.first = back_up(built.path, data)
    built.originals = {
        name: (data / name).read_bytes() for name in ("a.txt", "sub/c.txt", "big.bin")
    }
    (data / "b.txt").unlink()
    (data / "new.txt").write_bytes(b"brand new file\n")
    (data / "a.txt").write_bytes(b"alpha, changed\n")
    built.second = back_up(built.path, data)
    return built


class Jobs(RunnerJobs):
    def __init__(self, root, repo, restore_paths="*"):
        super().__init__(
            root, lambda: repo.credentials, restore_paths=restore_paths, grace_seconds=5.0
        )


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "agent-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def rpc_runner(repo, tmp_path, server_url="http://127.0.0.1:9"):
    return RpcRunner(
        lambda: Client(server_url, agent_token="rma_fake-agent-token-0123456789"),
        lambda: repo.credentials,
        cache_dir=tmp_path / "rpc-cache",
        retry_delays=(0.05,),
    )


# -- browsing ----------------------------------------------------------------------------


def test_ls_lists_the_direct_children_of_a_directory(repo, tmp_path):
    runner = rpc_runner(repo, tmp_path)
    listed = runner.list_directory({"snapshot_id": repo.first, "path": str(repo.data)})
    items = {item["name"]: item for item in listed["items"]}
    assert set(items) == {"a.txt", "b.txt", "a*b.txt", "[x].txt", "big.bin", "empty", "link", "sub"}
    assert listed["truncated"] is False
    assert items["big.bin"]["type"] == "file" and items["big.bin"]["size"] == BIG_BYTES
    assert items["sub"]["type"] == "dir" and items["sub"]["size"] is None
    assert items["link"]["type"] == "symlink"
    assert items["a.txt"]["path"] == f"{repo.data}/a.txt"
    assert items["a.txt"]["permissions"] == "-rw-r--r--" or items["a.txt"]["mode"]
    assert items["a.txt"]["mtime"]

    sub = runner.list_directory({"snapshot_id": repo.first, "path": f"{repo.data}/sub/"})
    assert [item["name"] for item in sub["items"]] == ["c.txt"]  # c.txt only, not its parents

    few = runner.list_directory(
        {"snapshot_id": repo.first, "path": str(repo.data), "max_entries": 3}
    )
    assert len(few["items"]) == 3 and few["truncated"] is True


def test_ls_of_the_root_lists_the_top_level(repo, tmp_path):
    runner = rpc_runner(repo, tmp_path)
    listed = runner.list_directory({"snapshot_id": repo.first, "path": "/"})
    top = repo.data.parts[1]  # "tmp"
    assert [(item["name"], item["path"], item["type"]) for item in listed["items"]] == [
        (top, "/" + top, "dir")
    ]


@pytest.mark.parametrize(
    ("path", "code"),
    [("/no/such/dir", "not_found"), ("{data}/a.txt", "not_a_directory")],
)
def test_ls_refusals(repo, tmp_path, path, code):
    runner = rpc_runner(repo, tmp_path)
    with pytest.raises(RpcFailed) as failure:
        runner.list_directory({"snapshot_id": repo.first, "path": path.format(data=repo.data)})
    assert failure.value.code == code
    if code == "not_found":
        assert failure.value.message == f"/no/such/dir is not in snapshot {repo.first[:8]}"


def test_ls_of_an_unknown_snapshot_is_restic_failed(repo, tmp_path):
    runner = rpc_runner(repo, tmp_path)
    with pytest.raises(RpcFailed) as failure:
        runner.list_directory({"snapshot_id": "0" * 64, "path": "/"})
    assert failure.value.code == "restic_failed"
    assert "no matching ID found" in failure.value.message


# -- restores ----------------------------------------------------------------------------


def test_restore_two_files_into_a_new_directory(repo, tmp_path, home):
    jobs = Jobs(tmp_path, repo, restore_paths="$HOME/rm-restore")
    ran = jobs.run(
        "restore",
        {
            "snapshot_id": repo.first,
            "include": [f"{repo.data}/a.txt", f"{repo.data}/sub/c.txt"],
            "target": "$HOME/rm-restore/12",
        },
    )
    target = home / "rm-restore" / "12"
    assert ran.finished["status"] == "succeeded", ran.texts
    restored = target / str(repo.data).lstrip("/")
    assert (restored / "a.txt").read_bytes() == repo.originals["a.txt"]
    assert (restored / "sub" / "c.txt").read_bytes() == repo.originals["sub/c.txt"]
    assert sorted(path.name for path in restored.iterdir()) == ["a.txt", "sub"]
    for directory in (home / "rm-restore", target):
        assert directory.stat().st_mode & 0o777 == 0o700
    size = len(repo.originals["a.txt"]) + len(repo.originals["sub/c.txt"])
    assert ran.finished["stats"] == {
        "target": str(target),
        "in_place": False,
        "files_restored": 2,
        "bytes_restored": size,
        "total_files": 2,
        "total_bytes": size,
    }
    assert f"restored 2 files ({size} B) to {target}" in ran.texts
    assert ran.restic_calls[0].startswith("$ restic --no-lock ls --json --recursive")
    assert ran.restic_calls[1].startswith(f"$ restic restore {repo.first} --target {target}")


def test_restore_of_files_whose_names_are_patterns(repo, tmp_path, home):
    jobs = Jobs(tmp_path, repo)
    target = tmp_path / "out"
    ran = jobs.run(
        "restore",
        {
            "snapshot_id": repo.first,
            "include": [f"{repo.data}/a*b.txt", f"{repo.data}/[x].txt"],
            "target": str(target),
            "verify": True,
        },
    )
    assert ran.finished["status"] == "succeeded", ran.texts
    restored = target / str(repo.data).lstrip("/")
    assert sorted(path.name for path in restored.iterdir()) == ["[x].txt", "a*b.txt"]
    assert (restored / "a*b.txt").read_bytes() == b"a star b\n"
    assert ran.finished["stats"]["files_restored"] == 2
    assert any(text.startswith("finished verifying 2 files") for text in ran.texts)


def test_a_forbidden_target_is_refused_before_restic_runs(repo, tmp_path, home):
    jobs = Jobs(tmp_path, repo, restore_paths="$HOME/rm-restore, /srv/restore")
    target = tmp_path / "elsewhere"
    ran = jobs.run("restore", {"snapshot_id": repo.first, "target": str(target)})
    message = (
        f"restore refused by this host: {target} is outside restore_paths "
        f"({home}/rm-restore, /srv/restore) in agent.conf"
    )
    assert ran.finished["status"] == "failed"
    assert ran.finished["error"] == message
    assert ran.restic_calls == [] and not target.exists()


def test_a_symlink_out_of_an_allowed_directory_is_refused(repo, tmp_path, home):
    (home / "rm-restore").mkdir()
    (home / "rm-restore" / "escape").symlink_to(tmp_path)
    jobs = Jobs(tmp_path, repo, restore_paths="~/rm-restore")
    ran = jobs.run("restore", {"snapshot_id": repo.first, "target": "~/rm-restore/escape/x"})
    assert ran.finished["status"] == "failed"
    assert "is outside restore_paths" in ran.finished["error"] and ran.restic_calls == []


def test_in_place_restore_overwrites_a_modified_file(repo, tmp_path, home):
    tree = tmp_path / "live"
    tree.mkdir()
    (tree / "config.ini").write_bytes(b"good=1\n")
    (tree / "other.txt").write_bytes(b"untouched\n")
    snapshot = back_up(repo.path, tree)
    (tree / "config.ini").write_bytes(b"broken!!\n")
    (tree / "other.txt").write_bytes(b"changed since\n")
    outside = Jobs(tmp_path / "a", repo, restore_paths=f"{tree}/other.txt")
    refused = outside.run(
        "restore", {"snapshot_id": snapshot, "include": [f"{tree}/config.ini"], "in_place": True}
    )
    assert refused.finished["error"] == (
        f"restore refused by this host: {tree}/config.ini is outside restore_paths "
        f"({tree}/other.txt) in agent.conf"
    )
    whole = outside.run("restore", {"snapshot_id": snapshot, "in_place": True, "target": "/"})
    assert "is outside restore_paths" in whole.finished["error"]  # the snapshot's path: tree
    assert (tree / "config.ini").read_bytes() == b"broken!!\n"

    jobs = Jobs(tmp_path / "b", repo, restore_paths=str(tree))
    ran = jobs.run(
        "restore", {"snapshot_id": snapshot, "include": [f"{tree}/config.ini"], "in_place": True}
    )
    assert ran.finished["status"] == "succeeded", ran.texts
    assert (tree / "config.ini").read_bytes() == b"good=1\n"
    assert (tree / "other.txt").read_bytes() == b"changed since\n"
    assert ran.finished["stats"]["target"] == "/" and ran.finished["stats"]["in_place"] is True
    assert ran.finished["stats"]["files_restored"] == 1


def test_restore_of_an_unknown_snapshot_fails_with_restics_reason(repo, tmp_path, home):
    ran = Jobs(tmp_path, repo).run(
        "restore", {"snapshot_id": "f" * 64, "target": str(tmp_path / "out")}
    )
    assert ran.finished["status"] == "failed"
    assert "no matching ID found" in ran.finished["error"]


def test_cancel_of_a_restore(repo, tmp_path, home):
    # A FIFO where restic writes a.txt: restic blocks opening it until it is cancelled.
    target = tmp_path / "out"
    blocked = target / str(repo.data).lstrip("/")
    blocked.mkdir(parents=True)
    os.mkfifo(blocked / "a.txt")
    jobs = Jobs(tmp_path, repo)
    job_id = jobs.start(
        "restore",
        {"snapshot_id": repo.first, "include": [f"{repo.data}/a.txt"], "target": str(target)},
    )
    wait_for(
        lambda: any(text.startswith("restoring <Snapshot") for text in jobs.result(job_id).texts),
        timeout=60,
    )
    assert jobs.runner.cancel(job_id)
    assert jobs.runner.wait_idle(30)
    finished = jobs.result(job_id).finished
    assert finished["status"] == "cancelled"
    assert finished["error"] == "restic was stopped because the job was cancelled"


# -- diff --------------------------------------------------------------------------------


def test_diff_reports_added_removed_and_modified_files_with_sizes(repo, tmp_path):
    ran = Jobs(tmp_path, repo).run("diff", {"snapshot_a": repo.first, "snapshot_b": repo.second})
    assert ran.finished["status"] == "succeeded", ran.texts
    (report,) = ran.of("diff.report")
    assert report["batch"] == 0
    changes = {change["path"]: change for change in report["changes"]}
    data = str(repo.data)
    assert changes[f"{data}/new.txt"] == {
        "path": f"{data}/new.txt",
        "modifier": "+",
        "type": "file",
        "size_before": None,
        "size_after": len(b"brand new file\n"),
    }
    assert changes[f"{data}/b.txt"] == {
        "path": f"{data}/b.txt",
        "modifier": "-",
        "type": "file",
        "size_before": len(b"bravo bravo\n"),
        "size_after": None,
    }
    assert changes[f"{data}/a.txt"] == {
        "path": f"{data}/a.txt",
        "modifier": "M",
        "type": "file",
        "size_before": len(b"alpha\n"),
        "size_after": len(b"alpha, changed\n"),
    }
    stats = ran.finished["stats"]
    assert stats["source_snapshot"] == repo.first and stats["target_snapshot"] == repo.second
    assert stats["added"]["files"] == 1 and stats["removed"]["files"] == 1
    assert stats["changed_files"] == 1
    assert stats["changes"] == stats["reported"] == len(report["changes"]) == 3
    assert stats["truncated"] is False
    assert f"+ {data}/new.txt" in ran.texts and f"- {data}/b.txt" in ran.texts
    assert f"M {data}/a.txt" in ran.texts


@pytest.mark.server
def test_a_diff_lists_files_in_natural_order_and_the_page_adds_up_their_sizes(tmp_path, login_as):
    """restic's added/removed bytes are deduplicated repository data: a copied file adds
    almost nothing. The job page's tiles add up the files' sizes the table shows and name
    restic's figure apart."""
    from app.extensions import db
    from app.formatting import human_bytes
    from app.models import Host, Job, Role
    from app.models.types import utcnow
    from app.services import diffs

    repo = Repo(tmp_path)
    restic(repo.path, "init")
    data = repo.data
    data.mkdir()
    payload = os.urandom(300_000)
    (data / "keep.bin").write_bytes(payload)
    (data / "old.txt").write_bytes(b"old\n" * 100)
    first = back_up(repo.path, data)
    (data / "old.txt").unlink()
    (data / "copy.bin").write_bytes(payload)  # the same bytes: no new data in the repository
    for name in ("file10.txt", "file2.txt", "File1.txt"):
        (data / name).write_bytes(name.encode() * 50)
    second = back_up(repo.path, data)

    ran = Jobs(tmp_path, repo).run("diff", {"snapshot_a": first, "snapshot_b": second})
    assert ran.finished["status"] == "succeeded", ran.texts
    (report,) = ran.of("diff.report")
    names = [change["path"].rsplit("/", 1)[-1] for change in report["changes"]]
    assert names == ["copy.bin", "File1.txt", "file2.txt", "file10.txt", "old.txt"]
    stats = ran.finished["stats"]
    added_sizes = 300_000 + sum(len(name) * 50 for name in ("file10.txt", "file2.txt", "File1.txt"))
    assert sum(c["size_after"] for c in report["changes"] if c["modifier"] == "+") == added_sizes
    assert stats["added"]["bytes"] < 300_000  # repository data, not the files' sizes
    summary = "5 changes: 4 files and 0 directories added, 1 file and 0 directories removed"
    assert f"{summary}, 0 files modified" in ran.texts

    host = Host(hostname="diff-host")
    db.session.add(host)
    db.session.flush()
    job = Job(
        host_id=host.id,
        kind="diff",
        status="succeeded",
        attempt_id="a" * 32,
        actor_type="user",
        actor_label="alice",
        params={"snapshot_a": first, "snapshot_b": second},
        stats=stats,
        started_at=utcnow(),
        finished_at=utcnow(),
    )
    db.session.add(job)
    db.session.flush()
    assert diffs.record_batch(job, report) is None
    db.session.commit()
    assert diffs.file_sizes(job)["added"] == {"bytes": added_sizes, "unknown": 0}

    html = login_as(Role.viewer).get(f"/jobs/{job.id}").get_data(as_text=True)
    tiles = html.split('class="diffsum"')[1].split('class="difffilter"')[0]
    assert "4 files" in tiles and "294 KiB" in tiles  # 301,450 bytes, as listed
    assert "1 file</span>" in tiles and "400 B" in tiles  # old.txt, removed
    repository = human_bytes(stats["added"]["bytes"])
    assert f"In the repository: {repository} of data only the newer snapshot uses" in tiles
    table = html.split('class="table table--compact difftable"')[1]
    assert [table.index(name) for name in names] == sorted(table.index(name) for name in names)


# -- downloads (rpc.dump) through the fake server ----------------------------------------


def dump_payload(repo, name, max_bytes=10 * 1024 * 1024, snapshot=None):
    return {
        "rpc_id": uuid.uuid4().hex,
        "snapshot_id": snapshot or repo.first,
        "path": f"{repo.data}/{name}",
        "max_bytes": max_bytes,
    }


@pytest.mark.parametrize("name", ["a.txt", "big.bin"])
def test_dump_streams_the_file_with_its_sha256(repo, tmp_path, fake_server, name):
    runner = rpc_runner(repo, tmp_path, fake_server.url)
    payload = dump_payload(repo, name)
    assert runner.submit("rpc.dump", payload)
    rpc_id = payload["rpc_id"]
    end = wait_for(lambda: fake_server.rpc_end(rpc_id), timeout=60)
    original = repo.originals[name]
    assert fake_server.rpc_answer(rpc_id)["result"]["size"] == len(original)
    assert fake_server.rpc_answer(rpc_id)["result"]["name"] == name
    assert bytes(fake_server.rpc_data[rpc_id]) == original
    assert end == {
        "ok": True,
        "bytes": len(original),
        "sha256": hashlib.sha256(original).hexdigest(),
    }
    chunks = fake_server.rpc_chunks[rpc_id]
    assert all(length <= 1024 * 1024 for _, length in chunks)
    assert [offset for offset, _ in chunks] == [
        sum(n for _, n in chunks[:i]) for i in range(len(chunks))
    ]
    if name == "big.bin":
        assert len(chunks) == 4


def test_dump_refusals(repo, tmp_path, fake_server):
    runner = rpc_runner(repo, tmp_path, fake_server.url)
    cases = {
        "too_large": dump_payload(repo, "big.bin", max_bytes=1000),
        "not_found": dump_payload(repo, "nope.txt"),
        "not_a_file": dump_payload(repo, "sub"),
    }
    for payload in cases.values():
        assert runner.submit("rpc.dump", payload)
    for code, payload in cases.items():
        answer = wait_for(lambda p=payload: fake_server.rpc_answer(p["rpc_id"]), timeout=60)
        assert answer["ok"] is False and answer["error"] == code, answer
        assert payload["rpc_id"] not in fake_server.rpc_chunks
    too_large = fake_server.rpc_answer(cases["too_large"]["rpc_id"])["message"]
    assert str(BIG_BYTES) in too_large and "1000 bytes" in too_large


def test_dump_stops_when_nobody_waits_any_more(repo, tmp_path, fake_server):
    runner = rpc_runner(repo, tmp_path, fake_server.url)
    payload = dump_payload(repo, "big.bin")
    fake_server.rpc_close_after[payload["rpc_id"]] = 1  # 410 from the second chunk on
    assert runner.submit("rpc.dump", payload)
    wait_for(lambda: runner._pending == 0, timeout=60)
    assert len(fake_server.rpc_chunks[payload["rpc_id"]]) == 2
    assert fake_server.rpc_end(payload["rpc_id"]) is None


# -- the same through the Agent: commands acked, answers posted ---------------------------


def test_rpc_commands_through_the_agent(repo, tmp_path, fake_server, agent_home, caplog):
    caplog.set_level("DEBUG")
    fake_server.queue(
        {
            "command_id": "c1",
            "type": "config.update",
            "payload": {"repository": repo.credentials},
        }
    )
    listing = {"rpc_id": uuid.uuid4().hex, "snapshot_id": repo.second, "path": str(repo.data)}
    download = dump_payload(repo, "big.bin")
    closed = dump_payload(repo, "big.bin")
    fake_server.rpc_close_after[closed["rpc_id"]] = 1
    for number, (kind, payload) in enumerate(
        [("rpc.ls", listing), ("rpc.dump", download), ("rpc.dump", closed)]
    ):
        fake_server.queue({"command_id": f"r{number}", "type": kind, "payload": payload})
    fake_server.queue({"command_id": "bad", "type": "rpc.ls", "payload": {"path": "/"}})
    agent = Agent(agent_home, restic_binary=RESTIC)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        answer = wait_for(lambda: fake_server.rpc_answer(listing["rpc_id"]), timeout=60)
        assert answer["ok"] is True
        names = sorted(item["name"] for item in answer["result"]["items"])
        assert "new.txt" in names and "b.txt" not in names
        end = wait_for(lambda: fake_server.rpc_end(download["rpc_id"]), timeout=60)
        assert end["sha256"] == hashlib.sha256(repo.originals["big.bin"]).hexdigest()
        wait_for(lambda: len(fake_server.rpc_chunks.get(closed["rpc_id"], [])) == 2, timeout=60)
        acks = wait_for(
            lambda: (lambda found: found if {"r0", "r1", "r2", "bad"} <= set(found) else None)(
                {ack["command_id"]: ack for ack in fake_server.acks}
            ),
            timeout=20,
        )
        assert [acks[name]["result"] for name in ("r0", "r1", "r2")] == ["accepted"] * 3
        assert acks["bad"]["result"] == "rejected"
        assert "rpc_id" in acks["bad"]["reason"]
        wait_for(lambda: agent.rpc._pending == 0, timeout=30)
    finally:
        stop.set()
        thread.join(15)
    assert fake_server.rpc_end(closed["rpc_id"]) is None
    for path in all_files(agent_home):
        assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in caplog.text
    assert PASSWORD.encode() not in b"".join(fake_server.raw_bodies)
