#!/usr/bin/env bash
# Install the test dependencies into .venv and run the whole test suite.
#   tests/run.sh                 # SQLite (default)
#   RM_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/restic_manager_test tests/run.sh
# Extra arguments go to pytest (e.g. tests/run.sh -k login -x). The suite runs on every core
# (pytest-xdist); RM_TEST_WORKERS=0 runs it in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -n "${RM_TEST_WORKERS:-auto}" "$@"
