#!/usr/bin/env bash
# Set up and run the platform on this machine: venv, dependencies, migrations, the model simulator,
# gunicorn and the stress-test worker (python -m backend.stress.worker).
# PORT (5000), SIMULATOR_PORT (8001) and HOST (127.0.0.1) choose where; Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

export ENVIRONMENT="${ENVIRONMENT:-development}"
export HOST="${HOST:-127.0.0.1}" PORT="${PORT:-5000}" SIMULATOR_PORT="${SIMULATOR_PORT:-8001}"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e .
  touch "$stamp"
fi
mkdir -p data logs outputs

# Fail here, not in a worker, if the configuration is wrong; this also applies the migrations.
.venv/bin/python -c "from backend.app import create_app; create_app()"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

.venv/bin/python -m backend.simulator --host 127.0.0.1 --port "$SIMULATOR_PORT" >>logs/simulator.log 2>&1 &
pids+=($!)
.venv/bin/gunicorn --config config/gunicorn.conf.py &
pids+=($!)
# The stress-test worker: runs evalscope jobs; on TERM it stops them (finished levels kept).
.venv/bin/python -m backend.stress.worker >>logs/stress-worker.log 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 || curl -fsS "http://$HOST:$PORT/health" >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done
echo "Performance Evaluation Platform: http://$HOST:$PORT  (simulator on 127.0.0.1:$SIMULATOR_PORT; Ctrl-C stops)"
wait -n "${pids[@]}"
