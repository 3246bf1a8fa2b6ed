"""restore and diff jobs through the runner, with the fake restic replaying 0.14 captures
(and the JSON lines restic prints from 0.16 on)."""

import pytest

from agent.actions import diff as diff_action
from agent.actions.restore import tree_size
from agent.runner import Runner
from agent.spool import Spool

SID = "25504e591ecedb687efbb8a719a7158d880d698cefb2bbf1e50811ccb7a6c7bc"
OTHER = "39cddcb58e6e2e74cf4b0c439cc17c0e27c6d88972355872f04b25b17f777062"


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool", max_bytes=10**7)


class Ran:
    def __init__(self, spool):
        self.events = [(event["type"], event["data"]) for event in spool.pending_events()]
        batch = spool.job(1).pending_batch(max_records=10_000)
        self.texts = [record["text"] for record in batch[1]] if batch else []

    def of(self, event_type):
        return [data for kind, data in self.events if kind == event_type]

    @property
    def finished(self):
        (data,) = self.of("job.finished")
        return data


def run(spool, fake_restic, kind, params, url="fake:ready", version="0.14.0", **kwargs):
    """One job on a host whose owner allows restores anywhere (unless ``restore_paths``)."""
    credentials = {"url": url, "username": "", "password": "Restore-Pw-1"}
    kwargs.setdefault("restore_paths", "*")
    runner = Runner(
        spool, lambda: credentials, restic_binary=str(fake_restic), restic_version=version, **kwargs
    )
    runner.prepare(1, "att")
    assert runner.start(1, "att", kind, params)
    assert runner.wait_idle(timeout=30)
    return Ran(spool)


def argvs(fake_restic):
    return [call["argv"][1:] for call in fake_restic.calls()]


def test_restore_on_014_sizes_the_selection_first(spool, fake_restic, tmp_path):
    target = tmp_path / "out" / "7"
    params = {"snapshot_id": SID, "include": ["/srv/demo/data/sub"], "target": str(target)}
    ran = run(spool, fake_restic, "restore", params)
    assert ran.finished["status"] == "succeeded", ran.texts
    assert argvs(fake_restic) == [
        ["--no-lock", "ls", "--json", "--recursive", SID, "/srv/demo/data/sub"],
        ["restore", SID, "--target", str(target), "--include", "/srv/demo/data/sub"],
    ]
    assert ran.finished["stats"] == {
        "target": str(target),
        "in_place": False,
        "files_restored": 1,
        "bytes_restored": 12,
        "total_files": 1,
        "total_bytes": 12,
    }
    assert target.is_dir() and target.stat().st_mode & 0o777 == 0o700
    assert "to restore: 1 file (12 B)" in ran.texts
    assert f"restored 1 file (12 B) to {target}" in ran.texts
    assert any(text.startswith("restoring <Snapshot 25504e59") for text in ran.texts)


def test_restore_on_016_reads_json_progress(spool, fake_restic, tmp_path):
    fake_restic.set_version("0.16.4")
    target = tmp_path / "out"
    ran = run(
        spool, fake_restic, "restore", {"snapshot_id": SID, "target": str(target)}, version="0.16.4"
    )
    assert argvs(fake_restic) == [  # 0.16+ waits for another process's lock itself
        ["--retry-lock=2m", "restore", "--json", SID, "--target", str(target)]
    ]
    assert ran.of("job.progress") == [
        {
            "percent": 50.0,
            "files_done": 2,
            "total_files": 4,
            "bytes_done": 1500,
            "total_bytes": 3000,
            "seconds_elapsed": 1,
        }
    ]
    stats = ran.finished["stats"]
    assert (stats["files_restored"], stats["bytes_restored"]) == (4, 3000)
    assert not any('"message_type"' in text for text in ran.texts)


def test_restore_errors_fail_the_job_readably(spool, fake_restic, tmp_path):
    params = {"snapshot_id": SID, "target": str(tmp_path / "out")}
    ran = run(spool, fake_restic, "restore", params, url="fake:damaged")
    assert ran.finished["status"] == "failed" and ran.finished["exit_code"] == 1
    assert ran.finished["error"].startswith(
        "restic could not restore 2 items: /srv/demo/data/big.bin: StreamPack: open"
    )
    assert "Fatal: There were 2 errors" in ran.texts


