"""ls, restore, dump and diff: exact argv, parsers fed with real 0.14 captures, the
restore_paths veto, the params checks, and the download stream (no real restic needed)."""

import hashlib
import os
import sys
import threading
import time

import pytest
from restic_samples import load

from agent import jobparams
from agent.actions.diff import describe_change, parent_directories
from agent.actions.restore import RestoreReporter, TargetWatcher, make_private_directory
from agent.client import Gap, Gone, RetryableError
from agent.config import ConfigError
from agent.paths import expand_home
from agent.restic import execute
from agent.restic.diff import diff_argv, read_diff_line
from agent.restic.dump import dump_argv
from agent.restic.ls import DirectoryListing, NodeIndex, SelectionSize, ls_argv, read_ls_line
from agent.restic.restore import (
    escape_pattern,
    ignored_error,
    read_stdout_line,
    restore_argv,
)
from agent.restore_policy import RestorePolicy, RestoreRefused
from agent.rpc import (
    MAX_CHUNK_BYTES,
    DumpStream,
    RpcRunner,
    chunk_bytes_for,
    chunks_in_flight_for,
    rpc_id_of,
)

SID = "39cddcb58e6e2e74cf4b0c439cc17c0e27c6d88972355872f04b25b17f777062"

# -- argv --------------------------------------------------------------------------------


def test_ls_argv():
    assert ls_argv("restic", SID, ["/srv"]) == ("restic", "--no-lock", "ls", "--json", SID, "/srv")
    assert ls_argv("/bin/restic", SID, ["/a", "/b"], recursive=True) == (
        "/bin/restic", "--no-lock", "ls", "--json", "--recursive", SID, "/a", "/b",
    )  # fmt: skip
    assert ls_argv("restic", SID) == ("restic", "--no-lock", "ls", "--json", SID)


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("/srv/a.txt", "/srv/a.txt"),
        ("/srv/a*b.txt", "/srv/a\\*b.txt"),
        ("/srv/[x].txt", "/srv/\\[x].txt"),
        ("/srv/q?.txt", "/srv/q\\?.txt"),
        ("/srv/b\\c", "/srv/b\\\\c"),
    ],
)
def test_include_patterns_are_escaped(path, pattern):
    assert escape_pattern(path) == pattern


def test_restore_argv_uses_json_from_016():
    assert restore_argv("restic", SID, "/t") == ("restic", "restore", SID, "--target", "/t")
    assert restore_argv("restic", SID, "/t", ["/srv/a*"], verify=True, version="0.14.0") == (
        "restic", "restore", SID, "--target", "/t", "--include", "/srv/a\\*", "--verify",
    )  # fmt: skip
    assert restore_argv("restic", SID, "/", ["/etc"], version="0.16.4") == (
        "restic", "restore", "--json", SID, "--target", "/", "--include", "/etc",
    )  # fmt: skip


def test_dump_and_diff_argv():
    assert dump_argv("restic", SID, "/etc/hosts") == (
        "restic", "--no-lock", "dump", SID, "/etc/hosts",
    )  # fmt: skip
    assert diff_argv("restic", "a" * 64, "b" * 64) == (
        "restic", "--no-lock", "diff", "--json", "a" * 64, "b" * 64,
    )  # fmt: skip


# -- ls ----------------------------------------------------------------------------------


def test_directory_listing_keeps_direct_children_only():
    listing = DirectoryListing("/srv/demo/data/", 10)
    for line in load("40_ls_json_latest.txt").stdout_lines:
        listing.feed(line)
    assert listing.snapshot["short_id"] == "da748df8"
    assert listing.found and listing.is_directory
    assert [item["name"] for item in listing.items] == [
        "a.txt", "big.bin", "empty", "emptyfile", "link", "sub",
    ]  # fmt: skip
    big = listing.items[1]
    assert big == {
        "name": "big.bin",
        "type": "file",
        "path": "/srv/demo/data/big.bin",
        "size": 3000000,
        "mtime": "2026-11-25T19:44:21.471221932Z",
        "mode": 420,
        "permissions": "-rw-r--r--",
    }
    assert listing.items[2]["size"] is None and listing.items[3]["size"] == 0
    assert listing.truncated is False


