#!/usr/bin/env bash
# Install restic-manager into .venv next to this checkout and run it (embedded SQLite,
# data in ./data unless RM_DATA_DIR says otherwise). Arguments go to `restic-manager serve`,
# e.g. install/run-server.sh --bind 0.0.0.0:8080
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "restic-manager needs Python 3.11 or newer; $("$PYTHON" --version 2>&1) found." >&2
  echo "On Debian 12 / Ubuntu 24.04: sudo apt-get install -y python3 python3-venv" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "Installing python3-venv (needed to create the virtual environment)..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[server]'
exec .venv/bin/restic-manager serve "$@"
