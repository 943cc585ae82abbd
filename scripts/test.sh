#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow tests included: what CI runs.
# --fast: the edit-test loop, every test except those marked slow (runs of several worker processes,
# PostgreSQL, Spark, the browser, `mlflow run`). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
select=()
if [ "${1:-}" = "--fast" ]; then
  shift
  select=(-m "not slow")
fi
exec .venv/bin/python -m pytest ${select[@]+"${select[@]}"} "$@"