def test_directory_listing_of_a_file_a_missing_path_and_truncation():
    lines = load("41_ls_json_subdir.txt").stdout_lines
    file_listing = DirectoryListing("/srv/demo/data/sub/b.txt", 10)
    missing = DirectoryListing("/srv/demo/nope", 10)
    short = DirectoryListing("/srv/demo/data/sub", 0)
    for line in lines:
        for listing in (file_listing, missing, short):
            listing.feed(line)
    assert file_listing.found and not file_listing.is_directory
    assert not missing.found and missing.snapshot is not None
    assert short.items == [] and short.truncated is True


def test_ls_lines_key_on_message_type_or_struct_type():
    assert read_ls_line('{"message_type":"node","struct_type":"node","path":"/a"}')[0] == "node"
    assert read_ls_line('{"message_type":"snapshot","id":"x"}')[0] == "snapshot"
    assert read_ls_line("Ignoring ...") is None
    assert read_ls_line('{"struct_type":"node"}') is None  # no path


def test_selection_size_counts_files_and_bytes():
    size = SelectionSize()
    for line in load("40_ls_json_latest.txt").stdout_lines:
        size.feed(line)
    assert (size.files, size.bytes) == (4, 20 + 3000000 + 0 + 4)


# -- restore -----------------------------------------------------------------------------


def test_restore_text_lines_of_014_are_kept():
    lines = load("73_restore_verify.txt").stdout_lines
    assert [read_stdout_line(line)[0] for line in lines] == ["text", "text", "text"]
    assert read_stdout_line(lines[0])[1].startswith("restoring <Snapshot 25504e59")


def test_restore_json_lines_of_016():
    status = (
        '{"message_type":"status","seconds_elapsed":3,"percent_done":0.5,"total_files":4,'
        '"files_restored":2,"total_bytes":1000,"bytes_restored":500}'
    )
    assert read_stdout_line(status) == (
        "progress",
        {
            "percent": 50.0,
            "files_done": 2,
            "total_files": 4,
            "bytes_done": 500,
            "total_bytes": 1000,
            "seconds_elapsed": 3,
        },
    )
    summary = '{"message_type":"summary","total_files":4,"files_restored":4,"total_bytes":9}'
    assert read_stdout_line(summary) == (
        "summary",
        {"files_restored": 4, "total_files": 4, "bytes_restored": 0, "total_bytes": 9},
    )
    assert read_stdout_line('{"message_type":"status","percent_do') == ("skip", None)


class _Job:
    def __init__(self):
        self.logs, self.events = [], []

    def log(self, text, stream="agent"):
        self.logs.append((stream, text))

    def emit(self, event_type, data):
        self.events.append((event_type, data))


def test_restore_errors_of_a_damaged_repository_become_one_readable_error():
    reporter = RestoreReporter(_Job(), None)
    for line in load("E61_restore_from_damaged_repo.txt").stderr_lines:
        reporter.stderr_line(line)
    assert reporter.error_count == 2
    assert reporter.error_summary() == (
        "restic could not restore 2 items: /srv/demo/data/big.bin: StreamPack: open "
        "/srv/demo/repo/data/6e/6e40a27f64fe8d4d311b2fb45d79418bb265dac87c0f20ac10e23aecbb65b50a"
        ": no such file or directory; /srv/demo/data/big.bin: UtimesNano: no such file or "
        "directory"
    )
    assert ("stderr", "Fatal: There were 2 errors") in reporter.job.logs


def test_restore_json_error_lines_of_0171():
    line = (
        '{"message_type":"error","error":{"message":"permission denied"},'
        '"during":"restore","item":"/srv/x"}'
    )
    assert ignored_error(line) == "/srv/x: permission denied"
    assert ignored_error("restoring <Snapshot …> to /t") is None


def test_progress_from_the_target_directory(tmp_path):
    size = SelectionSize()
    size.files, size.bytes = 4, 1000
    watcher = TargetWatcher(_Job(), str(tmp_path), size)
    assert watcher.progress(2, 250)["percent"] == 25.0
    assert watcher.progress(9, 5000)["files_done"] == 4  # never beyond the totals
    size.bytes = 0
    assert watcher.progress(1, 0)["percent"] == 25.0


