"""gunicorn hooks for `restic-manager serve` (loaded by file path with `gunicorn -c`).

gunicorn reads this file in the master process before it forks the workers. It must import
nothing but the standard library and gunicorn itself: the workers monkey-patch gevent first
(wsgi.py), and psycopg decides at import time whether it cooperates with gevent, so the
master must not have imported the application.

Two promises of `serve`:
- "listening" is printed once a worker has loaded the application, not before;
- a worker that cannot load the application stops the server, and the last line printed is
  that worker's error, not gunicorn's generic "Reason: Worker failed to boot."

The worker hands its error to the master through a small anonymous shared memory page
created here, before the fork (no files: the packaged unit runs with a read-only system).
"""

from __future__ import annotations

import mmap
import os
import struct
import sys

from gunicorn.glogging import Logger

_PAGE_SIZE = 4096
_LENGTH = struct.Struct("<I")
_boot_error = mmap.mmap(-1, _PAGE_SIZE)  # anonymous and shared: inherited by every worker


class AccessLogger(Logger):
    """gunicorn's logger without a line per idle long poll.

    Every agent polls every 25 s: 5,000 agents would write 200 access lines a second that
    say only "still there" (the host's last-seen time says that). A poll answered 204 (the
    hold ran out with nothing to deliver) is not logged unless RM_ACCESS_LOG_IDLE_POLLS=1;
    polls that deliver commands, fail, or are refused are logged as before.
    """

    def access(self, resp, req, environ, request_time):
        if not _LOG_IDLE_POLLS and _idle_poll(resp, environ):
            return
        super().access(resp, req, environ, request_time)


_LOG_IDLE_POLLS = os.environ.get("RM_ACCESS_LOG_IDLE_POLLS", "") in {"1", "true", "yes"}
_POLL_PATH = "/api/agent/v1/poll"


def _idle_poll(resp, environ) -> bool:
    status = str(getattr(resp, "status", ""))
    return status.startswith("204") and environ.get("PATH_INFO", "").endswith(_POLL_PATH)


logger_class = AccessLogger


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _remember_boot_error(error: BaseException) -> None:
    text = f"{type(error).__name__}: {error}".encode("utf-8", "replace")
    text = text[: _PAGE_SIZE - _LENGTH.size]
    _boot_error.seek(0)
    _boot_error.write(_LENGTH.pack(len(text)) + text)


def _boot_error_text() -> str | None:
    (length,) = _LENGTH.unpack(_boot_error[: _LENGTH.size])
    if not 0 < length <= _PAGE_SIZE - _LENGTH.size:
        return None
    start = _LENGTH.size
    return _boot_error[start : start + length].decode("utf-8", "replace")


def post_fork(server, worker):
    """Catch the worker's failure to load the application, for the master to print last."""
    load_wsgi = worker.load_wsgi

    def load_wsgi_remembering_errors():
        try:
            load_wsgi()
        except BaseException as error:
            _remember_boot_error(error)
            raise

    worker.load_wsgi = load_wsgi_remembering_errors


def post_worker_init(worker):
    """The first worker has loaded the application: now the server really serves."""
    if worker.age != 1:
        return  # a later or replacement worker: already said
    announcement = os.environ.get("RM_SERVE_ANNOUNCEMENT")
    if announcement:
        _say(announcement)


def on_exit(server):
    error = _boot_error_text()
    if error:
        _say(f"restic-manager could not start: {error}")
