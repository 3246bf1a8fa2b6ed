"""A download's bytes handed from the agent's upload to the browser's request directly,
when both are in this process (docs/protocol.md, "rpc.dump").

The database is the transport (``rpc_chunks``): it carries a chunk from any worker or
server to the download streaming in another. When the download streams in *this* process
and has read everything before the chunk, the upload hands the bytes to it instead and
answers the agent only once the download has taken them; the database then records only
the count (``bytes_committed``). Nothing is held in memory that the database would have
kept: a chunk the download does not take within ``TAKE_SECONDS`` goes to the database as
before, and the download and the upload share the process's fate anyway (the browser's
request dies with it). One chunk waits per download at most.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Optional

from flask import current_app

TAKE_SECONDS = 5.0  # the download reads slowly: the chunk goes to the database instead


class Reader:
    """One download streaming in this process: its position and at most one offered chunk."""

    def __init__(self):
        self.position = 0  # bytes this download has taken (from either path)
        self._lock = threading.Lock()
        self._offered: Optional[tuple[int, bytes]] = None
        self._decided = threading.Event()  # taken or closed (gevent's once it patched threading)
        self.closed = False

    def advance(self, taken: int) -> None:
        with self._lock:
            self.position += taken

    def take(self) -> Optional[bytes]:
        """The offered chunk if it starts where this download stands (then it is taken)."""
        with self._lock:
            if self._offered is None or self._offered[0] != self.position:
                return None
            data = self._offered[1]
            self._offered = None
            self.position += len(data)
        self._decided.set()
        return data

    def offer(self, offset: int, data: bytes, wake, timeout: float) -> bool:
        """True once the download has taken ``data``; False (withdrawn) if it stands
        elsewhere, has a chunk waiting already, is closed or does not take it in time."""
        with self._lock:
            if self.closed or self._offered is not None or self.position != offset:
                return False
            self._offered = (offset, data)
            self._decided.clear()
        wake()
        self._decided.wait(timeout)
        with self._lock:
            if self._offered is not None and self._offered[0] == offset:
                self._offered = None  # withdrawn: it goes to the database
                return False
            # Taken, or dropped by close(): only a take moves the position past it.
            return self.position >= offset + len(data)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._offered = None
        self._decided.set()  # a waiting offer learns at once that nobody takes it


class Readers:
    """The downloads streaming in this process, by call id."""

    def __init__(self):
        self._lock = threading.Lock()
        self._readers: dict[str, Reader] = {}

    @contextlib.contextmanager
    def reading(self, call_id: str) -> Iterator[Reader]:
        reader = Reader()
        with self._lock:
            self._readers[call_id] = reader
        try:
            yield reader
        finally:
            reader.close()
            with self._lock:
                if self._readers.get(call_id) is reader:
                    del self._readers[call_id]

    def get(self, call_id: str) -> Optional[Reader]:
        with self._lock:
            return self._readers.get(call_id)


def readers() -> Readers:
    """This app's registry (one per process and app)."""
    return current_app.extensions.setdefault("rpc_readers", Readers())