def test_the_target_is_created_0700_with_its_parents(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    make_private_directory(str(target))
    for directory in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert directory.stat().st_mode & 0o777 == 0o700
    make_private_directory(str(target))  # existing: fine


# -- diff --------------------------------------------------------------------------------


def test_diff_lines():
    lines = load("50_diff_json.txt").stdout_lines
    read = [read_diff_line(line) for line in lines]
    assert read[0] == ("change", {"path": "/srv/demo/data/a.txt", "modifier": "M"})
    kind, stats = read[3]
    assert kind == "statistics"
    assert stats["changed_files"] == 1
    assert stats["added"] == {
        "files": 1, "dirs": 0, "others": 0, "data_blobs": 2, "tree_blobs": 5, "bytes": 3531,
    }  # fmt: skip
    metadata = [read_diff_line(line) for line in load("52_diff_json_metadata.txt").stdout_lines]
    assert metadata[0] == ("change", {"path": "/tmp/", "modifier": "U"})


def test_diff_sizes_come_from_the_parent_directories():
    changes = [
        {"path": "/d/a.txt", "modifier": "M"},
        {"path": "/d/sub/b.txt", "modifier": "-"},
        {"path": "/e/c.txt", "modifier": "+"},
        {"path": "/e/new/", "modifier": "+"},
    ]
    assert parent_directories(changes, in_a=True, limit=200) == ["/d", "/d/sub"]
    assert parent_directories(changes, in_a=False, limit=200) == ["/d", "/e"]
    assert parent_directories(changes, in_a=False, limit=1) == ["/d"]
    before = {"/d/a.txt": {"type": "file", "size": 5}, "/d/sub/b.txt": {"type": "file"}}
    after = {"/d/a.txt": {"type": "file", "size": 7}}
    described = [describe_change(change, before, after) for change in changes]
    assert [(d["type"], d["size_before"], d["size_after"]) for d in described] == [
        ("file", 5, 7),
        ("file", 0, None),
        (None, None, None),  # its directory was not listed
        ("dir", None, None),
    ]
    index = NodeIndex(["/srv/demo/data/sub/b.txt"])
    for line in load("41_ls_json_subdir.txt").stdout_lines:
        index.feed(line)
    assert index.nodes["/srv/demo/data/sub/b.txt"]["size"] == 12


# -- params and the veto -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"target": "/t"}, "snapshot_id: must be a full snapshot id (64 hex digits)"),
        ({"snapshot_id": "abc", "target": "/t"}, "snapshot_id: must be a full snapshot id"),
        ({"snapshot_id": SID}, "target: a directory to restore into is needed"),
        ({"snapshot_id": SID, "target": "rel/dir"}, "must be absolute or start with $HOME"),
        ({"snapshot_id": SID, "target": "~bob/x"}, "must be absolute or start with $HOME"),
        ({"snapshot_id": SID, "target": "/t", "include": ["etc"]}, "include: 'etc' is not"),
        ({"snapshot_id": SID, "target": "/t", "include": "/etc"}, "include: must be a list"),
        ({"snapshot_id": SID, "target": "/t", "verify": "yes"}, "verify: must be true or false"),
        ({"snapshot_id": SID, "target": "/t", "in_place": True}, "in-place restore writes to /"),
    ],
)
def test_restore_params_are_checked(params, message):
    with pytest.raises(jobparams.InvalidParams) as error:
        jobparams.restore_params(params)
    assert message in str(error.value)


def test_restore_params_accept_home_targets_and_in_place():
    params = jobparams.restore_params({"snapshot_id": SID, "target": "$HOME/rm-restore/3"})
    assert params.target == "$HOME/rm-restore/3" and params.includes == []
    in_place = jobparams.restore_params({"snapshot_id": SID, "in_place": True, "target": "/"})
    assert in_place.target == "/" and in_place.in_place
    assert jobparams.diff_params({"snapshot_a": SID[::-1], "snapshot_b": SID}).snapshot_b == SID
    with pytest.raises(jobparams.InvalidParams, match="snapshot_b"):
        jobparams.diff_params({"snapshot_a": SID, "snapshot_b": SID[:8]})


