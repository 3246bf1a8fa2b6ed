"""The live job page in a real browser (headless Chromium) against a real server, a real
agent and real restic: while a throttled backup uploads after reading every file the page
says "uploading" instead of sitting at 100 %, the duration ticks every second, and it stops
at the final value when the job ends.

Skipped without playwright (the ``screenshots`` extra) or /usr/bin/chromium, unless
RM_REQUIRE_BROWSER=1; skipped without restic unless RM_REQUIRE_RESTIC=1.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from datetime import datetime

import pytest

from tests.e2e.processes import AgentProcess, Api, require_restic, wait_until

CHROMIUM = "/usr/bin/chromium"
REPO_PASSWORD = "e2e-Browser-Repo-Password-4d1"
ADMIN_PASSWORD = "admin password for the browser e2e"
TERMINAL = ("succeeded", "warning", "failed", "cancelled", "lost")


def require_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not shutil.which(CHROMIUM):
        if os.environ.get("RM_REQUIRE_BROWSER") == "1":
            pytest.fail("playwright and /usr/bin/chromium are needed (RM_REQUIRE_BROWSER=1)")
        pytest.skip("playwright or /usr/bin/chromium is missing")
    return sync_playwright


def seconds(duration: str) -> int:
    """'1 min 5 s so far' → 65 (the page's words back into a number)."""
    total = 0
    for amount, unit in re.findall(r"(\d+) (d|h|min|s)\b", duration):
        total += int(amount) * {"d": 86400, "h": 3600, "min": 60, "s": 1}[unit]
    return total


@pytest.fixture
def server(start_server):
    return start_server(RM_POLL_WAIT_SECONDS="10", RM_LOG_FLUSH_SECONDS="1")


def test_a_running_backup_ticks_and_says_it_is_uploading(server, tmp_path):
    require_restic()
    sync_playwright = require_browser()
    api = Api(server, server.admin_token(password=ADMIN_PASSWORD))
    data = tmp_path / "data"
    data.mkdir()
    for number in range(3):  # read in a second; uploaded at 2 MiB/s for about 12 s
        (data / f"part{number}.bin").write_bytes(os.urandom(8_000_000))
    enrollment = api.post(
        "/enrollment-tokens",
        {
            "hostname": "browser-1",
            "repo_url": str(tmp_path / "repo"),
            "repo_password": REPO_PASSWORD,
            "paths": [str(data)],
        },
    )
    agent = AgentProcess(tmp_path / "agent-home", tmp_path / "agent.log")
    agent.enroll(server.url, enrollment["token"])
    host_id = api.get("/hosts").json()["items"][0]["id"]
    agent.start()
    try:
        api.wait_repo_ready(host_id)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server.url}/login")
            page.fill("#username", "admin")
            page.fill("#password", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()

            job_id = api.run(host_id, "backup", {"limit_upload_kib": 2048})
            page.goto(f"{server.url}/jobs/{job_id}")

            def text(selector: str) -> str | None:
                found = page.query_selector(selector)
                return found.text_content() if found else None

            def uploading():
                if text("#job-status") != "running":
                    return None
                return text('[data-progress="percent_text"]') == "uploading"

            wait_until(uploading, 60, "the page to say uploading", interval=0.2)
            assert text('[data-progress="files"]') == "all 3 files read"
            assert text('[data-progress="bytes"]') == "22.9 MiB"
            assert page.is_visible('[data-progress="phase"]')
            assert "%" not in (text("#job-progress") or "")

            first = text("#job-duration")
            time.sleep(2.2)  # no reload, no new event needed: the page counts by itself
            second = text("#job-duration")
            assert first.endswith(" so far") and second.endswith(" so far"), (first, second)
            assert seconds(second) >= seconds(first) + 2, (first, second)

            wait_until(lambda: text("#job-status") in TERMINAL, 120, "the backup to end")
            wait_until(
                lambda: not (text("#job-duration") or " so far").endswith(" so far"),
                10,
                "the final duration",
            )
            assert text("#job-status") == "succeeded"
            final = text("#job-duration")
            job = api.get(f"/jobs/{job_id}").json()
            assert final and not page.is_visible("#job-progress")
            time.sleep(1.5)
            assert text("#job-duration") == final  # stopped at the final value
            assert abs(seconds(final) - seconds_between(job)) <= 1
            browser.close()
    finally:
        agent.kill()


def seconds_between(job: dict) -> float:
    started = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
    return (finished - started).total_seconds()
