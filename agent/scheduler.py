"""Fires the applied schedules on the agent's own clock (docs/protocol.md, "Firing").

Each enabled schedule's newest handled cron slot (``last_fire_at``) is kept in
``schedule_state.json`` and written *before* the schedule's jobs start, so a restart never
fires the same slot twice; ``fired_at`` is when it really last fired, for ``status`` (a
skipped missed run, or a schedule seen for the first time, moves ``last_fire_at`` only).
A slot is on time when it is the first one since the last fire and at most
``ON_TIME_SECONDS`` old; anything else (the agent was stopped, the host slept) is a missed
run: ``run_once`` fires once now, ``skip`` only moves the last fire time on. A schedule seen
for the first time (or whose cron changed, or that was re-enabled) starts from now: it never
fires for the past.
"""

import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from croniter import croniter

from agent.paths import atomic_write_json, read_json
from agent.schedules import Schedule, ScheduleSet

ON_TIME_SECONDS = 300.0
TICK_SECONDS = 30.0  # re-read the clock at least this often (suspend, clock changes)

Clock = Callable[[], datetime]
FireCallback = Callable[[ScheduleSet, Schedule, datetime], None]
log = logging.getLogger(__name__)


def local_now() -> datetime:
    """Now, as an aware datetime in the host's local time zone (cron is local time)."""
    return datetime.now().astimezone()


def latest_slot(cron: str, now: datetime) -> datetime:
    """The newest time at or before ``now`` that ``cron`` matches."""
    # croniter's get_prev excludes its start: start just after the current minute.
    start = now.replace(second=0, microsecond=0) + timedelta(seconds=1)
    return croniter(cron, start).get_prev(datetime)


def next_slot(cron: str, after: datetime) -> datetime:
    return croniter(cron, after).get_next(datetime)


class Scheduler:
    def __init__(
        self,
        state_path: Path,
        fire: FireCallback,
        now: Clock = local_now,
        tick_seconds: float = TICK_SECONDS,
    ):
        self.state_path = state_path
        self.fire = fire
        self.now = now
        self.tick_seconds = tick_seconds
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._set: Optional[ScheduleSet] = None
        self._started = False
        loaded = read_json(state_path, default={})
        self._state: Dict[str, Dict[str, Any]] = loaded if isinstance(loaded, dict) else {}

    # -- the applied set ---------------------------------------------------------------

    def apply(self, schedule_set: Optional[ScheduleSet]) -> None:
        """Use ``schedule_set`` from now on (new schedules start from now)."""
        with self._lock:
            self._set = schedule_set
            self._sync_state(self.now())
        self.wake()

    @property
    def started(self) -> bool:
        """The first tick (the one that applies the missed-run policy) has happened."""
        with self._lock:
            return self._started

    def wake(self) -> None:
        """Look at the clock now (a new set, or a test stepped its clock)."""
        self._wake.set()

    def last_fires(self) -> Dict[str, Optional[str]]:
        """schedule id → when it really last fired (ISO 8601; ``None``: never), for ``status``."""
        with self._lock:
            return {key: entry.get("fired_at") for key, entry in self._state.items()}

    def _sync_state(self, now: datetime) -> None:
        state: Dict[str, Dict[str, Any]] = {}
        for schedule in self._set.schedules if self._set else []:
            key = str(schedule.id)
            entry = self._state.get(key) or {}
            fired = {"fired_at": entry["fired_at"]} if entry.get("fired_at") else {}
            if not schedule.enabled:
                # Only the real fire time is kept: re-enabling starts from now.
                if fired:
                    state[key] = fired
                continue
            if entry.get("cron") != schedule.cron or not _time(entry):
                entry = {"cron": schedule.cron, "last_fire_at": now.isoformat(), **fired}
            state[key] = entry
        if state != self._state:
            self._state = state
            self._save()

    def _save(self) -> None:
        atomic_write_json(self.state_path, self._state)

    # -- the clock ---------------------------------------------------------------------

    def tick(self) -> List[int]:
        """Fire what is due now; returns the ids of the schedules that fired."""
        with self._lock:
            now = self.now()
            self._sync_state(now)
            starting, self._started = not self._started, True
            due = []
            for schedule in self._set.schedules if self._set else []:
                entry = self._state.get(str(schedule.id))
                if entry is None or not schedule.enabled:
                    continue
                fired_at = self._due(schedule, entry, now, starting)
                if fired_at is not None:
                    due.append((schedule, fired_at))
            schedule_set = self._set
        for schedule, fired_at in due:
            log.info("schedule %r fires (%s)", schedule.name, fired_at.isoformat())
            assert schedule_set is not None
            try:
                self.fire(schedule_set, schedule, fired_at)
            except Exception:
                log.exception("schedule %r: could not start its backups", schedule.name)
        return [schedule.id for schedule, _ in due]

    def _due(
        self, schedule: Schedule, entry: Dict[str, Any], now: datetime, starting: bool
    ) -> Optional[datetime]:
        """When the schedule fires now (its slot, or now for a missed run); else ``None``."""
        last = _time(entry)
        assert last is not None
        slot = latest_slot(schedule.cron, now)
        if slot <= last:
            return None
        late = (now - slot).total_seconds() > ON_TIME_SECONDS
        missed = starting or late or next_slot(schedule.cron, last) < slot
        fired_at: Optional[datetime] = slot
        if missed and schedule.missed_policy == "run_once":
            log.info("schedule %r missed a run: running it once now", schedule.name)
            fired_at = now
        elif missed:
            log.info("schedule %r missed a run: skipped (missed_policy skip)", schedule.name)
            fired_at = None
        entry["last_fire_at"] = slot.isoformat()
        if fired_at is not None:
            entry["fired_at"] = fired_at.isoformat()
        self._save()  # before the jobs start: a restart never fires this slot again
        return fired_at

    def seconds_to_next(self) -> float:
        """How long the thread may sleep: until the next slot, at most ``tick_seconds``."""
        with self._lock:
            now = self.now()
            waits = [self.tick_seconds]
            for schedule in self._set.schedules if self._set else []:
                if schedule.enabled:
                    waits.append((next_slot(schedule.cron, now) - now).total_seconds() + 0.05)
        return max(0.0, min(waits))

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set (the first tick applies the missed-run policy)."""
        while not stop.is_set():
            self._wake.clear()
            self.tick()
            self._wake.wait(self.seconds_to_next())


def _time(entry: Dict[str, Any]) -> Optional[datetime]:
    try:
        moment = datetime.fromisoformat(str(entry.get("last_fire_at")))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
