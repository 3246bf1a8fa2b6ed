"""The agent's guard on job params (agent.jobparams.parse_params): the server's vocabulary
and ranges (app/services/job_params.py), checked on what the server sends."""

import pytest

from agent.jobparams import (
    BackupParams,
    CheckParams,
    ForgetParams,
    InvalidParams,
    NoParams,
    UnlockParams,
    parse_params,
)
from agent.repository import Repository

SID = "25504e591ecedb687efbb8a719a7158d880d698cefb2bbf1e50811ccb7a6c7bc"


def test_every_kind_has_typed_params():
    backup = parse_params("backup", {"paths": ["/etc"], "limit_upload_kib": 512})
    assert backup == BackupParams(paths=["/etc"], limit_upload_kib=512)
    (forget,) = parse_params("forget", {"policy": {"keep_daily": 7}})
    assert forget == ForgetParams({"keep_daily": 7})
    assert parse_params("check", {"read_data_subset": "1/5"}) == CheckParams("1/5")
    assert parse_params("unlock", {}) == UnlockParams(False)
    assert parse_params("restore", {"snapshot_id": SID, "target": "/srv"}).target == "/srv"
    other = SID[::-1]
    assert parse_params("diff", {"snapshot_a": SID, "snapshot_b": other}).snapshot_a == SID
    for kind in ("probe", "init", "snapshots", "prune", "stats"):
        assert parse_params(kind, {"anything": "ignored"}) == NoParams()
    with pytest.raises(InvalidParams, match="'explode' is not a job kind"):
        parse_params("explode", {})


@pytest.mark.parametrize("within", ["1y", "6m", "30d", "12h", "1y6m", "1y2m3d4h", " 30d "])
def test_keep_within_is_the_servers_duration(within):
    (forget,) = parse_params("forget", {"policy": {"keep_within": within}})
    assert forget.policy == {"keep_within": within.strip()}


@pytest.mark.parametrize("within", ["", "2 weeks", "1d1y", "30", "h", "1w", "9" * 32 + "d", 30])
def test_keep_within_refuses_what_the_server_refuses(within):
    with pytest.raises(InvalidParams, match="keep_within"):
        parse_params("forget", {"policy": {"keep_within": within}})


@pytest.mark.parametrize(
    "params, message",
    [
        ({"limit_upload_kib": 10_000_001}, "limit_upload_kib: must be at most 10000000"),
        ({"limit_download_kib": "100"}, "limit_download_kib: must be null or a whole number"),
        ({"limit_download_kib": True}, "limit_download_kib: must be null or a whole number"),
    ],
)
def test_bandwidth_caps_are_guarded_not_resolved(params, message):
    assert parse_params("backup", {"paths": ["/etc"]}).limit_upload_kib is None
    with pytest.raises(InvalidParams, match=message):
        parse_params("backup", dict(params, paths=["/etc"]))


def test_keep_counts_and_subset_sizes_follow_the_server():
    with pytest.raises(InvalidParams, match="keep_last: must be at most 100000"):
        parse_params("forget", {"policy": {"keep_last": 100_001}})
    with pytest.raises(InvalidParams, match="read_data_subset"):
        parse_params("check", {"read_data_subset": "0M"})
    assert parse_params("check", {"read_data_subset": "500M"}) == CheckParams("500M")


def test_the_repository_masks_every_secret_and_builds_a_fresh_environment(tmp_path):
    stored = {
        "url": "rest:https://user:url-Secret@backup.example/repo",
        "password": "everyday-Secret",
        "admin_repository": {"url": "/srv/repo", "password": "admin-Secret"},
    }
    repository = Repository(stored, tmp_path)
    assert repository.everyday == {"url": stored["url"], "password": "everyday-Secret"}
    assert repository.admin == {"url": "/srv/repo", "password": "admin-Secret"}
    line = "url-Secret everyday-Secret admin-Secret"
    assert repository.masker(line) == "****** ****** ******"
    env = repository.environment(repository.admin)
    assert env["RESTIC_PASSWORD"] == "admin-Secret" and env["RESTIC_CACHE_DIR"] == str(tmp_path)
    assert Repository(None).everyday is None and Repository({}).admin is None
    assert "RESTIC_PASSWORD" not in Repository(None).environment(None)
