"""The agent installs alone on old hosts: it never imports the server or its stack."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import pkgutil, sys
import agent
for module in pkgutil.walk_packages(agent.__path__, "agent."):
    if module.name != "agent.__main__":
        __import__(module.name)
forbidden = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {"app", "flask", "sqlalchemy", "gevent", "werkzeug"}
)
print(forbidden)
"""


def test_agent_modules_import_without_the_server_stack():
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"
