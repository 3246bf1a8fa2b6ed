"""Fixtures for the agent's own tests: a fake protocol server, a fake restic, a home dir."""

import sys
from pathlib import Path

import pytest
from fake_agent_server import AGENT_TOKEN, FakeServer

from agent.config import State, merge_settings, new_secrets_key, write_config

FAKE_RESTIC = """\
#!{python}
import json, os, signal, sys, time

with open({record!r}, "a") as handle:
    handle.write(json.dumps({{"argv": sys.argv, "env": dict(os.environ),
                             "stdin_eof": sys.stdin.read() == ""}}) + "\\n")
if sys.argv[1:] == ["version"]:
    print("restic 0.14.0 compiled with go1.19.8 on linux/amd64")
    sys.exit(0)
repo = os.environ.get("RESTIC_REPOSITORY", "")
password = os.environ.get("RESTIC_PASSWORD", "")
if repo == "fake:ready":
    print("{{")
    print('  "version": 2,')
    print('  "id": "e8cb0f49df7ea42150bfe1ccab270dd2561a35669ede0008ff435f6bf9d833a1"')
    print("}}")
    print("debug: using password " + password, file=sys.stderr)
    sys.exit(0)
if repo == "fake:missing":
    print("Fatal: unable to open config file: stat /srv/repo/config: no such file or directory",
          file=sys.stderr)
    print("Is there a repository at the following location?", file=sys.stderr)
    print("/srv/repo", file=sys.stderr)
    sys.exit(1)
if repo == "fake:wrongpw":
    print("Fatal: wrong password or no key found", file=sys.stderr)
    sys.exit(1)
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
        print("\\x1b[2Ksignal interrupt received, cleaning up", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(130)
    signal.signal(signal.SIGINT, interrupted)
    print("working", flush=True)
    time.sleep(60)
    sys.exit(0)
if repo == "fake:stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("ignoring SIGINT", flush=True)
    time.sleep(60)
    sys.exit(0)
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
    script.write_text(FAKE_RESTIC.format(python=sys.executable, record=str(record)))
    script.chmod(0o755)
    return FakeRestic(script, record)


class FakeRestic:
    def __init__(self, path: Path, record: Path):
        self.path = path
        self.record = record

    def __str__(self) -> str:
        return str(self.path)

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