def test_home_expansion():
    environ = {"HOME": "/var/lib/restic-manager-agent"}
    for spelling in ("$HOME/r/1", "${HOME}/r/1", "~/r/1"):
        assert expand_home(spelling, environ) == "/var/lib/restic-manager-agent/r/1"
    assert expand_home("~", environ) == "/var/lib/restic-manager-agent"
    assert expand_home("$HOMEX/r", environ) == "$HOMEX/r"
    with pytest.raises(ValueError, match="HOME is not set"):
        expand_home("~/r", {})


def test_restore_policy(tmp_path):
    environ = {"HOME": str(tmp_path)}
    policy = RestorePolicy(" $HOME/rm-restore , /srv/restore,", environ)
    assert policy.allowed == [f"{tmp_path}/rm-restore", "/srv/restore"]
    policy.check([f"{tmp_path}/rm-restore/12", "/srv/restore", "/srv/restore/a/b"])
    for outside in ("/srv/restore2", f"{tmp_path}/rm-restoreX", "/"):
        with pytest.raises(RestoreRefused) as refused:
            policy.check([outside])
        assert str(refused.value) == (
            f"restore refused by this host: {outside} is outside restore_paths "
            f"({tmp_path}/rm-restore, /srv/restore) in agent.conf"
        )
    RestorePolicy("*").check(["/", "/etc"])
    RestorePolicy("/srv, *").check(["/etc"])
    with pytest.raises(RestoreRefused, match="restores are disabled"):
        RestorePolicy("  ").check(["/srv"])
    with pytest.raises(ConfigError, match="'srv' is not an absolute path"):
        RestorePolicy("srv")


def test_restore_policy_resolves_symlinks(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "out").symlink_to(tmp_path)
    (tmp_path / "alias").symlink_to(allowed)
    policy = RestorePolicy(str(allowed))
    policy.check([f"{allowed}/new/dir", f"{tmp_path}/alias/x"])
    with pytest.raises(RestoreRefused):
        policy.check([f"{allowed}/out/x"])


# -- rpc ---------------------------------------------------------------------------------


def test_rpc_ids():
    assert rpc_id_of({"rpc_id": "a" * 32}) == "a" * 32
    for payload in ({}, {"rpc_id": "../x"}, {"rpc_id": "a" * 31}):
        with pytest.raises(ValueError):
            rpc_id_of(payload)


class _Server:
    """``send(offset, data)`` of a DumpStream, answering like the server."""

    def __init__(self, answers=None):
        self.received = bytearray()
        self.calls = []
        self.answers = list(answers or [])

    def __call__(self, offset, data):
        self.calls.append((offset, len(data)))
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
        self.received[offset:] = data
        return {"committed": len(self.received)}


def _finished(stream, exit_code=0):
    return stream.finish(execute.Outcome(exit_code=exit_code))


def test_dump_stream_chunks_and_hashes():
    data = os.urandom(2500)
    server = _Server()
    stream = DumpStream(server, limit=len(data), chunk_bytes=1000)
    for start in range(0, len(data), 300):
        stream.feed(data[start : start + 300])
    assert _finished(stream) == {
        "ok": True,
        "bytes": 2500,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert server.calls == [(0, 1000), (1000, 1000), (2000, 500)]
    assert bytes(server.received) == data


def test_dump_stream_stops_on_410_and_sends_nothing_more():
    server = _Server([None, Gone(410, "rpc_closed", "gone")])
    stream = DumpStream(server, limit=5000, chunk_bytes=1000)
    stream.feed(b"x" * 1000)
    stream.feed(b"x" * 1000)
    assert stream.stop.is_set() and stream.closed
    stream.feed(b"x" * 1000)
    assert _finished(stream, exit_code=130) is None
    assert len(server.calls) == 2


def test_dump_stream_resumes_after_a_gap_and_gives_up_when_it_cannot():
    server = _Server([Gap(416, "rpc_gap", "gap", {"committed": 400})])
    stream = DumpStream(server, limit=5000, chunk_bytes=1000)
    stream.feed(b"y" * 1000)
    # The rest of the chunk goes again at once, from the server's count.
    assert server.calls[:2] == [(0, 1000), (400, 600)]
    assert not stream.stop.is_set()
    lost = DumpStream(_Server([Gap(416, "rpc_gap", "gap", {"committed": 0})]), 5000, 1000)
    lost.feed(b"z" * 1000)
    assert lost.broken and _finished(lost) is None


def test_dump_stream_refuses_more_bytes_than_the_size_and_reports_restic_failures():
    stream = DumpStream(_Server(), limit=10, chunk_bytes=1000)
    stream.feed(b"0123456789A")
    assert stream.stop.is_set()
    assert _finished(stream)["error"] == "too_large"
    failed = DumpStream(_Server(), limit=10, chunk_bytes=1000)
    failed.feed(b"abc")
    ending = failed.finish(execute.Outcome(exit_code=1, stderr_tail=["Fatal: boom"]))
    assert ending == {"ok": False, "error": "restic_failed", "message": "Fatal: boom"}
    unreachable = DumpStream(_Server([RetryableError("down")]), limit=10, chunk_bytes=2)
    unreachable.feed(b"abc")
    assert unreachable.broken and _finished(unreachable) is None


def test_execute_hands_binary_stdout_out_in_chunks():
    payload = bytes(range(256)) * 1000
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1000)"
    chunks = []
    outcome = execute.run(
        (sys.executable, "-c", script), dict(os.environ), on_stdout_chunk=chunks.append
    )
    assert outcome.exit_code == 0
    assert b"".join(chunks) == payload
    assert all(len(chunk) <= 64 * 1024 for chunk in chunks)


