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