def test_restores_disabled_by_the_host(spool, fake_restic, tmp_path):
    params = {"snapshot_id": SID, "target": str(tmp_path / "out")}
    ran = run(spool, fake_restic, "restore", params, restore_paths="")
    assert ran.finished["error"] == (
        "restore refused by this host: restores are disabled (restore_paths is empty in agent.conf)"
    )
    assert fake_restic.calls() == []


def test_in_place_restore_of_a_whole_snapshot_checks_the_snapshot_paths(spool, fake_restic):
    ran = run(
        spool,
        fake_restic,
        "restore",
        {"snapshot_id": SID, "in_place": True},
        restore_paths="/srv/x",
    )
    assert ran.finished["error"] == (
        "restore refused by this host: /srv/demo/data is outside restore_paths (/srv/x) "
        "in agent.conf"
    )
    assert argvs(fake_restic) == [["--no-lock", "ls", "--json", SID, "/"]]


def test_invalid_restore_params_fail_the_job(spool, fake_restic):
    ran = run(spool, fake_restic, "restore", {"snapshot_id": SID, "target": "relative"})
    assert ran.finished["error"].startswith("invalid restore parameters: target:")
    assert fake_restic.calls() == []


def test_diff_reports_changes_in_batches_with_sizes(spool, fake_restic):
    ran = run(spool, fake_restic, "diff", {"snapshot_a": OTHER, "snapshot_b": SID})
    assert ran.finished["status"] == "succeeded", ran.texts
    assert argvs(fake_restic)[0] == ["--no-lock", "diff", "--json", OTHER, SID]
    # The fake answers every ls with sample 41 (/srv/demo/data/sub holding b.txt, 12 bytes).
    assert argvs(fake_restic)[1:] == [
        ["--no-lock", "ls", "--json", OTHER, "/srv/demo/data", "/srv/demo/data/sub"],
        ["--no-lock", "ls", "--json", SID, "/srv/demo/data", "/srv/demo/data/sub"],
    ]
    (report,) = ran.of("diff.report")
    assert report["batch"] == 0
    assert [(c["modifier"], c["path"], c["size_before"]) for c in report["changes"]] == [
        ("M", "/srv/demo/data/a.txt", None),
        ("-", "/srv/demo/data/sub/b.txt", 12),
        ("+", "/srv/demo/data/sub/c.txt", None),
    ]
    assert "- /srv/demo/data/sub/b.txt" in ran.texts
    stats = ran.finished["stats"]
    assert stats["changes"] == stats["reported"] == 3 and stats["truncated"] is False
    assert stats["removed"]["bytes"] == 3532 and stats["changed_files"] == 1


def test_diff_reports_at_most_20000_changes_in_batches_of_1000(monkeypatch, spool, fake_restic):
    monkeypatch.setattr(diff_action, "MAX_REPORTED", 2)
    monkeypatch.setattr(diff_action, "BATCH_SIZE", 1)
    ran = run(spool, fake_restic, "diff", {"snapshot_a": OTHER, "snapshot_b": SID})
    assert [report["batch"] for report in ran.of("diff.report")] == [0, 1]
    stats = ran.finished["stats"]
    assert (stats["changes"], stats["reported"], stats["truncated"]) == (3, 2, True)


def test_progress_counts_the_bytes_written_not_the_preallocated_size(tmp_path):
    # restic 0.14 creates each file at its final size, then fills it in.
    sparse = tmp_path / "target" / "srv" / "big.bin"
    sparse.parent.mkdir(parents=True)
    with open(sparse, "wb") as out:
        out.truncate(64 * 1024 * 1024)
        out.write(b"x" * 1024 * 1024)
    (tmp_path / "target" / "small.txt").write_bytes(b"12345")
    files, written = tree_size(str(tmp_path / "target"))
    assert files == 2
    assert 1024 * 1024 <= written < 4 * 1024 * 1024
