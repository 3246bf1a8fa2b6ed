"""Regenerate the README screenshots from a real, freshly seeded demo.

    .venv/bin/python tools/screenshots.py [--out docs/screenshots]

Needs the ``screenshots`` extra (``pip install -e '.[screenshots]'``: the server plus the
playwright Python package), ``restic`` on PATH and Debian's Chromium at /usr/bin/chromium
(``apt-get install chromium``; ``--chromium PATH`` for another one). Playwright is pointed
at that binary through ``executable_path``: this script never downloads a browser (do not
run ``playwright install``).

Nothing is faked: it starts ``restic-manager serve`` on a free 127.0.0.1 port with a
temporary data directory (SQLite), creates the administrator and a personal access token
with the CLI, enrolls five real agents (each with its own ``--home``; the host name comes
from its enrollment token) backing up generated files into local restic repositories, adds
source groups and schedules through the API, runs two rounds of real backups (the second
one of db-1's dumps fails, as a missing dump directory makes it), stops the laptop's agent
so that it shows as offline, and starts a bandwidth-capped backup so that one job is
running. Then headless Chromium signs in through the login form and photographs, at
1280x800:

    dashboard.png    the fleet overview
    host.png         a host page (status, snapshots, recent jobs)
    job.png          a finished backup with its log
    job-running.png  a backup in progress
    restore.png      the restore wizard with a snapshot picked and files ticked

Every process and temporary directory is removed at exit, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "docs" / "screenshots"
DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN = "admin"
UNTIL_READY_SECONDS = 60
OFFLINE_AFTER_SECONDS = 20
JOB_SECONDS = 90
# The running backup: ~48 MB of incompressible files uploaded at 512 KiB/s, so it is still
# running (about 90 s) when the last screenshot is taken and every page agrees on it.
RUNNING_GROUP = "artifacts"
RUNNING_LIMIT_KIB = 512

try:
    from tests.e2e.processes import AgentProcess, Api, ProcessError, Server, clean_env, wait_until
except ImportError:  # pragma: no cover - guidance for a half-installed checkout
    sys.exit("tools/screenshots.py needs the server extra: pip install -e '.[screenshots]'")


class DemoError(ProcessError):
    """Something in the demo did not go as planned; the message says what."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------


def stop_all(server: Server, agents: list[AgentProcess]) -> None:
    """Agents get SIGTERM; gunicorn gets SIGINT, its quick shutdown (SIGTERM would wait for
    the parked long polls). Whatever is left after a few seconds is killed."""
    for agent in agents:
        agent.signal(signal.SIGTERM)
    server.signal(signal.SIGINT)
    deadline = time.monotonic() + 5
    for child in [*agents, server]:
        if child.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        child.kill()


class DemoApi(Api):
    """``/api/v1`` with a personal access token, and the demo's two job helpers."""

    def backup(self, host_id: int, group: str, **params) -> int:
        return self.run(host_id, "backup", {"group": group, **params})

    def wait_jobs(self, job_ids: list[int]) -> list[dict]:
        def finished():
            jobs = [self.get(f"/jobs/{job_id}").json() for job_id in job_ids]
            return jobs if all(job["finished_at"] for job in jobs) else None

        return wait_until(finished, JOB_SECONDS, f"jobs {job_ids} to finish", interval=0.5)


# --- the demo's hosts and their files ----------------------------------------------------


@dataclass(eq=False)  # hashed by identity: jobs are keyed by (host, group)
class DemoHost:
    """One demo machine: its source groups (name → paths below its root) and files."""

    hostname: str
    groups: dict[str, list[str]]
    retention: dict
    schedule: tuple[str, str]  # (name, cron)
    populate: Callable[[Path, random.Random], None]
    change: Callable[[Path, random.Random], None]  # between the first and second backups
    leaves: bool = False  # its agent stops after the first backups (a laptop gone home)
    breaks: Optional[str] = None  # the group whose second backup must not succeed
    root: Path = field(default=Path())
    host_id: int = 0
    agent: Optional[AgentProcess] = None

    def paths(self, group: str) -> list[str]:
        return [str(self.root / relative) for relative in self.groups[group]]


