"""Fixtures for the agent's own tests: a fake protocol server, a fake restic, a home dir."""

import sys
from pathlib import Path

import pytest
from fake_agent_server import AGENT_TOKEN, FakeServer
from restic_samples import FIXTURES

from agent.config import State, merge_settings, new_secrets_key, write_config

FAKE_RESTIC = """\
#!{python}
# A stand-in for restic: it behaves according to RESTIC_REPOSITORY and the subcommand,
# mostly by replaying the real restic 0.14 captures in tests/agent/fixtures/restic/.
import json, os, signal, sys, time

FIXTURES = {fixtures!r}
HERE = os.path.dirname(os.path.abspath(__file__))

with open({record!r}, "a") as handle:
    handle.write(json.dumps({{"argv": sys.argv, "env": dict(os.environ),
                             "stdin_eof": sys.stdin.read() == ""}}) + "\\n")


def replay(name):
    text = open(os.path.join(FIXTURES, name)).read()
    code = int(text.split("# exit code: ")[1].split("\\n")[0])
    stdout = text.split("# ===== stdout =====\\n")[1].split("# ===== stderr =====\\n")[0]
    sys.stdout.write(stdout)
    sys.stdout.flush()
    sys.stderr.write(text.split("# ===== stderr =====\\n")[1])
    sys.exit(code)


def load_stdout(name):
    text = open(os.path.join(FIXTURES, name)).read()
    return text.split("# ===== stdout =====\\n")[1].split("# ===== stderr =====\\n")[0]


def version():
    try:
        return open(os.path.join(HERE, "version.txt")).read().strip()
    except FileNotFoundError:
        return "0.14.0"


words = [word for word in sys.argv[1:] if not word.startswith("-")]
command = words[0] if words else ""
repo = os.environ.get("RESTIC_REPOSITORY", "")
password = os.environ.get("RESTIC_PASSWORD", "")
if command == "version":
    print("restic %s compiled with go1.19.8 on linux/amd64" % version())
    sys.exit(0)
if command == "unlock" and repo != "fake:locked":
    replay("98_unlock_text_nothing_to_do.txt")
if repo in ("fake:ready", "fake:warning", "fake:nolist") and command == "cat":
    print("{{")
    print('  "version": 2,')
    print('  "id": "e8cb0f49df7ea42150bfe1ccab270dd2561a35669ede0008ff435f6bf9d833a1"')
    print("}}")
    print("debug: using password " + password, file=sys.stderr)
    sys.exit(0)
if repo == "fake:missing" and command == "init":
    if "--json" in sys.argv:
        print(json.dumps({{"message_type": "initialized", "id": "e8cb0f49df" + "0" * 54,
                          "repository": "/srv/repo"}}))
        sys.exit(0)
    replay("01_init_json_unsupported.txt")
if repo == "fake:missing":
    print("Fatal: unable to open config file: stat /srv/repo/config: no such file or directory",
          file=sys.stderr)
    print("Is there a repository at the following location?", file=sys.stderr)
    print("/srv/repo", file=sys.stderr)
    sys.exit(1)
if repo == "fake:wrongpw":
    print("Fatal: wrong password or no key found", file=sys.stderr)
    sys.exit(1)
if repo == "fake:locked":
    replay("E41_forget_blocked_by_stale_lock.txt")
if repo == "fake:nolist" and command in ("snapshots", "stats"):
    print("Fatal: unable to load index: connection reset by peer", file=sys.stderr)
    sys.exit(1)
if repo == "fake:warning" and command == "backup":
    replay("22_backup_json_unreadable_files_exit3.txt")
if repo == "fake:onemissing" and command == "backup":
    replay("20_backup_json_one_source_missing_exit0.txt")
if repo == "fake:allmissing" and command == "backup":
    replay("21_backup_json_all_sources_missing_exit1.txt")
if repo == "fake:missing019" and command == "backup":
    # restic 0.19: the same skip line, but exit 3 (restic #4467); every file was read.
    sys.stdout.write(load_stdout("20_backup_json_one_source_missing_exit0.txt"))
    print("/srv/demo/does-not-exist does not exist, skipping", file=sys.stderr)
    print("Warning: at least one source file could not be read", file=sys.stderr)
    sys.exit(3)
if repo in ("fake:ready", "fake:damaged") and command == "restore" and "--json" in sys.argv:
    print(json.dumps({{"message_type": "status", "seconds_elapsed": 1, "percent_done": 0.5,
                      "total_files": 4, "files_restored": 2, "total_bytes": 3000,
                      "bytes_restored": 1500}}), flush=True)
    print(json.dumps({{"message_type": "summary", "seconds_elapsed": 2, "total_files": 4,
                      "files_restored": 4, "total_bytes": 3000, "bytes_restored": 3000}}))
    sys.exit(0)
if repo == "fake:damaged" and command == "restore":
    replay("E61_restore_from_damaged_repo.txt")
if repo in ("fake:ready", "fake:warning", "fake:nolist", "fake:damaged", "fake:onemissing",
            "fake:allmissing", "fake:missing019"):
    replay({{
        "restore": "70_restore_text.txt",
        "ls": "41_ls_json_subdir.txt",
        "diff": "50_diff_json.txt",
        "init": "02_init_again_config_file_already_exists.txt",
        "backup": "10_backup_json_first.txt",
        "snapshots": "30_snapshots_json.txt",
        "stats": "61_stats_json_raw_data.txt",
        "forget": "90_forget_json_dry_run.txt" if "--dry-run" in sys.argv
                  else "91_forget_json_keep_daily.txt",
        "prune": "95_prune_text.txt",
        "check": "82_check_read_data_subset.txt" if "--read-data-subset=1/2" in sys.argv
                 else "80_check_text.txt",
    }}.get(command, "E10_unsupported_backend.txt"))
if repo.startswith("fake:chatty:"):
    for number in range(int(repo.rsplit(":", 1)[1])):
        print("line %d" % (number + 1))
    sys.exit(0)
if repo.startswith("fake:ticker:"):
    for number in range(int(repo.rsplit(":", 1)[1])):
        print("tick %d" % (number + 1), flush=True)
        time.sleep(0.02)
    sys.exit(0)
if repo == "fake:slow":
    def interrupted(signum, frame):
        if command == "backup":  # stdout ends in the middle of a JSON line (sample E30)
            sys.stdout.write('{{"message_type":"status","percent_done":0.3')
            sys.stdout.flush()
        print("\\x1b[2Ksignal interrupt received, cleaning up", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)
    signal.signal(signal.SIGINT, interrupted)
    if command == "backup":
        print('{{"message_type":"status","percent_done":0.25,"total_files":6,'
              '"total_bytes":900000000,"bytes_done":225000000}}', flush=True)
    print("working", flush=True)
    time.sleep(60)
    sys.exit(0)
if repo == "fake:stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("ignoring SIGINT", flush=True)
    time.sleep(60)
    sys.exit(0)
if repo == "fake:oom":
    print("working", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
print("Fatal: parsing repository location failed: invalid backend", file=sys.stderr)
sys.exit(1)
"""