def test_dump_stream_with_a_sender_thread_keeps_order_and_bounds_the_queue():
    data = os.urandom(10_500)
    release = threading.Event()
    server = _Server()

    def slow(offset, chunk):
        release.wait(5)
        return server(offset, chunk)

    stream = DumpStream(slow, limit=len(data), chunk_bytes=1000, queued_chunks=2)
    fed = threading.Thread(
        target=lambda: [stream.feed(data[i : i + 700]) for i in range(0, len(data), 700)]
    )
    fed.start()
    time.sleep(0.3)
    # One chunk being sent, two queued: restic's output waits for room.
    assert fed.is_alive() and stream.received < len(data)
    release.set()
    fed.join(5)
    assert _finished(stream) == {
        "ok": True,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert [offset for offset, _ in server.calls] == list(range(0, 10_001, 1000))
    assert bytes(server.received) == data


def test_dump_stream_with_a_sender_thread_stops_on_410_and_on_restic_failure():
    server = _Server([None, Gone(410, "rpc_closed", "gone")])
    stream = DumpStream(server, limit=50_000, chunk_bytes=1000, queued_chunks=2)
    for _ in range(10):
        stream.feed(b"x" * 1000)
    assert _finished(stream, exit_code=130) is None
    assert stream.closed and len(server.calls) == 2
    failed = DumpStream(_Server(), limit=50_000, chunk_bytes=1000, queued_chunks=2)
    failed.feed(b"y" * 2500)
    ending = failed.finish(execute.Outcome(exit_code=1, stderr_tail=["Fatal: boom"]))
    assert ending == {"ok": False, "error": "restic_failed", "message": "Fatal: boom"}


class _InTurnServer:
    """The server's side of chunks in flight: a chunk that arrives before the one in front
    of it waits for its turn (``turn_seconds``), then answers 416 with the count."""

    def __init__(self, turn_seconds=2.0, lose=()):
        self.received = bytearray()
        self.calls = []
        self.turn = threading.Condition()
        self.in_flight = self.most_in_flight = 0
        self.turn_seconds = turn_seconds
        self.lose = set(lose)  # offsets whose first post is "lost" (a 5xx after retries)

    def __call__(self, offset, data):
        with self.turn:
            self.calls.append((offset, len(data)))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.01)  # the bytes on their way
            with self.turn:
                if offset in self.lose:
                    self.lose.discard(offset)
                    self.turn.wait(0.2)  # the chunk after it arrives and waits meanwhile
                    raise RetryableError("lost on the way", status=502)
                self.turn.wait_for(lambda: len(self.received) == offset, self.turn_seconds)
                if len(self.received) != offset:
                    raise Gap(416, "rpc_gap", "gap", {"committed": len(self.received)})
                self.received += data
                self.turn.notify_all()
                return {"committed": len(self.received)}
        finally:
            with self.turn:
                self.in_flight -= 1


def _feed_all(stream, data, piece=700):
    for start in range(0, len(data), piece):
        stream.feed(data[start : start + piece])


