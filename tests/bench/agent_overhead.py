"""Agent overhead benchmark: the same backup through the agent vs. bare restic.

    python tests/bench/agent_overhead.py --files 20000 --rounds 3

Not a test (pytest does not collect it; no timing assertions). Needs restic on PATH.

1. A tree of ``--files`` files (``--size`` bytes each, 100 per directory) is written once.
2. A real ``restic-manager serve`` (SQLite) starts; an enrollment token is minted through
   the API and the real agent (``python -m agent``) enrolls and runs, as in production.
3. Each round backs the tree up twice, alternating the order, each time into a FRESH
   repository so both runs do the same work (a first backup):
   * bare: ``restic backup --json <tree>`` as a subprocess, with the environment the agent
     gives restic (``RESTIC_PROGRESS_FPS=1``, a cache dir); wall time from start to exit.
   * agent: the host's credentials are pointed at a new repository through
     ``PUT /api/v1/hosts/{id}/repository`` (the server probes and initialises it), then
     ``POST /api/v1/hosts/{id}/jobs {"kind": "backup"}``. Two times are taken:
     - restic under the agent: the agent's own timestamps of the ``$ restic backup`` log
       record and of the summary record (from ``log.ndjson``): what the agent adds to
       restic's run (reading, parsing, spooling every line, progress events);
     - the whole job: API request sent → job seen finished by polling the API every 50 ms
       (dispatch over the long poll, the backup, the snapshot list and stats reports).
4. Prints a markdown table of medians and the ratio agent/bare (goal ≤ 1.05 for the
   restic-under-agent time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.processes import AgentProcess, Server, clean_env, wait_until, write_tree  # noqa: E402

PASSWORD = "bench-overhead-password"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bare_backup(restic: str, repo: Path, tree: Path, cache: Path) -> float:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_PROGRESS_FPS": "1",
        "RESTIC_CACHE_DIR": str(cache),
    }
    subprocess.run([restic, "init"], env=env, capture_output=True, check=True)
    started = time.monotonic()
    result = subprocess.run(
        [restic, "backup", "--json", str(tree)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )
    elapsed = time.monotonic() - started
    assert b'"message_type":"summary"' in result.stdout
    return elapsed


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Fleet:
    def __init__(self, work: Path, tree: Path):
        env = clean_env(
            RM_DATA_DIR=str(work / "server-data"),
            RM_OFFLINE_AFTER_SECONDS="60",
            RM_LOG_FLUSH_SECONDS="10",
        )
        self.server = Server(work, env)
        self.server.start()
        token = self.server.admin_token(PASSWORD, username="bench")
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Bearer {token}"
        self.base = f"{self.server.url}/api/v1"
        first_repo = work / "agent-repo-0"
        minted = self.api.post(
            f"{self.base}/enrollment-tokens",
            json={
                "hostname": "bench",
                "repo_url": str(first_repo),
                "repo_password": PASSWORD,
                "paths": [str(tree)],
            },
            timeout=10,
        )
        minted.raise_for_status()
        self.agent = AgentProcess(work / "agent-home", work / "agent.log")
        self.agent.enroll(self.server.url, minted.json()["token"])
        self.host_id = self.api.get(f"{self.base}/hosts", timeout=10).json()["items"][0]["id"]
        self.agent.start()
        self._wait_ready()

    def _host(self) -> dict:
        return self.api.get(f"{self.base}/hosts/{self.host_id}", timeout=10).json()

    def _wait_ready(self) -> None:
        wait_until(lambda: self._host()["repo_status"] == "ready", 120, "repository ready", 0.2)

    def use_repository(self, repo: Path) -> None:
        answer = self.api.put(
            f"{self.base}/hosts/{self.host_id}/repository",
            json={"url": str(repo), "password": PASSWORD},
            timeout=10,
        )
        answer.raise_for_status()
        self._wait_ready()

    def backup(self) -> tuple[float, float]:
        started = time.monotonic()
        created = self.api.post(
            f"{self.base}/hosts/{self.host_id}/jobs", json={"kind": "backup"}, timeout=10
        )
        created.raise_for_status()
        job_id = created.json()["id"]

        def finished():
            job = self.api.get(f"{self.base}/jobs/{job_id}", timeout=10).json()
            return job if job["finished_at"] else None

        job = wait_until(finished, 600, f"backup job {job_id}", interval=0.05)
        whole = time.monotonic() - started
        assert job["status"] == "succeeded", job
        records = [
            json.loads(line)
            for line in self.api.get(
                f"{self.base}/jobs/{job_id}/log.ndjson", timeout=30
            ).text.splitlines()
        ]
        command = next(r for r in records if r["text"].startswith("$ ") and " backup" in r["text"])
        summary = next(r for r in records if r["text"].startswith("snapshot "))
        under_agent = (_ts(summary["ts"]) - _ts(command["ts"])).total_seconds()
        return under_agent, whole

    def close(self) -> None:
        self.agent.kill()
        self.server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    restic = shutil.which("restic")
    if restic is None:
        raise SystemExit("restic is not installed")
    work = Path(tempfile.mkdtemp(prefix="rm-overhead-"))
    try:
        log(f"writing {args.files} files of {args.size} bytes under {work}/tree")
        tree = write_tree(work / "tree", args.files, size=args.size, random_bytes=True)
        fleet = Fleet(work, tree)
        bare, agent, whole = [], [], []
        try:
            for round_number in range(args.rounds):
                order = ("bare", "agent") if round_number % 2 == 0 else ("agent", "bare")
                for which in order:
                    repo = work / f"{which}-repo-{round_number + 1}"
                    if which == "bare":
                        bare.append(bare_backup(restic, repo, tree, work / "bare-cache"))
                        log(f"round {round_number + 1}: bare {bare[-1]:.2f} s")
                    else:
                        fleet.use_repository(repo)
                        under, total = fleet.backup()
                        agent.append(under)
                        whole.append(total)
                        log(f"round {round_number + 1}: agent {under:.2f} s (job {total:.2f} s)")
        finally:
            fleet.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare_median = statistics.median(bare)
    agent_median = statistics.median(agent)
    whole_median = statistics.median(whole)
    print("| files | bare restic (median) | restic under the agent | ratio | whole job via API |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.files} | {bare_median:.2f} s | {agent_median:.2f} s | "
        f"{agent_median / bare_median:.3f} | {whole_median:.2f} s |"
    )
    print(f"raw: bare={bare} agent={agent} whole={whole}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
