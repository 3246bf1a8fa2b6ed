"""A download's chunks passed between the workers of one machine as files in the data
directory (app/download_spool.py): only for a download streaming here, private, removed
as they are read and when the download ends, stale ones swept."""

from __future__ import annotations

import os
import stat
import time

from sqlalchemy import func, select

from app import download_spool, ticker
from app.extensions import db
from app.models import RpcCall, RpcChunk
from app.models.types import utcnow
from app.services import rpc
from tests.factories import SNAP_A, make_enrolled_host
from tests.test_restore_api import agent_post, new_call

CALL = "0123456789abcdef0123456789abcdef"
OCTETS = {"content_type": "application/octet-stream"}


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_chunks_wait_as_private_files_while_the_download_streams(app):
    root = download_spool.root()
    assert download_spool.put(CALL, 0, b"abc") is False  # nobody streams it here
    with download_spool.reading(CALL) as spool:
        directory = root / CALL
        assert _mode(root) == 0o700 and _mode(directory) == 0o700
        assert download_spool.put(CALL, 0, b"abc") and download_spool.put(CALL, 3, b"defg")
        assert _mode(directory / "0") == 0o600
        assert download_spool.unread_bytes(CALL) == 7
        assert spool.take(3) == b"defg"  # by offset: the download asks where it stands
        assert spool.take(0) == b"abc"
        assert spool.take(0) is None and download_spool.unread_bytes(CALL) == 0
        assert sorted(os.listdir(directory)) == []
        download_spool.put(CALL, 7, b"left over")
    assert not (root / CALL).exists()  # the end of the download removes what it left
    assert download_spool.unread_bytes(CALL) == 0


def test_only_a_call_id_names_a_directory(app):
    hostile_ids = ("../../etc", "..", "", "0123456789ABCDEF0123456789ABCDEF", CALL + "/x")
    for hostile in (*hostile_ids, CALL + "\n"):
        with download_spool.reading(hostile) as spool:
            assert spool is None
        assert download_spool.put(hostile, 0, b"x") is False
        assert download_spool.unread_bytes(hostile) == 0
    assert not download_spool.root().exists() or os.listdir(download_spool.root()) == []


def test_a_file_that_cannot_be_written_leaves_nothing_and_goes_to_the_database(app, monkeypatch):
    with download_spool.reading(CALL) as spool:
        directory = download_spool.root() / CALL
        real_replace = os.replace

        def disk_full(source, target):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(download_spool.os, "replace", disk_full)
        assert download_spool.put(CALL, 0, b"abc") is False
        assert os.listdir(directory) == []  # the half-way file is gone too
        monkeypatch.setattr(download_spool.os, "replace", real_replace)
        assert download_spool.put(CALL, 0, b"abc") is True
        assert spool.take(0) == b"abc"


def test_directories_of_downloads_long_gone_are_swept_by_the_next_one(app):
    root = download_spool.root()
    root.mkdir(parents=True, mode=0o700)
    stale, fresh = root / ("a" * 32), root / ("b" * 32)
    for directory in (stale, fresh):
        directory.mkdir()
        (directory / "0").write_bytes(b"x")
    old = time.time() - download_spool.KEEP_SECONDS - 60
    os.utime(stale, (old, old))
    with download_spool.reading(CALL):
        assert not stale.exists() and fresh.exists()
    # The leader's tick sweeps too (a machine where no download starts again).
    os.utime(fresh, (old, old))
    ticker.tick(app.extensions["secretbox"], utcnow())
    assert not fresh.exists()


def test_an_upload_leaves_its_chunk_as_a_file_for_a_download_in_another_worker(app):
    """No download streams in this process (no hand-over), but one streams on this
    machine: the chunk becomes a file, the database records only the count."""
    host, token = make_enrolled_host("spool-1")
    host.agent_token_plain = token
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=20)
    agent_post(app, host, call.id, json={"ok": True, "result": {"name": "f", "size": 6}})
    with download_spool.reading(call.id) as spool:
        answer = agent_post(app, host, f"{call.id}/data?offset=0", data=b"abc", **OCTETS)
        assert answer.get_json() == {"committed": 3}
        assert db.session.scalar(select(func.count()).select_from(RpcChunk)) == 0
        assert spool.take(0) == b"abc"
    # Once the download is gone, the next chunk goes to the database as before.
    answer = agent_post(app, host, f"{call.id}/data?offset=3", data=b"def", **OCTETS)
    assert answer.get_json() == {"committed": 6}
    assert rpc.take_chunks(call.id, 3) == [b"def"]
    db.session.expire_all()
    assert db.session.get(RpcCall, call.id).bytes_committed == 6