def test_two_chunks_in_flight_arrive_in_order_and_intact():
    data = os.urandom(20_500)
    server = _InTurnServer()
    stream = DumpStream(server, len(data), chunk_bytes=1000, queued_chunks=2, in_flight=2)
    _feed_all(stream, data)
    assert _finished(stream) == {
        "ok": True,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert bytes(server.received) == data
    assert server.most_in_flight == 2
    assert sorted(server.calls) == [
        (offset, min(1000, len(data) - offset)) for offset in range(0, len(data), 1000)
    ]


def test_a_chunk_whose_turn_never_came_is_sent_again_on_its_own():
    """The first chunk is lost (its post fails); the one sent ahead of it waits, gets 416
    with the server's count, and goes again after the first was sent again."""
    data = os.urandom(5_000)
    server = _InTurnServer(turn_seconds=0.1, lose={0})
    runner = RpcRunner(lambda: None, lambda: None, retry_delays=(0.01,), busy_give_up=5)
    stream = DumpStream(
        lambda offset, chunk: runner._call(lambda: server(offset, chunk)),
        len(data),
        chunk_bytes=1000,
        queued_chunks=2,
        in_flight=2,
    )
    _feed_all(stream, data)
    assert _finished(stream)["ok"] is True
    assert bytes(server.received) == data
    assert server.calls.count((1000, 1000)) == 2  # refused while waiting, then taken


def test_two_in_flight_stop_on_410_and_on_a_count_that_makes_no_sense():
    server = _Server([None, Gone(410, "rpc_closed", "gone")])
    stream = DumpStream(server, 50_000, chunk_bytes=1000, queued_chunks=2, in_flight=2)
    _feed_all(stream, b"x" * 10_000)
    assert _finished(stream, exit_code=130) is None
    assert stream.closed and len(server.calls) <= 4  # two in flight, nothing after the 410
    liar = DumpStream(
        lambda offset, chunk: {"committed": offset + 5 * len(chunk)},
        50_000,
        chunk_bytes=1000,
        queued_chunks=2,
        in_flight=2,
    )
    _feed_all(liar, b"y" * 5_000)
    assert _finished(liar) is None and liar.broken


def test_chunks_in_flight_come_from_the_server_within_the_agents_cap():
    assert chunks_in_flight_for({"ok": True}) == 1  # an older server: one at a time
    assert chunks_in_flight_for({"chunks_in_flight": 2}) == 2
    assert chunks_in_flight_for({"chunks_in_flight": 64}) == 2
    for wrong in (0, -1, True, "2", None, 1.5):
        assert chunks_in_flight_for({"chunks_in_flight": wrong}) == 1
    # Without a sender thread (queued_chunks=0) chunks go one at a time whatever is offered.
    assert DumpStream(_Server(), 10, chunk_bytes=2, in_flight=2).in_flight == 1


def test_the_chunk_size_comes_from_the_server_within_the_agents_cap():
    assert chunk_bytes_for({"ok": True}) == 1024 * 1024  # an older server
    assert chunk_bytes_for({"max_chunk_bytes": 4 << 20}) == 4 << 20
    assert chunk_bytes_for({"max_chunk_bytes": 1 << 30}) == MAX_CHUNK_BYTES
    for wrong in (0, -1, True, "8388608", None):
        assert chunk_bytes_for({"max_chunk_bytes": wrong}) == 1024 * 1024


def test_a_busy_server_is_waited_out_not_counted_as_a_failure():
    runner = RpcRunner(lambda: None, lambda: None, retry_delays=(0.01,), busy_give_up=5)
    answers = [RetryableError("busy", 0.01, 429)] * 5 + [{"committed": 3}]
    calls = []

    def request():
        calls.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert runner._call(request) == {"committed": 3} and len(calls) == 6
    down = [RetryableError("down", None, 503)] * 3
    with pytest.raises(RetryableError):
        runner._call(lambda: (_ for _ in ()).throw(down.pop(0)))
    impatient = RpcRunner(lambda: None, lambda: None, retry_delays=(), busy_give_up=0.1)
    with pytest.raises(RetryableError):
        impatient._call(lambda: (_ for _ in ()).throw(RetryableError("busy", 0.05, 429)))