def write(path: Path, content: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def seeded(seed: int) -> random.Random:
    """The same demo files on every run (names, sizes, contents): not for secrets."""
    return random.Random(seed)  # noqa: S311


def noise(rng: random.Random, low: int, high: int) -> bytes:
    """Incompressible bytes (photos, archives, dumps), reproducible from the seed."""
    return rng.randbytes(rng.randint(low, high))


WORDS = (
    "backup",
    "restore",
    "fleet",
    "retention",
    "snapshot",
    "weekly",
    "release",
    "notes",
    "migration",
    "upgrade",
    "postgres",
    "nginx",
    "caching",
    "monitoring",
    "alerts",
    "dashboard",
    "invoices",
    "roadmap",
    "security",
    "audit",
    "onboarding",
    "checklist",
    "kubernetes",
    "storage",
    "budget",
    "quarterly",
    "hiring",
    "design",
    "review",
)


def prose(rng: random.Random, sentences: int) -> str:
    return " ".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
        for _ in range(sentences)
    )


def populate_web(root: Path, rng: random.Random) -> None:
    site = root / "srv/www/example.org"
    for page in ("index", "about", "contact", "pricing", "privacy", "imprint"):
        write(site / f"{page}.html", f"<h1>{page.title()}</h1>\n<p>{prose(rng, 8)}</p>\n")
    for number in range(70):
        slug = "-".join(rng.sample(WORDS, 3))
        month = 1 + number % 12
        write(
            site / f"blog/2024/{month:02d}/{slug}/index.html",
            f"<article><h1>{slug}</h1><p>{prose(rng, 30)}</p></article>\n",
        )
    for number in range(90):
        write(site / f"assets/img/photo-{number:03d}.jpg", noise(rng, 4_000, 40_000))
    for name in ("main", "print", "blog", "forms"):
        write(site / f"assets/css/{name}.css", f"/* {name} */\n" + "body{margin:0}\n" * 200)
    for name in ("app", "search", "vendor"):
        write(site / f"assets/js/{name}.js", f"// {name}\n" + "console.log(1);\n" * 400)
    for number in range(12):
        write(site / f"downloads/whitepaper-{number + 1:02d}.pdf", noise(rng, 30_000, 90_000))
    nginx = root / "etc/nginx"
    write(nginx / "nginx.conf", "user www-data;\nworker_processes auto;\n" + prose(rng, 3))
    write(nginx / "mime.types", "types {\n  text/html html;\n}\n")
    for site_name in ("example.org", "shop.example.org", "status.example.org"):
        conf = f"server {{\n  server_name {site_name};\n  root /srv/www/{site_name};\n}}\n"
        write(nginx / f"sites-available/{site_name}.conf", conf)
        write(nginx / f"sites-enabled/{site_name}.conf", conf)
    for name in ("gzip", "security-headers", "ssl-params", "proxy"):
        write(nginx / f"conf.d/{name}.conf", f"# {name}\n" + prose(rng, 2))


def change_web(root: Path, rng: random.Random) -> None:
    post = root / "srv/www/example.org/blog/2024/12/year-in-review/index.html"
    write(post, f"<article><p>{prose(rng, 40)}</p></article>\n")
    write(root / "srv/www/example.org/assets/css/main.css", "body{margin:0;padding:0}\n" * 220)


def populate_db(root: Path, rng: random.Random) -> None:
    dumps = root / "var/backups/postgres"
    for database in ("app", "billing", "auth", "analytics"):
        for day in range(1, 8):
            write(
                dumps / f"{database}/{database}-2024-12-{day:02d}.sql.gz",
                noise(rng, 60_000, 200_000),
            )
    write(dumps / "globals.sql", "CREATE ROLE app;\nCREATE ROLE billing;\n")
    config = root / "etc/postgresql/15/main"
    write(config / "postgresql.conf", "shared_buffers = 2GB\nwork_mem = 64MB\n" + prose(rng, 4))
    write(
        config / "pg_hba.conf", "local all postgres peer\nhost all all 10.0.0.0/8 scram-sha-256\n"
    )
    write(config / "pg_ident.conf", "# MAPNAME SYSTEM-USERNAME PG-USERNAME\n")
    write(config / "conf.d/tuning.conf", "effective_cache_size = 6GB\n")
    write(config / "conf.d/logging.conf", "log_min_duration_statement = 500\n")


