"""The ticker: one leader among processes, taken over when the leader dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from app import ticker
from app.config import PROJECT_ROOT, load_config
from tests.conftest import POSTGRES_URL

CONTENDER = """
import os, sys, threading
from app import create_app, ticker

data_dir, url, log_path = sys.argv[1:4]
app = create_app({
    "RM_DATA_DIR": data_dir,
    "RM_SECRET_KEY_FILE": os.path.join(data_dir, "secret.key"),
    "SQLALCHEMY_DATABASE_URI": url,
})

def recorded_tick(box, now, **options):
    ticker.tick(box, now, **options)
    with open(log_path, "a") as log:
        log.write("tick\\n")

ticker.run(app, threading.Event(), interval=0.1, tick_function=recorded_tick)
"""


def _ticks(path: Path) -> int:
    return path.read_text().count("tick") if path.exists() else 0


def _wait_for(condition, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def contenders(app_factory, tmp_path):
    app = app_factory()  # migrates the database the contenders share
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    started = []

    def start(name):
        log_path = tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path), url, str(log_path)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process, log_path

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _exactly_one_leads_and_the_other_takes_over(start):
    first, first_log = start("first")
    assert _wait_for(lambda: _ticks(first_log) >= 2), "the first process never led"
    second, second_log = start("second")
    time.sleep(2.0)  # the second process competes for 20 ticks
    assert _ticks(second_log) == 0
    assert first.poll() is None and second.poll() is None
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    assert _wait_for(lambda: _ticks(second_log) >= 2), "the second process never took over"


def test_two_processes_on_sqlite_elect_one_leader(contenders):
    _exactly_one_leads_and_the_other_takes_over(contenders)


@pytest.mark.skipif(not POSTGRES_URL, reason="needs RM_TEST_DATABASE_URL")
def test_two_processes_on_postgresql_elect_one_leader(contenders):
    _exactly_one_leads_and_the_other_takes_over(contenders)


def test_file_leadership_is_exclusive_and_released(tmp_path):
    path = tmp_path / "ticker.lock"
    one, two = ticker.FileLeadership(path), ticker.FileLeadership(path)
    assert one.acquire() and one.acquire()  # holding it stays leading
    assert not two.acquire()
    one.release()
    assert two.acquire()
    two.release()


def test_a_failing_tick_does_not_stop_the_loop(app, caplog):
    stop = threading.Event()
    calls = []

    def flaky(box, now, **options):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        stop.set()

    ticker.run(app, stop, interval=0.01, tick_function=flaky)
    assert len(calls) == 2
    assert "the tick failed" in caplog.text


def test_tick_with_nothing_to_do_returns_no_jobs(app):
    now = datetime(2026, 3, 2, tzinfo=timezone.utc)
    assert ticker.tick(app.extensions["secretbox"], now) == []


def test_ticker_settings(monkeypatch):
    config = load_config({})
    assert (config["RM_TICKER_SECONDS"], config["RM_TICKER_ENABLED"]) == (30, True)
    assert load_config({"RM_TICKER_ENABLED": "false"})["RM_TICKER_ENABLED"] is False


def test_ticker_does_not_start_when_disabled(app):
    app.config["RM_TICKER_ENABLED"] = False
    assert ticker.start(app) is None
