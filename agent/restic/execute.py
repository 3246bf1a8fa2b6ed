"""The ONLY place the agent starts a process: restic, and the backup hooks (:mod:`agent.hooks`).

:func:`run` is the seam everything else goes through (and tests replace), in three steps:
:func:`start` the process with stdin closed (otherwise restic waits for a password on
stdin) and a fresh environment (:mod:`agent.repository`); :func:`supervise` it until it
exits, stopping it on a cancel or a timeout; :class:`Output` collects both output streams,
read line by line on their own threads (a full pipe would block restic). Every line is
masked before it goes anywhere. Commands that print one JSON document (snapshots, forget,
stats) have their stdout captured whole instead of handed out line by line, and ``dump``
has its stdout handed out as raw chunks (the bytes of a file: neither split into lines
nor masked).
"""

import collections
import contextlib
import logging
import os
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
MAX_LINE_BYTES = 1024 * 1024  # a longer "line" is handed out in pieces
MAX_CAPTURE_BYTES = 256 * 1024 * 1024
_READ_CHUNK = 64 * 1024

LineHandler = Callable[[str, str], None]  # (stream, text)
ChunkHandler = Callable[[bytes], None]
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    exit_code: Optional[int]
    stderr_tail: List[str] = field(default_factory=list)
    cancelled: bool = False  # we asked it to stop (SIGINT, maybe SIGKILL after the grace)
    killed: bool = False
    timed_out: bool = False  # stopped like a cancel because ``timeout`` ran out
    stdout: Optional[str] = None  # with ``capture_stdout``: everything restic printed there
    stdout_complete: bool = True  # False when the capture hit MAX_CAPTURE_BYTES

    @property
    def signalled(self) -> bool:
        """restic died of a signal (our SIGKILL, or someone else's)."""
        return self.killed or (self.exit_code is not None and self.exit_code < 0)


def run(
    argv: Sequence[str],
    env: Dict[str, str],
    on_line: Optional[LineHandler] = None,
    cancel: Optional[threading.Event] = None,
    masker: Optional[Masker] = None,
    grace_seconds: float = GRACE_SECONDS,
    cwd: Optional[str] = None,
    capture_stdout: bool = False,
    timeout: Optional[float] = None,
    process_group: bool = False,
    on_stdout_chunk: Optional[ChunkHandler] = None,
) -> Outcome:
    """Run ``argv`` to completion; ``cancel`` set → SIGINT, SIGKILL after ``grace_seconds``.

    ``capture_stdout``: stdout goes to ``Outcome.stdout`` instead of ``on_line``.
    ``on_stdout_chunk``: stdout is binary and handed out in chunks of at most 64 KiB, as
    they arrive; a slow handler slows restic down (the pipe fills), and ``run`` returns
    only after the handler has seen the last chunk.
    ``timeout``: past it, restic is stopped as if cancelled (``Outcome.timed_out``).
    ``process_group``: run in a new session and signal the whole group (a shell's children
    stop with it).
    """
    if cancel is not None and cancel.is_set():
        return Outcome(exit_code=None, cancelled=True)  # never start what is already cancelled
    process = start(argv, env, cwd, process_group)
    output = Output(process, on_line, masker or Masker([]), capture_stdout, on_stdout_chunk)
    outcome = supervise(process, output, cancel, timeout, grace_seconds, process_group)
    output.collect(outcome)
    return outcome


# -- start -------------------------------------------------------------------------------


def start(
    argv: Sequence[str], env: Dict[str, str], cwd: Optional[str], process_group: bool
) -> subprocess.Popen:
    """The process, stdin closed and both output streams piped; ResticNotInstalled when
    ``argv[0]`` cannot be run."""
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            close_fds=True,
            start_new_session=process_group,
        )
    except FileNotFoundError:
        raise ResticNotInstalled(f"{argv[0]} is not installed (or not on PATH)") from None
    except PermissionError:
        raise ResticNotInstalled(f"{argv[0]} cannot be executed (permission denied)") from None


# -- supervise ---------------------------------------------------------------------------


def supervise(
    process: subprocess.Popen,
    output: "Output",
    cancel: Optional[threading.Event],
    timeout: Optional[float],
    grace_seconds: float,
    process_group: bool,
) -> Outcome:
    """Wait for the exit; a cancel or the timeout sends SIGINT, the grace's end SIGKILL."""
    outcome = Outcome(exit_code=None)
    started_at = time.monotonic()
    interrupted_at: Optional[float] = None
    while True:
        # Both pipes at EOF means restic is exiting: look at once rather than at the next
        # tick (Popen.wait(timeout) sleeps in steps of up to 50 ms).
        output.join_until(0.2)
        try:
            outcome.exit_code = process.wait(timeout=0 if output.open() else 0.2)
            return outcome
        except subprocess.TimeoutExpired:
            pass
        cancelled = cancel is not None and cancel.is_set()
        timed_out = timeout is not None and time.monotonic() - started_at > timeout
        if interrupted_at is None and (cancelled or timed_out):
            outcome.cancelled, outcome.timed_out = cancelled, not cancelled
            interrupted_at = time.monotonic()
            _signal(process, signal.SIGINT, process_group)
        elif (
            interrupted_at is not None
            and not outcome.killed
            and time.monotonic() - interrupted_at > grace_seconds
        ):
            log.warning("restic ignored SIGINT for %.0f s: killing it", grace_seconds)
            outcome.killed = True
            _signal(process, signal.SIGKILL, process_group)


