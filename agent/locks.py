"""The agent's own turn-taking on a repository, so its jobs never meet each other's restic
locks (restic-cli.md §4 "Stale locks", "Lock type per command").

restic lets backups share a repository (non-exclusive locks) but refuses forget, prune
and check while any other lock exists, and refuses a backup while one of those runs. The
agent therefore lets its jobs in per repository, first come first served: a job that needs
the repository to itself waits for everything before it; a shared job (backup, restore)
waits only for exclusive jobs before it, so backups still run side by side.
"""

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from agent.jobspool import JobKey

SHARED = "shared"
EXCLUSIVE = "exclusive"

# restic's lock per job kind; the kinds not listed run with --no-lock (or no lock).
# init and unlock take no restic lock, but must not run in the middle of other work.
LOCK_MODES: Dict[str, str] = {
    "backup": SHARED,
    "restore": SHARED,
    "forget": EXCLUSIVE,
    "prune": EXCLUSIVE,
    "check": EXCLUSIVE,
    "unlock": EXCLUSIVE,
    "init": EXCLUSIVE,
}
POLL_SECONDS = 0.5  # how often a waiting job looks at its cancel flag


@dataclass(eq=False)  # identity: two turns of the same job are still two turns
class Turn:
    """One job's place in a repository's line."""

    repository: str
    job_id: Callable[[], JobKey]  # asked when shown: a run may be registered meanwhile
    kind: str
    mode: str
    granted: bool = False

    def describe(self) -> str:
        return f"{self.kind} job {self.job_id()}"


Announce = Callable[[Sequence[Turn]], None]


class RepositoryLocks:
    """Per repository (keyed by its location, never shown): who runs, who waits."""

    def __init__(self, poll_seconds: float = POLL_SECONDS):
        self.poll_seconds = poll_seconds
        self._condition = threading.Condition()
        self._lines: Dict[str, List[Turn]] = {}

    def acquire(
        self,
        turn: Turn,
        cancel: Optional[threading.Event] = None,
        on_wait: Optional[Announce] = None,
    ) -> bool:
        """Wait for ``turn``; True once it is granted, False when ``cancel`` was set first.

        ``on_wait`` hears the turns it waits for, each time that list changes.
        """
        with self._condition:
            line = self._lines.setdefault(turn.repository, [])
            line.append(turn)
            announced: Optional[List[Turn]] = None
            try:
                while True:
                    blockers = _blockers(line, turn)
                    if not blockers:
                        turn.granted = True
                        return True
                    if cancel is not None and cancel.is_set():
                        self._leave(turn)
                        return False
                    if on_wait is not None and blockers != announced:
                        on_wait(blockers)
                        announced = blockers
                    self._condition.wait(self.poll_seconds)
            except BaseException:  # a failing on_wait must not block the line for good
                self._leave(turn)
                raise

    def release(self, turn: Turn) -> None:
        with self._condition:
            self._leave(turn)

    def holders(self, repository: str) -> List[Turn]:
        """The turns granted now (tests, status)."""
        with self._condition:
            return [turn for turn in self._lines.get(repository, []) if turn.granted]

    def _leave(self, turn: Turn) -> None:
        line = self._lines.get(turn.repository, [])
        if turn in line:
            line.remove(turn)  # by identity (eq=False)
        if not line:
            self._lines.pop(turn.repository, None)
        self._condition.notify_all()


def _blockers(line: List[Turn], turn: Turn) -> List[Turn]:
    """The turns before ``turn`` it must wait for."""
    ahead = line[: line.index(turn)]
    if turn.mode == EXCLUSIVE:
        return ahead
    return [other for other in ahead if other.mode == EXCLUSIVE]


def waiting_line(turn: Turn, blockers: Sequence[Turn]) -> str:
    """What the waiting job's log says, e.g. ``waiting for backup job 12 to finish: prune
    needs the repository to itself``."""
    names = ", ".join(blocker.describe() for blocker in blockers)
    if turn.mode == EXCLUSIVE:
        why = f"{turn.kind} needs the repository to itself"
    elif len(blockers) == 1:
        why = "it needs the repository to itself"
    else:
        why = "they need the repository to themselves"
    return f"waiting for {names} to finish: {why}"
