"""Backoff: full jitter between 1 s and 60 s, Retry-After honoured, reset on success."""

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from agent.backoff import Backoff, parse_retry_after, start_delay


def test_ceilings_double_from_one_second_to_sixty():
    backoff = Backoff(uniform=lambda low, high: high)  # always the top of the range
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_full_jitter_stays_within_bounds():
    backoff = Backoff(uniform=random.Random(4).uniform)
    for attempt in range(1, 40):
        delay = backoff.next_delay()
        assert 0 <= delay <= min(60, 2 ** (attempt - 1))


def test_retry_after_is_a_floor_but_bounded():
    backoff = Backoff(uniform=lambda low, high: low)
    assert backoff.next_delay(retry_after=7) == 7
    assert backoff.next_delay(retry_after=10**6) == 600  # a proxy cannot park us for days
    assert backoff.next_delay(retry_after=None) == 0


def test_max_delay_for_failures_retrying_cannot_fix():
    backoff = Backoff()
    assert backoff.max_delay() == 60
    assert backoff.ceiling() == 60


def test_parse_retry_after_seconds_and_dates():
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 11, 25, 20, 0, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(days=1), usegmt=True), now=now) == 0


def test_start_delay_is_random_up_to_five_seconds_and_can_be_disabled(monkeypatch):
    monkeypatch.delenv("RM_AGENT_START_DELAY", raising=False)
    assert start_delay(uniform=lambda low, high: high) == 5
    monkeypatch.setenv("RM_AGENT_START_DELAY", "0")
    assert start_delay(uniform=lambda low, high: high) == 0
    monkeypatch.setenv("RM_AGENT_START_DELAY", "2")
    assert 0 <= start_delay() <= 2
