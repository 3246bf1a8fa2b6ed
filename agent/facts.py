"""What the agent tells the server about its host (enroll, hello)."""

import platform
import socket
from typing import Any, Dict, Optional

from agent import PROTOCOL_VERSION, __version__
from agent.repository import Repository
from agent.restic import execute
from agent.restic.errors import ResticNotInstalled
from agent.restic.version import parse_version, version_argv


def restic_version(binary: str = "restic") -> Optional[str]:
    """``0.14.0``, or ``None`` when restic is missing or says something unexpected."""
    lines = []
    try:
        execute.run(
            version_argv(binary),
            Repository(None).environment(None),  # no repository: asking for the version
            on_line=lambda stream, text: lines.append(text),
        )
    except ResticNotInstalled:
        return None
    return parse_version("\n".join(lines))


def host_facts(binary: str = "restic") -> Dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "agent_version": __version__,
        "restic_version": restic_version(binary),
        "protocol_version": PROTOCOL_VERSION,
    }
