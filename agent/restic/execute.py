"""The ONLY place the agent starts a process.

restic runs with stdin closed (otherwise it waits for a password on stdin), a fresh
environment built by :mod:`agent.restic.environment`, and both output streams read line by
line on their own threads (a full pipe would block restic). Every line is masked before it
goes anywhere.
"""

import collections
import contextlib
import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Deque, Dict, List, Optional, Sequence

from agent.restic.environment import Masker
from agent.restic.errors import ResticNotInstalled

GRACE_SECONDS = 10.0
TAIL_LINES = 20
_READ_CHUNK = 64 * 1024

LineHandler = Callable[[str, str], None]  # (stream, text)
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    exit_code: Optional[int]
    stderr_tail: List[str] = field(default_factory=list)
    cancelled: bool = False  # we asked it to stop (SIGINT, maybe SIGKILL after the grace)
    killed: bool = False


def run(
    argv: Sequence[str],
    env: Dict[str, str],
    on_line: Optional[LineHandler] = None,
    cancel: Optional[threading.Event] = None,
    masker: Optional[Masker] = None,
    grace_seconds: float = GRACE_SECONDS,
    cwd: Optional[str] = None,
) -> Outcome:
    """Run ``argv`` to completion; ``cancel`` set → SIGINT, SIGKILL after ``grace_seconds``."""
    mask = masker or Masker([])
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            close_fds=True,
        )
    except FileNotFoundError:
        raise ResticNotInstalled(f"{argv[0]} is not installed (or not on PATH)") from None
    except PermissionError:
        raise ResticNotInstalled(f"{argv[0]} cannot be executed (permission denied)") from None
    stderr_tail: Deque[str] = collections.deque(maxlen=TAIL_LINES)
    readers = [
        threading.Thread(
            target=_pump,
            args=(process.stdout, "stdout", on_line, mask, None),
            name="restic-stdout",
            daemon=True,
        ),
        threading.Thread(
            target=_pump,
            args=(process.stderr, "stderr", on_line, mask, stderr_tail),
            name="restic-stderr",
            daemon=True,
        ),
    ]
    for reader in readers:
        reader.start()
    outcome = Outcome(exit_code=None)
    interrupted_at: Optional[float] = None
    while True:
        try:
            outcome.exit_code = process.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        if cancel is not None and cancel.is_set() and interrupted_at is None:
            outcome.cancelled = True
            interrupted_at = time.monotonic()
            _signal(process, signal.SIGINT)
        elif (
            interrupted_at is not None
            and not outcome.killed
            and time.monotonic() - interrupted_at > grace_seconds
        ):
            log.warning("restic ignored SIGINT for %.0f s: killing it", grace_seconds)
            outcome.killed = True
            _signal(process, signal.SIGKILL)
    for reader in readers:
        reader.join(timeout=5)
    outcome.stderr_tail = list(stderr_tail)
    return outcome


def _signal(process: subprocess.Popen, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal_number)


def _pump(
    pipe: IO[bytes],
    stream: str,
    on_line: Optional[LineHandler],
    mask: Masker,
    tail: Optional[Deque[str]],
) -> None:
    with pipe:
        while True:
            chunk = pipe.readline(_READ_CHUNK)
            if not chunk:
                return
            text = mask(chunk.decode("utf-8", errors="replace").rstrip("\r\n"))
            if tail is not None:
                tail.append(text)
            if on_line is None:
                continue
            try:
                on_line(stream, text)
            except Exception:  # a reporting failure never stops restic
                log.exception("could not record a line of restic output")
