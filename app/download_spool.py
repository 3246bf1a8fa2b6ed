"""A download's bytes passed between the workers of one machine through files, not the
database (docs/protocol.md, "rpc.dump"; docs/performance.md, "Snapshot file download").

The agent's upload may land in any worker, and the browser's download streams in one.
In the same process the upload hands its bytes over directly (app/rpc_handoff.py). In
another worker of the same server, going through ``rpc_chunks`` cost PostgreSQL an
8 MiB write, read and delete per chunk (TOASTed in 2 KiB pieces) and halved the speed.

So a download streaming here makes ``RM_DATA_DIR/downloads/<call id>/`` (0700) for as
long as it streams. An upload that finds that directory writes its chunk there as a file
named by its offset (written aside, then renamed: never read half-written), and the
database records only the count (``bytes_committed``). The download takes the file that
starts where it stands, then deletes it. An upload in another machine does not find the
directory (its data directory is its own) and stores the chunk in ``rpc_chunks`` as
before; servers that share one data directory share the files too. Anything left behind
by a process that died is removed after ``KEEP_SECONDS`` by the next download to start or
the leader's next tick (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from flask import current_app

from app import datadir

log = logging.getLogger("restic_manager.downloads")

KEEP_SECONDS = 3600.0  # a directory untouched this long belongs to a download long gone
_CALL_ID = re.compile(r"[0-9a-f]{32}")  # rpc_calls.id: uuid4().hex (matched whole)
_CHUNK_NAME = re.compile(r"[0-9]{1,20}")


def root() -> Path:
    return Path(current_app.config["RM_DATA_DIR"]) / "downloads"


def _directory(base: Path, call_id: str) -> Optional[Path]:
    return base / call_id if _CALL_ID.fullmatch(call_id) else None


class Spool:
    """The files of one download streaming in this process."""

    def __init__(self, directory: Path):
        self.directory = directory

    def take(self, offset: int) -> Optional[bytes]:
        """The chunk starting at ``offset``, removed; None while there is none."""
        path = self.directory / str(offset)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        return data


@contextlib.contextmanager
def reading(call_id: str) -> Iterator[Optional[Spool]]:
    """The spool of a download for as long as it streams (None when the directory cannot
    be made: the database carries every chunk then)."""
    base = root()
    directory = _directory(base, call_id)
    spool = None
    if directory is not None:
        try:
            datadir.private_directory(base, log)
            _sweep(base, time.time() - KEEP_SECONDS)
            directory.mkdir(mode=datadir.PRIVATE_DIRECTORY)
            spool = Spool(directory)
        except OSError as error:
            log.warning(
                "download %s: no spool directory, chunks go through the database: %s",
                call_id,
                error,
            )
    try:
        yield spool
    finally:
        if spool is not None:
            shutil.rmtree(directory, ignore_errors=True)


def put(call_id: str, offset: int, data: bytes) -> bool:
    """True once ``data`` waits as a file for the download streaming on this machine;
    False when no download streams here (or the file could not be written: the caller
    stores the chunk in the database instead)."""
    directory = _directory(root(), call_id)
    if directory is None or not directory.is_dir():
        return False
    final = directory / str(offset)
    aside = directory / f".{offset}.part"
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, datadir.PRIVATE_FILE)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(aside, final)
    except OSError:  # the download ended meanwhile, or the disk is full
        with contextlib.suppress(OSError):
            aside.unlink()
        return False
    return True


def unread_bytes(call_id: str) -> int:
    """Bytes waiting in files for the download streaming on this machine (0: none here)."""
    directory = _directory(root(), call_id)
    if directory is None:
        return 0
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if _CHUNK_NAME.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
    return total


def sweep() -> None:
    """Remove the directories of downloads whose process died (untouched for an hour)."""
    _sweep(root(), time.time() - KEEP_SECONDS)


def _sweep(base: Path, cutoff: float) -> None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
