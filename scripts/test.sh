#!/usr/bin/env bash
# Install what the tests need and run them all (lint first), on SQLite, then the database-touching ones on
# PostgreSQL. Extra arguments go to pytest, in both passes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-test-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi

# Browser tests drive Debian's Chromium (Playwright's own browser download does not work offline).
if [ ! -x /usr/bin/chromium ]; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi

# The command line's tests run it in a real terminal (tests/test_cli.py).
if ! command -v tmux >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq tmux >/dev/null
fi

.venv/bin/ruff check .
# Two workers, each taking whole test files (module-scoped servers stay in one process): most tests wait on
# subprocesses and servers, so two share the machine's cores well. PYTEST_WORKERS=0 runs them in one process.
status=0
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@" || status=$?

# The same tests on PostgreSQL (Debian's package; a throwaway server, each test its own database copied
# from a migrated template): PYTEST_DATABASES=sqlite skips this pass for a quicker local run.
if [ "${PYTEST_DATABASES:-sqlite,postgresql}" = sqlite ]; then
  exit "$status"
fi
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
fi
pg_dir="$(mktemp -d /tmp/pep-postgres-XXXXXX)"  # not under the checkout: the server's user must enter it
trap '.venv/bin/python -m tests.support.postgres stop "$pg_dir"; rm -rf "$pg_dir"' EXIT
PEP_TEST_POSTGRES_URL="$(.venv/bin/python -m tests.support.postgres start "$pg_dir")"
export PEP_TEST_POSTGRES_URL
# Left out of this pass, to keep the script's time down on two cores (2026-12-03, a fresh clone: the SQLite
# pass 1157 s, this one 463 s, 29 min with the install; over the 15 minutes it should take: most of the time is
# CPU, about 3.8 s of it to import evalscope in each of the few hundred evalscope processes the tests start,
# so that a test taking 15 s alone takes up to 64 s in the run; every file but tests/e2e took 643 s here):
# - the browser tests (tests/e2e): Chromium drives pages whose queries the page and API tests run here;
# - files that spend their time in evalscope rather than in the database, whose database code the files
#   kept here run too: the capacity search end to end (290 s; its planner and jobs: test_capacity_search_jobs),
#   evaluation jobs and their recovery (141 s; ingest, a worker killed and a new one re-attaching:
#   test_faults_eval_ingest), stress datasets and run options (evalscope's arguments), a failing endpoint
#   and a full disk (test_stress_jobs covers failed jobs), artefact storage (S3 and folders; its rows:
#   test_stress_artefacts), the API fuzzer (NUL and other hostile text: test_hostile_inputs), sharded levels
#   (36 s; their rows are stored as any level's: test_stress_jobs), levels spread over two workers (55 s; on
#   PostgreSQL in test_multihost, their group's rows here: test_spread_groups) and the endpoints failing one way each
#   (28 s; what they test is the reason evalscope's logs give, not the database);
# - the Python client and the pep command (about 150 s): they test HTTP, streams and the terminal; the routes'
#   database code they call is the API tests' here;
# - files that touch no database, or only to start an app: the simulator, evalscope's entry point, the
#   providers and their faults (Bedrock, OpenAI, EMD discovery), live streaming, start.sh, the imports;
# - files that run on PostgreSQL in the SQLite pass already (their own server or databases): dbcopy, the
#   multi-host test, the LISTEN/NOTIFY wake-up.
# Test files given as arguments replace this selection (the files left out stay out).
pg_paths=(tests)
for arg in "$@"; do
  if [ -e "${arg%%::*}" ]; then pg_paths=(); fi
done
pg_skip=(tests/e2e tests/test_capacity_search_e2e.py tests/test_evaluations_jobs.py
  tests/test_evaluations_recovery.py tests/test_stress_datasets.py tests/test_stress_run_options.py
  tests/test_faults_jobs.py tests/test_faults_disk.py tests/test_artifact_storage.py tests/test_fuzz_api.py
  tests/test_simulator.py tests/test_simulator_answers.py tests/test_evalscope_entry.py
  tests/test_bedrock_plugin.py tests/test_bedrock_provider.py tests/test_openai_provider.py
  tests/test_emd_discovery.py tests/test_faults_inference.py tests/test_multi_inference_live.py
  tests/test_start_script.py tests/test_imports.py tests/test_dbcopy.py tests/test_multihost.py
  tests/test_job_wakeup.py tests/test_stress_shards.py tests/test_stress_spread.py tests/test_faults_jobs_stream.py
  tests/test_client.py tests/test_cli.py)
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --database=postgresql -m 'not sqlite_only' \
  "${pg_skip[@]/#/--ignore=}" "${pg_paths[@]}" "$@" || status=$?
exit "$status"
