"""``restic-manager-agent``: the agent's command line."""

import argparse
import sys
from typing import List, Optional

from agent import __version__


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="restic-manager-agent",
        description="restic-manager agent (enrollment and the run loop arrive with the "
        "agent/protocol issue).",
    )
    parser.add_argument(
        "--version", action="version", version=f"restic-manager-agent {__version__}"
    )
    parser.parse_args(argv)
    print(f"restic-manager-agent {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
