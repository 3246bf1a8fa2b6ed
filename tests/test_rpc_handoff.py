"""A download's chunk handed straight from the upload to the download in the same process
(app/rpc_handoff.py): order, one chunk at a time, withdrawal to the database."""

from __future__ import annotations

import threading
import time

from app.rpc_handoff import Readers


def test_a_chunk_is_taken_only_where_the_download_stands():
    readers = Readers()
    with readers.reading("c1") as reader:
        assert readers.get("c1") is reader
        # Bytes 0..3 still wait in the database: an upload at 4 goes there too.
        assert reader.offer(4, b"efgh", lambda: None, timeout=0.05) is False
        reader.advance(4)  # the download read them from the database
        taken = []
        woken = threading.Event()

        def upload():
            taken.append(reader.offer(4, b"efgh", woken.set, timeout=5))

        thread = threading.Thread(target=upload)
        thread.start()
        assert woken.wait(5)
        assert reader.take() == b"efgh" and reader.position == 8
        thread.join(5)
        assert taken == [True]
        assert reader.take() is None
    assert readers.get("c1") is None


def test_a_chunk_nobody_takes_in_time_is_withdrawn_for_the_database():
    readers = Readers()
    with readers.reading("c2") as reader:
        started = time.monotonic()
        assert reader.offer(0, b"abc", lambda: None, timeout=0.2) is False
        assert time.monotonic() - started >= 0.2
        assert reader.take() is None and reader.position == 0  # withdrawn: nothing taken
    assert reader.offer(0, b"abc", lambda: None, timeout=0.05) is False  # closed


def test_one_chunk_waits_at_a_time():
    readers = Readers()
    with readers.reading("c3") as reader:
        results = []
        first = threading.Thread(
            target=lambda: results.append(reader.offer(0, b"a", lambda: None, timeout=1))
        )
        first.start()
        time.sleep(0.1)
        assert reader.offer(0, b"a", lambda: None, timeout=0.05) is False  # one waits already
        assert reader.take() == b"a"
        first.join(5)
        assert results == [True]


def test_a_chunk_waiting_when_the_download_ends_is_not_taken():
    readers = Readers()
    results = []
    with readers.reading("c4") as reader:
        waiting = threading.Thread(
            target=lambda: results.append(reader.offer(0, b"a", lambda: None, timeout=5))
        )
        waiting.start()
        time.sleep(0.1)
    started = time.monotonic()
    waiting.join(5)
    assert results == [False]  # the upload stores it (or learns the download is closed)
    assert time.monotonic() - started < 2  # told at once, not after the timeout
