"""Exponential backoff with full jitter (1 s → 60 s), honouring Retry-After."""

import os
import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Optional

BASE_SECONDS = 1.0
CAP_SECONDS = 60.0
# A Retry-After beyond this is treated as this: a proxy must not park the agent for hours.
MAX_RETRY_AFTER_SECONDS = 600.0
START_DELAY_ENV = "RM_AGENT_START_DELAY"
DEFAULT_START_DELAY_SECONDS = 5.0


class Backoff:
    """``next_delay()`` after each failure, ``reset()`` after a success.

    Full jitter (AWS architecture blog): the n-th delay is uniform in
    [0, min(cap, base·2ⁿ⁻¹)], so a fleet that lost its server does not return in lockstep.
    """

    def __init__(
        self,
        base: float = BASE_SECONDS,
        cap: float = CAP_SECONDS,
        uniform: Callable[[float, float], float] = random.uniform,
    ):
        self.base = base
        self.cap = cap
        self.failures = 0
        self._uniform = uniform

    def ceiling(self) -> float:
        """The upper bound of the next delay (without Retry-After)."""
        return min(self.cap, self.base * (2 ** max(self.failures - 1, 0)))

    def next_delay(self, retry_after: Optional[float] = None) -> float:
        self.failures = min(self.failures + 1, 64)
        delay = self._uniform(0.0, self.ceiling())
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay

    def max_delay(self) -> float:
        """Jump straight to the cap (used for failures retrying cannot fix soon, e.g. 401)."""
        self.failures = 64
        return self.cap

    def reset(self) -> None:
        self.failures = 0


def parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (moment - now).total_seconds())


def start_delay(uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Random delay before the first request, so a fleet does not start in lockstep.

    ``RM_AGENT_START_DELAY`` sets the maximum in seconds (0 disables it, e.g. in tests).
    """
    raw = os.environ.get(START_DELAY_ENV)
    try:
        maximum = DEFAULT_START_DELAY_SECONDS if raw is None else max(0.0, float(raw))
    except ValueError:
        maximum = DEFAULT_START_DELAY_SECONDS
    return uniform(0.0, maximum) if maximum > 0 else 0.0