def _signal(process: subprocess.Popen, signal_number: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, signal_number)
        else:
            process.send_signal(signal_number)


# -- collect -----------------------------------------------------------------------------


class Output:
    """Both output streams read on their own threads (a full pipe would block restic):
    lines masked and handed out, the last lines of stderr kept, stdout captured whole or
    handed out in raw chunks when asked."""

    def __init__(
        self,
        process: subprocess.Popen,
        on_line: Optional[LineHandler],
        mask: Masker,
        capture_stdout: bool,
        on_stdout_chunk: Optional[ChunkHandler],
    ):
        self.mask = mask
        self.stderr_tail: Deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.captured = _Capture() if capture_stdout else None
        self.chunked = on_stdout_chunk is not None
        if on_stdout_chunk is not None:
            self.stdout_reader = threading.Thread(
                target=_pump_chunks,
                args=(process.stdout, on_stdout_chunk),
                name="restic-stdout",
                daemon=True,
            )
        else:
            self.stdout_reader = threading.Thread(
                target=_pump,
                args=(process.stdout, "stdout", on_line, mask, None, self.captured),
                name="restic-stdout",
                daemon=True,
            )
        self.readers = [
            self.stdout_reader,
            threading.Thread(
                target=_pump,
                args=(process.stderr, "stderr", on_line, mask, self.stderr_tail, None),
                name="restic-stderr",
                daemon=True,
            ),
        ]
        for reader in self.readers:
            reader.start()

    def open(self) -> bool:
        """A pipe is still open (restic may still print)."""
        return any(reader.is_alive() for reader in self.readers)

    def join_until(self, seconds: float) -> None:
        """Wait up to ``seconds`` for both pipes to close (returns as soon as they do)."""
        deadline = time.monotonic() + seconds
        for reader in self.readers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            reader.join(remaining)

    def collect(self, outcome: Outcome) -> None:
        """After the exit: the stderr tail and the captured stdout into ``outcome``."""
        if self.chunked:
            self.stdout_reader.join()  # the caller's last chunk must be handled before we return
        for reader in self.readers:
            reader.join(timeout=5)
        outcome.stderr_tail = list(self.stderr_tail)
        if self.captured is not None:
            text = b"".join(self.captured.chunks).decode("utf-8", errors="replace")
            outcome.stdout = self.mask(text)
            outcome.stdout_complete = not self.captured.overflowed


class _Capture:
    """stdout kept whole (bounded), for commands that print one JSON document."""

    def __init__(self):
        self.chunks: List[bytes] = []
        self.size = 0
        self.overflowed = False

    def add(self, chunk: bytes) -> None:
        if self.size + len(chunk) > MAX_CAPTURE_BYTES:
            self.overflowed = True
            return
        self.chunks.append(chunk)
        self.size += len(chunk)


def _pump(
    pipe: IO[bytes],
    stream: str,
    on_line: Optional[LineHandler],
    mask: Masker,
    tail: Optional[Deque[str]],
    capture: Optional[_Capture],
) -> None:
    pending = b""
    with pipe:
        while True:
            chunk = pipe.readline(_READ_CHUNK)
            if capture is not None:
                if not chunk:
                    return
                capture.add(chunk)
                continue
            if chunk:
                pending += chunk
                if not chunk.endswith(b"\n") and len(pending) < MAX_LINE_BYTES:
                    continue  # a long line arrives in several reads: hand it out whole
            if pending:
                _deliver(pending, stream, on_line, mask, tail)
                pending = b""
            if not chunk:
                return  # EOF; a last line without newline (restic stopped) went out above


def _pump_chunks(pipe: IO[bytes], handler: ChunkHandler) -> None:
    """Binary stdout: every chunk to ``handler``; after a handler failure, drain and drop."""
    failed = False
    with pipe:
        while True:
            chunk = pipe.read1(_READ_CHUNK)  # type: ignore[attr-defined]
            if not chunk:
                return
            if failed:
                continue  # keep reading, so restic is never stuck on a full pipe
            try:
                handler(chunk)
            except Exception:
                log.exception("could not hand on restic's output; dropping the rest")
                failed = True


def _deliver(
    raw: bytes,
    stream: str,
    on_line: Optional[LineHandler],
    mask: Masker,
    tail: Optional[Deque[str]],
) -> None:
    # Masked after reassembly, so a secret split across two reads is still found.
    text = mask(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    if tail is not None:
        tail.append(text)
    if on_line is None:
        return
    try:
        on_line(stream, text)
    except Exception:  # a reporting failure never stops restic
        log.exception("could not record a line of restic output")
