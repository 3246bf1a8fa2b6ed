"""What the real-restic test modules share: finding restic, and running it directly.

Each module sets ``pytestmark = needs_restic()``: without restic the module is skipped,
unless ``RM_REQUIRE_RESTIC=1`` (CI), where a missing restic is a failure.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RESTIC = shutil.which("restic")


def needs_restic():
    if RESTIC is not None:
        return []
    if os.environ.get("RM_REQUIRE_RESTIC") == "1":
        pytest.fail("restic is not installed but RM_REQUIRE_RESTIC=1", pytrace=False)
    return pytest.mark.skip(reason="restic is not installed (set RM_REQUIRE_RESTIC=1 to fail)")


def run_restic(repo: Path, password: str, *args: str) -> bytes:
    """restic run directly (not through the agent) on ``repo``; its stdout."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo.parent),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": password,
        "RESTIC_CACHE_DIR": str(repo.parent / "direct-cache"),
    }
    result = subprocess.run(
        [RESTIC, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True
    )
    return result.stdout


class RunnerJobs:
    """Jobs through the agent's real Runner on a real repository; ``run`` waits for the end."""

    def __init__(self, root: Path, credentials, **runner_options):
        from agent.runner import Runner
        from agent.spool import Spool

        self.spool = Spool(root / "spool", max_bytes=10**8)
        self.runner = Runner(self.spool, credentials, cache_dir=root / "cache", **runner_options)
        self.next_id = 1

    def start(self, kind, params=None):
        job_id, self.next_id = self.next_id, self.next_id + 1
        self.runner.prepare(job_id, "a")
        assert self.runner.start(job_id, "a", kind, params or {})
        return job_id

    def run(self, kind, params=None, timeout=120):
        job_id = self.start(kind, params)
        assert self.runner.wait_idle(timeout)
        return self.result(job_id)

    def result(self, job_id):
        events = [event for event in self.spool.pending_events() if event["job_id"] == job_id]
        batch = self.spool.job(job_id).pending_batch(max_records=100_000)
        return Result(events, [record["text"] for record in batch[1]] if batch else [])

    def progress(self, job_id):
        return [
            event["data"]
            for event in self.spool.pending_events()
            if event["job_id"] == job_id and event["type"] == "job.progress"
        ]


class Result:
    """A finished job's events and log texts, as the agent spooled them."""

    def __init__(self, events, texts):
        self.events = events
        self.texts = texts

    def of(self, event_type):
        return [event["data"] for event in self.events if event["type"] == event_type]

    @property
    def finished(self):
        (data,) = self.of("job.finished")
        return data

    @property
    def restic_calls(self):
        return [text for text in self.texts if text.startswith("$ ")]
