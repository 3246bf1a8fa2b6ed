"""A backup's output turned into what people see: progress events and readable lines.

``status`` lines become ``job.progress`` events (at most one a second), per-file ``error``
lines on stderr become ``error: <path>: <reason>`` log lines, source paths restic skipped
because they do not exist are collected, and the ``summary`` is kept for the job's stats
and its one-line account at the end.
"""

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from agent.job import Job
from agent.restic.backup import read_stdout_line, skipped_source
from agent.restic.messages import file_error_text, json_object, stderr_text

PROGRESS_INTERVAL_SECONDS = 1.0


class Throttle:
    """``due()`` is true at most once per ``interval`` seconds."""

    def __init__(
        self,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.interval = interval
        self.clock = clock
        self._last: Optional[float] = None

    def due(self) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


class BackupReporter:
    """Receives ``backup --json`` output line by line (stdout and stderr threads)."""

    def __init__(self, job: Job, throttle: Optional[Throttle] = None, paths: Sequence[str] = ()):
        self.job = job
        self.throttle = throttle or Throttle()
        self.paths = list(paths)
        self.summary: Optional[Dict[str, Any]] = None
        self.error_count = 0  # per-file errors seen on stderr
        self._skipped: List[str] = []  # written by the stderr thread only

    def stdout_line(self, text: str) -> None:
        kind, value = read_stdout_line(text)
        if kind == "progress":
            value["error_count"] = max(value["error_count"], self.error_count)
            if self.throttle.due():
                self.job.emit("job.progress", value)
        elif kind == "summary":
            self.summary = value
        elif kind == "text":
            self.job.log(value, "stdout")

    def stderr_line(self, text: str) -> None:
        skipped = skipped_source(text, self.paths)
        if skipped is not None and skipped not in self._skipped:
            self._skipped.append(skipped)
        message = json_object(text)
        if message is not None and message.get("message_type") == "error":
            if skipped is None:  # a missing source is counted apart, not as a file error
                self.error_count += 1
            self.job.log(file_error_text(message), "stderr")
        else:
            self.job.log(stderr_text(text), "stderr")

    @property
    def missing_paths(self) -> List[str]:
        """The source paths restic skipped, in the order the job gave them."""
        skipped = self._skipped
        given = [path for path in self.paths if path in skipped]
        return given + [path for path in skipped if path not in given]

    def stats(self) -> Optional[Dict[str, Any]]:
        """The summary's stats with the error count and the missing paths (``None`` if
        restic printed no summary)."""
        if self.summary is None:
            return None
        return dict(self.summary, error_count=self.error_count, missing_paths=self.missing_paths)
