"""Restore-path benchmark: browse latency, download throughput, restore vs. bare restic.

    python tests/bench/restore_paths.py --files 20000 --download-mb 200 --rounds 5

Not a test (pytest does not collect it; no timing assertions). Needs restic on PATH.

1. A tree of ``--files`` small files (100 per directory) and one ``--download-mb`` file of
   random bytes is written and backed up once, through a real ``restic-manager serve``
   (SQLite) and the real agent (``python -m agent``), as in production.
2. Browse: ``GET …/snapshots/{id}/tree?path=<dir of 100 files>`` for ``--rounds``
   different directories — first asks (a ``rpc.ls`` over the long poll, ``restic ls`` on
   the agent) and again for each (served from the cache). Wall time per request.
3. Download: ``GET …/download?path=<the big file>`` (``restic dump`` on the agent, chunks
   through the server's database, streamed on); MB/s, against bare ``restic dump`` to
   /dev/null.
4. Restore: ``POST …/restores`` of one 100-file directory into a new directory, API
   request → job finished, against bare ``restic restore --include`` of the same
   directory.
Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.processes import AgentProcess, Server, clean_env, wait_until, write_tree  # noqa: E402

PASSWORD = "bench-restore-password"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def restic_env(repo: Path, home: Path) -> dict:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_CACHE_DIR": str(home / "bare-cache"),
    }


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--download-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rm-bench-restore-") as scratch:
        work = Path(scratch)
        home = work / "home"
        home.mkdir()
        tree = write_tree(work / "data" / "tree", args.files, size=512)
        big = work / "data" / "big.bin"
        with open(big, "wb") as out:
            for _ in range(args.download_mb):
                out.write(os.urandom(1024 * 1024))
        repo = work / "repo"
        server = Server(
            work,
            clean_env(
                RM_DATA_DIR=str(work / "server-data"),
                RM_OFFLINE_AFTER_SECONDS="60",
                RM_RPC_WAIT_SECONDS="60",
                RM_DOWNLOAD_MAX_MB=str(args.download_mb + 10),
            ),
        )
        server.start()
        agent = None
        try:
            token = server.admin_token(PASSWORD, username="bench")
            api = requests.Session()
            api.headers["Authorization"] = f"Bearer {token}"
            base = f"{server.url}/api/v1"
            minted = api.post(
                f"{base}/enrollment-tokens",
                json={
                    "hostname": "bench",
                    "repo_url": str(repo),
                    "repo_password": PASSWORD,
                    "paths": [str(work / "data")],
                },
                timeout=10,
            ).json()
            agent = AgentProcess(work / "agent-home", work / "agent.log", HOME=str(home))
            agent.enroll(server.url, minted["token"])
            host_id = api.get(f"{base}/hosts", timeout=10).json()["items"][0]["id"]
            agent.start()

            def job_done(job_id: int) -> dict:
                return wait_until(
                    lambda: (
                        (j := api.get(f"{base}/jobs/{job_id}", timeout=10).json())["finished_at"]
                        and j
                    ),
                    600,
                    f"job {job_id}",
                    interval=0.05,
                )

            wait_until(
                lambda: (
                    api.get(f"{base}/hosts/{host_id}", timeout=10).json()["repo_status"] == "ready"
                ),
                120,
                "repository ready",
            )
            log("backing up …")
            backup = api.post(f"{base}/hosts/{host_id}/jobs", json={"kind": "backup"}, timeout=10)
            snapshot = job_done(backup.json()["id"])["stats"]["snapshot_id"]

            directories = sorted(p for p in tree.iterdir() if p.is_dir())[: args.rounds]
            tree_url = f"{base}/hosts/{host_id}/snapshots/{snapshot}/tree"
            download_url = f"{base}/hosts/{host_id}/snapshots/{snapshot}/download"

            def browse(directory: Path) -> None:
                api.get(tree_url, params={"path": str(directory)}, timeout=120).raise_for_status()

            def fetch() -> None:
                params = {"path": str(big)}
                with api.get(download_url, params=params, stream=True, timeout=600) as reply:
                    reply.raise_for_status()
                    size = sum(len(chunk) for chunk in reply.iter_content(1024 * 1024))
                assert size == big.stat().st_size, size

            def bare_dump() -> None:
                subprocess.run(
                    ["restic", "--no-lock", "dump", snapshot, str(big)],
                    env=restic_env(repo, home),
                    stdout=subprocess.DEVNULL,
                    check=True,
                )

            def restore(directory: Path) -> None:
                body = {"snapshot_id": snapshot, "include": [str(directory)]}
                reply = api.post(f"{base}/hosts/{host_id}/restores", json=body, timeout=10)
                assert job_done(reply.json()["id"])["status"] == "succeeded"

            def bare_restore(directory: Path, target: Path) -> None:
                argv = ["restic", "restore", snapshot, "--target", str(target)]
                subprocess.run(
                    [*argv, "--include", str(directory)],
                    env=restic_env(repo, home),
                    stdout=subprocess.DEVNULL,
                    check=True,
                )

            first, cached = [], []
            for directory in directories:
                first.append(timed(lambda d=directory: browse(d)))
                cached.append(timed(lambda d=directory: browse(d)))
            log("downloading …")
            downloads, bare_dumps = [], []
            for _ in range(max(1, args.rounds // 2)):
                downloads.append(timed(fetch))
                bare_dumps.append(timed(bare_dump))
            log("restoring …")
            restores, bare_restores = [], []
            for index, directory in enumerate(directories):
                restores.append(timed(lambda d=directory: restore(d)))
                target = work / f"bare-restore-{index}"
                bare_restores.append(timed(lambda d=directory, t=target: bare_restore(d, t)))
        finally:
            if agent is not None:
                agent.kill()
            server.kill()

    mb = args.download_mb
    print(f"\n{args.files} files of 512 B; one {mb} MiB file; {args.rounds} rounds (medians)\n")
    print("| what | through restic-manager | bare restic |")
    print("|---|---|---|")
    print(f"| browse one directory (100 entries), first | {statistics.median(first):.3f} s | — |")
    print(f"| browse the same directory again (cached) | {statistics.median(cached):.3f} s | — |")
    print(
        f"| download {mb} MiB | {statistics.median(downloads):.2f} s "
        f"({mb / statistics.median(downloads):.0f} MiB/s) | "
        f"{statistics.median(bare_dumps):.2f} s ({mb / statistics.median(bare_dumps):.0f} MiB/s)"
        " (`restic dump` to /dev/null) |"
    )
    print(
        f"| restore one 100-file directory (API → job finished) | "
        f"{statistics.median(restores):.2f} s | {statistics.median(bare_restores):.2f} s |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
