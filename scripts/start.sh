#!/usr/bin/env bash
# Set up and run the platform on this machine: venv, dependencies, migrations, then the supervisor
# (python -m backend.supervisor), which runs the model simulator, gunicorn and the job worker
# (python -m backend.jobs.worker: stress tests and every other kind of job),
# restarts the simulator or the worker when one dies, and exits with gunicorn's status if gunicorn dies.
# PORT (5000), SIMULATOR_PORT (8001) and HOST (127.0.0.1) choose where; Ctrl-C or SIGTERM stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

export ENVIRONMENT="${ENVIRONMENT:-development}"
export HOST="${HOST:-127.0.0.1}" PORT="${PORT:-5000}" SIMULATOR_PORT="${SIMULATOR_PORT:-8001}"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
hash="$(sha1sum pyproject.toml | cut -c1-12)"
stamp=".venv/.installed-$hash"
# scripts/test.sh installs '.[test]', a superset: its stamp for the same pyproject.toml will do.
if [ ! -f "$stamp" ] && [ ! -f ".venv/.installed-test-$hash" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e .
  touch "$stamp"
fi
mkdir -p data logs outputs

# Fail here, not in a worker, if the configuration is wrong; this also applies the migrations.
.venv/bin/python -c "from backend.app import create_app; create_app()"

exec .venv/bin/python -m backend.supervisor