def change_db(root: Path, rng: random.Random) -> None:
    # The nightly dump job did not run: its directory is gone, so the next backup of the
    # "dumps" group fails, which is what the dashboard's problem markers are for.
    shutil.rmtree(root / "var/backups/postgres")
    write(root / "etc/postgresql/15/main/conf.d/tuning.conf", "effective_cache_size = 8GB\n")


# (file name pattern, how many) per team folder of the file server's share.
SHARE_FILES = {
    "engineering": (("rfc-{n:03d}-design.md", 30), ("incident-{n:03d}-postmortem.md", 20)),
    "finance": (
        ("annual-report-2023.pdf", 1),
        ("budget-2025-v{n}.xlsx", 3),
        ("expenses-2024-q{n}.ods", 4),
        ("invoice-2024-{n:04d}.pdf", 60),
    ),
    "hr": (("onboarding-checklist-{n:02d}.docx", 12), ("policy-{n:02d}.pdf", 20)),
    "marketing": (("campaign-{n:02d}-banner.png", 30), ("press-release-{n:02d}.docx", 25)),
}


def populate_files(root: Path, rng: random.Random) -> None:
    share = root / "srv/share"
    for team, patterns in SHARE_FILES.items():
        for pattern, count in patterns:
            for number in range(1, count + 1):
                name = pattern.format(n=number)
                binary = name.endswith((".pdf", ".png", ".xlsx", ".ods", ".docx"))
                content = noise(rng, 3_000, 30_000) if binary else prose(rng, 20) + "\n"
                write(share / team / name, content)
    for user in ("alice", "bob", "carol"):
        home = root / "home" / user
        write(home / ".bashrc", "export EDITOR=vim\nalias ll='ls -l'\n")
        write(home / ".profile", "# ~/.profile\n")
        for number in range(1, 16):
            write(home / f"Documents/notes-{number:02d}.txt", prose(rng, 12) + "\n")
        write(home / "Pictures/holiday.jpg", noise(rng, 50_000, 120_000))


def change_files(root: Path, rng: random.Random) -> None:
    write(root / "srv/share/finance/budget-2025-v4.xlsx", noise(rng, 3_000, 30_000))
    write(root / "home/alice/Documents/notes-16.txt", prose(rng, 12) + "\n")


def populate_ci(root: Path, rng: random.Random) -> None:
    runner = root / "etc/gitlab-runner"
    write(runner / "config.toml", 'concurrent = 4\n[[runners]]\n  name = "ci-1"\n')
    for number in range(1, 41):
        write(root / f"var/lib/ci/cache/job-{number:04d}/build.log", prose(rng, 40) + "\n")
    releases = root / "var/lib/ci/artifacts"
    for minor in range(4):
        for patch in range(12):
            write(releases / f"app-1.{minor}.{patch}.tar.gz", noise(rng, 1_000_000, 1_000_000))


def change_ci(root: Path, rng: random.Random) -> None:
    write(root / "var/lib/ci/cache/job-0041/build.log", prose(rng, 40) + "\n")


def populate_laptop(root: Path, rng: random.Random) -> None:
    home = root / "home/anna"
    for number in range(1, 41):
        write(home / f"Documents/meeting-notes-2024-{number:02d}.md", prose(rng, 15) + "\n")
    for name in ("thesis", "garden-planner", "dotfiles"):
        for number in range(1, 21):
            write(
                home / f"Projects/{name}/src/module_{number:02d}.py", f"# {name}\n{prose(rng, 6)}\n"
            )
    write(home / ".gitconfig", "[user]\n  name = Anna\n")


