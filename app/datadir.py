"""Owner-only modes for the data directory, the SQLite database and the secret key.

They hold the sealed repository credentials and the key that opens them, so whatever starts
the server (``serve``, run-server.sh, a unit, a container, a test) gets 0700 and 0600, and a
looser mode left by an older version or a careless copy is tightened with a log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_directory(path: Path, logger: logging.Logger) -> None:
    """Create ``path`` 0700 (with its parents), or tighten it when group or others may enter."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIRECTORY)
    _tighten(path, PRIVATE_DIRECTORY, logger)


def private_file(path: Path, logger: logging.Logger, *, create: bool = False) -> None:
    """Tighten ``path`` to 0600 when group or others may read it; ``create`` makes it empty
    and 0600 first when it does not exist (an empty file is an empty SQLite database)."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    if path.exists():
        _tighten(path, PRIVATE_FILE, logger)


def private_sqlite_database(path: Path, logger: logging.Logger) -> None:
    """The database file 0600 (created so before SQLite would create it 0644) and the
    journal files SQLite keeps next to it."""
    private_file(path, logger, create=True)
    for suffix in SQLITE_COMPANIONS:
        private_file(path.with_name(path.name + suffix), logger)


def _tighten(path: Path, wanted: int, logger: logging.Logger) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        path.chmod(mode & wanted)
    except OSError as error:
        logger.warning(
            "%s is mode %04o (group or others may read it) and cannot be tightened: %s",
            path,
            mode,
            error.strerror,
        )
        return
    logger.warning("tightened %s from mode %04o to %04o", path, mode, mode & wanted)