@pytest.fixture(autouse=True)
def _no_start_delay(monkeypatch):
    monkeypatch.setenv("RM_AGENT_START_DELAY", "0")


@pytest.fixture
def fake_server():
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake_restic(tmp_path):
    """Path of an executable that behaves like restic according to RESTIC_REPOSITORY.

    Every call is recorded in ``fake_restic.calls`` (a file outside the agent's home).
    """
    directory = tmp_path / "fake-bin"
    directory.mkdir()
    record = directory / "calls.ndjson"
    script = directory / "restic"
    script.write_text(
        FAKE_RESTIC.format(python=sys.executable, record=str(record), fixtures=str(FIXTURES))
    )
    script.chmod(0o755)
    return FakeRestic(script, record)


class FakeRestic:
    def __init__(self, path: Path, record: Path):
        self.path = path
        self.record = record

    def __str__(self) -> str:
        return str(self.path)

    def set_version(self, version: str) -> None:
        """What ``restic version`` answers (0.14.0 until set)."""
        (self.path.parent / "version.txt").write_text(version)

    def calls(self):
        import json

        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def agent_home(tmp_path, fake_server):
    """An enrolled agent home pointing at the fake server."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    make_home(home, fake_server.url)
    return home


def make_home(home: Path, url: str, spool_max_mb: int = 256) -> None:
    write_config(home / "agent.conf", url, None, None)
    if spool_max_mb != 256:
        text = (
            (home / "agent.conf")
            .read_text()
            .replace("spool_max_mb = 256", f"spool_max_mb = {spool_max_mb}")
        )
        (home / "agent.conf").write_text(text)
    State(
        home / "state.json",
        {
            "host_id": 7,
            "agent_token": AGENT_TOKEN,
            "secrets_key": new_secrets_key(),
            "settings": merge_settings({}, {"poll_wait_seconds": 1, "log_flush_seconds": 0.2}),
        },
    ).save()