def demo_hosts() -> list[DemoHost]:
    return [
        DemoHost(
            "web-1",
            {"www": ["srv/www"], "nginx": ["etc/nginx"]},
            {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
            ("nightly", "30 2 * * *"),
            populate_web,
            change_web,
        ),
        DemoHost(
            "db-1",
            # "dumps" last: its failure is the host's latest result.
            {"config": ["etc/postgresql"], "dumps": ["var/backups/postgres"]},
            {"keep_daily": 14, "keep_monthly": 12},
            ("after-dump", "15 3 * * *"),
            populate_db,
            change_db,
            breaks="dumps",
        ),
        DemoHost(
            "files-1",
            {"shares": ["srv/share"], "home": ["home"]},
            {"keep_hourly": 24, "keep_daily": 30},
            ("hourly", "0 * * * *"),
            populate_files,
            change_files,
        ),
        DemoHost(
            "ci-1",
            {
                "config": ["etc/gitlab-runner", "var/lib/ci/cache"],
                "artifacts": ["var/lib/ci/artifacts"],
            },
            {"keep_last": 10},
            ("weekdays", "0 22 * * 1-5"),
            populate_ci,
            change_ci,
        ),
        DemoHost(
            "laptop-anna",
            {"home": ["home/anna"]},
            {"keep_daily": 7, "keep_weekly": 8},
            ("lunchtime", "0 12 * * 1-5"),
            populate_laptop,
            lambda root, rng: None,
            leaves=True,
        ),
    ]


# --- seeding -----------------------------------------------------------------------------


class Demo:
    """The server, the agents and what they did; ``seed()`` brings it all up."""

    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.server = Server(
            workspace,
            clean_env(
                RM_DATA_DIR=str(workspace / "server-data"),
                RM_LOG_FLUSH_SECONDS="1",
                # The laptop that goes away shows up as offline within the run.
                RM_POLL_WAIT_SECONDS="8",
                RM_OFFLINE_AFTER_SECONDS=str(OFFLINE_AFTER_SECONDS),
            ),
            own_group=True,  # restic under the agents, gunicorn's workers: all stop with them
        )
        self.admin_password = secrets.token_urlsafe(18)
        self.api: Optional[DemoApi] = None
        self.hosts = demo_hosts()
        self.finished_backup: Optional[int] = None
        self.running_backup: Optional[int] = None

    def seed(self) -> None:
        log(f"starting restic-manager serve on {self.server.url}")
        self.server.start(timeout=UNTIL_READY_SECONDS)
        log("creating the administrator and a token")
        token = self.server.admin_token(self.admin_password, username=ADMIN, name="screenshots")
        self.api = DemoApi(self.server, token, timeout=15)
        for number, host in enumerate(self.hosts):
            host.root = self.workspace / host.hostname
            log(f"enrolling {host.hostname}")
            host.populate(host.root, seeded(number))
            self.enroll(host)
        log("waiting for the agents to initialise their repositories")
        for host in self.hosts:
            self.api.wait_repo_ready(host.host_id, UNTIL_READY_SECONDS)
        for host in self.hosts:
            self.configure(host)
        log("first round of backups")
        self.backup_round(first=True)
        for host in self.hosts:
            if host.leaves:
                log(f"stopping {host.hostname}'s agent: it will show as offline")
                host.agent.stop_or_kill(timeout=10)
        for number, host in enumerate(self.hosts):
            host.change(host.root, seeded(100 + number))
        log("second round of backups")
        jobs = self.backup_round(first=False)
        self.finished_backup = jobs[(self.hosts[0].hostname, next(iter(self.hosts[0].groups)))]
        self.start_running_backup()

    def wait_for_departures(self) -> None:
        """The hosts whose agent stopped are shown as offline (``OFFLINE_AFTER_SECONDS``)."""
        for host in self.hosts:
            if host.leaves:
                wait_until(
                    lambda host=host: (
                        self.api.get(f"/hosts/{host.host_id}").json()["status"] == "offline"
                    ),
                    OFFLINE_AFTER_SECONDS + 30,
                    f"{host.hostname} to show as offline",
                    interval=1,
                )

    def enroll(self, host: DemoHost) -> None:
        first_group = next(iter(host.groups))
        answer = self.api.post(
            "/enrollment-tokens",
            {
                "hostname": host.hostname,
                "repo_url": str(self.workspace / "repos" / host.hostname),
                "repo_password": secrets.token_urlsafe(24),
                "paths": host.paths(first_group),
            },
        )
        home = self.workspace / "agents" / host.hostname
        log_path = self.workspace / f"agent-{host.hostname}.log"
        host.agent = AgentProcess(home, log_path, own_group=True)
        host.agent.enroll(self.server.url, answer["token"])
        hosts = self.api.get("/hosts").json()["items"]
        host.host_id = next(item["id"] for item in hosts if item["hostname"] == host.hostname)
        host.agent.start()

    def configure(self, host: DemoHost) -> None:
        """Source groups (the enrollment's one renamed, the others added) and a schedule."""
        base = f"/hosts/{host.host_id}"
        existing = self.api.get(f"{base}/source-groups").json()["items"]
        names = list(host.groups)
        first = existing[0]
        self.api.call(
            "PUT",
            f"{base}/source-groups/{first['id']}",
            {**self.group_body(host, names[0]), "excludes": first.get("excludes") or []},
        )
        for name in names[1:]:
            self.api.post(f"{base}/source-groups", self.group_body(host, name))
        schedule_name, cron = host.schedule
        self.api.post(
            f"{base}/schedules",
            {"name": schedule_name, "cron": cron, "source_groups": names, "enabled": True},
        )

    def group_body(self, host: DemoHost, name: str) -> dict:
        return {"name": name, "includes": host.paths(name), "retention": host.retention}

    def backup_round(self, *, first: bool) -> dict[tuple[str, str], int]:
        """One backup of every group of every present host (but the running job's group);
        any result other than the planned ones stops the run: the pictures would lie.
        Answers the job ids by (hostname, group)."""
        started = {}
        for host in self.hosts:
            if not host.agent.running():
                continue  # gone away
            for group in host.groups:
                if group != RUNNING_GROUP:
                    started[(host, group)] = self.api.backup(host.host_id, group)
        finished = self.api.wait_jobs(list(started.values()))
        results = []
        for (host, group), job in zip(started, finished):
            results.append(f"{host.hostname}/{group} {job['status']}")
            planned_failure = not first and group == host.breaks
            if (job["status"] == "succeeded") == planned_failure:
                raise DemoError(
                    f"backup of {host.hostname}'s {group} group ended {job['status']}, "
                    f"which the demo did not plan: {job.get('error') or json.dumps(job)}"
                )
        log("  " + ", ".join(results))
        return {(host.hostname, group): job_id for (host, group), job_id in started.items()}

    def start_running_backup(self) -> None:
        """A bandwidth-capped backup of the build artifacts, left running for its picture."""
        ci = next(host for host in self.hosts if RUNNING_GROUP in host.groups)
        self.running_backup = self.api.backup(
            ci.host_id, RUNNING_GROUP, limit_upload_kib=RUNNING_LIMIT_KIB
        )

        def progressing():
            job = self.api.get(f"/jobs/{self.running_backup}").json()
            if job["finished_at"]:
                raise DemoError(f"the capped backup ended early: {json.dumps(job)}")
            return (job.get("progress") or {}).get("percent")

        log("waiting for the capped backup to show progress")
        wait_until(progressing, JOB_SECONDS, "the capped backup's progress", interval=0.5)


# --- the browser -------------------------------------------------------------------------


def check_chromium(path: Path) -> None:
    if not (path.is_file() and os.access(path, os.X_OK)):
        sys.exit(
            f"tools/screenshots.py: no Chromium at {path}. Install Debian's "
            "(apt-get install chromium) or pass --chromium PATH. This script never downloads "
            "a browser."
        )


def take_screenshots(demo: Demo, out: Path, chromium: Path) -> list[Path]:
    """Photograph the pages into ``out``; a browser failure becomes a DemoError."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
            page = context.new_page()
            page.set_default_timeout(30_000)
            try:
                return photograph(page, demo, out)
            except PlaywrightError as error:
                failed = Path(tempfile.gettempdir()) / "screenshots-failure.png"
                with contextlib.suppress(PlaywrightError):
                    page.screenshot(path=str(failed), full_page=True)
                first_line = str(error).strip().splitlines()[0]
                raise DemoError(
                    f"the browser step failed on {page.url}: {first_line}\n"
                    f"(the page as it was: {failed}; has the page's markup changed?)"
                ) from None
        finally:
            with contextlib.suppress(PlaywrightError):  # e.g. its driver got the Ctrl-C too
                browser.close()


def photograph(page, demo: Demo, out: Path) -> list[Path]:
    url = demo.server.url
    web = next(host for host in demo.hosts if host.hostname == "web-1")
    files = next(host for host in demo.hosts if host.hostname == "files-1")
    shots: list[Path] = []

    out.mkdir(parents=True, exist_ok=True)

    def shoot(name: str, full_page: bool = False) -> None:
        path = out / f"{name}.png"
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.mouse.move(8, VIEWPORT["height"] // 2)  # no hover effect in the picture
        page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="hide")
        shots.append(path)
        log(f"photographed {name}")

    sign_in(page, url, demo.admin_password)

    visit(page, f"{url}/jobs/{demo.running_backup}")
    page.locator("progress").first.wait_for()  # the API already reported progress
    # The "live" marker once the event stream is open (if the page has one).
    page.wait_for_function(
        "() => { const live = document.getElementById('job-live');"
        " return !live || live.hidden || /open/.test(live.className); }"
    )
    settle(page)
    shoot("job-running")

    demo.wait_for_departures()
    visit(page, f"{url}/")
    settle(page)
    shoot("dashboard")

    visit(page, f"{url}/hosts/{web.host_id}")
    settle(page)
    shoot("host")

    visit(page, f"{url}/jobs/{demo.finished_backup}")
    settle(page)
    shoot("job", full_page=True)  # the whole log, which is short

    restore_wizard(page, url, files)
    shoot("restore")
    return shots


def visit(page, address: str) -> None:
    """Open a page; an error answer stops the run instead of being photographed."""
    response = page.goto(address)
    if response is None or not response.ok:
        status = response.status if response else "no answer"
        raise DemoError(f"{address} answered {status}: see the server log")


def sign_in(page, url: str, password: str) -> None:
    visit(page, f"{url}/login")
    page.get_by_label("Username").fill(ADMIN)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda address: "/login" not in address)


def settle(page) -> None:
    """Loaded, fonts ready, no spinner left (live pages keep an SSE stream open, so
    "network idle" never comes)."""
    page.wait_for_load_state("load")
    page.evaluate("document.fonts.ready.then(() => true)")
    page.wait_for_function(
        "() => ![...document.querySelectorAll('.spinner')].some(s => s.offsetParent !== null)"
    )


def restore_wizard(page, url: str, host: DemoHost) -> None:
    """The newest "shares" snapshot picked, a folder opened, two files and a folder ticked."""
    visit(page, f"{url}/hosts/{host.host_id}/restore")
    row = page.locator(".snappick__row", has=page.get_by_text("shares", exact=True)).first
    row.locator("input[type=radio]").check()
    # Each folder level is listed by the agent (restic ls) through the server, one by one.
    share = host.paths("shares")[0]
    page.locator(f'.tree__toggle[aria-label="Open {share}/finance"]').click(timeout=60_000)
    for name in ("engineering", "finance/annual-report-2023.pdf", "finance/budget-2025-v4.xlsx"):
        page.locator(f'.tree__check[value="{share}/{name}"]').check(timeout=60_000)
    settle(page)
    # The chosen snapshot row at the top, the opened folder's first entries below it.
    page.locator("#tree").evaluate("tree => tree.scrollTo(0, 0)")
    page.locator("#step-snapshot").evaluate(
        "step => window.scrollTo(0, step.getBoundingClientRect().top + window.scrollY - 16)"
    )


# --- main --------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the PNGs go")
    parser.add_argument("--chromium", type=Path, default=DEFAULT_CHROMIUM)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    check_chromium(args.chromium)
    try:
        import playwright  # noqa: F401
    except ImportError:
        sys.exit("tools/screenshots.py needs playwright: pip install -e '.[screenshots]'")
    if shutil.which("restic") is None:
        sys.exit("tools/screenshots.py needs restic on PATH (apt-get install restic)")

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so the finally blocks clean up; Ctrl-C works
    # even when started from a shell that had it ignored (a background job).
    def interrupted(signal_number, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    started = time.monotonic()
    workspace = Path(tempfile.mkdtemp(prefix="rm-demo-"))
    demo = Demo(workspace)
    try:
        demo.seed()
        # Photographed into the workspace first: a failed run leaves docs/ as it was.
        staged = take_screenshots(demo, workspace / "shots", args.chromium)
        args.out.mkdir(parents=True, exist_ok=True)
        shots = [Path(shutil.copy(shot, args.out / shot.name)) for shot in staged]
    except ProcessError as error:  # a DemoError, or a process that did not come up
        print(f"tools/screenshots.py: {error}", file=sys.stderr)
        print(f"--- server log (last lines) ---\n{demo.server.tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tools/screenshots.py: interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all(demo.server, [host.agent for host in reversed(demo.hosts) if host.agent])
        if args.keep:
            log(f"kept {workspace}")
        else:
            shutil.rmtree(workspace, ignore_errors=True)
    for shot in shots:
        log(f"wrote {shot} ({shot.stat().st_size // 1024} KB)")
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
