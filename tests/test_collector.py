"""The worker's collector settings (app/collector.py)."""

from __future__ import annotations

import gc
import threading

import pytest

from app import collector


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_freezes_the_loaded_objects_and_leaves_full_collections_to_the_clock(restored_gc):
    young, _, _ = gc.get_threshold()
    thread = collector.tune(full_collection_seconds=3600)
    assert gc.get_freeze_count() > 10_000  # the test run's modules, pytest's own objects
    # The middle generation after every 3rd young collection (short pauses), not CPython's 10th.
    assert gc.get_threshold() == (young, 3, collector._NEVER_BY_COUNT)
    assert thread.daemon and thread.is_alive() and thread.name == "gc"


def test_the_clock_runs_full_collections(monkeypatch):
    calls = []
    stop = threading.Event()

    def collect(*args):
        calls.append(args)
        if len(calls) >= 2:
            stop.set()
        return 0

    monkeypatch.setattr(collector.gc, "collect", collect)
    thread = threading.Thread(target=collector.collect_every, args=(0.01, stop), daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert calls == [(), ()]  # gc.collect() with no generation: a full collection
