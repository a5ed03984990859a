"""The platform as a client meets it, for the client and command-line tests: gunicorn and the job worker
(AppServer with ``stress_worker=True``) on a simulator with the answering profiles, in a temporary folder."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.app_server import AppServer
from tests.support.evaluations import answered_right, catalogue_with_answerers
from tests.support.simulator import PROJECT_ROOT, SimulatorProcess

BUNDLED = PROJECT_ROOT / "backend" / "evaluations" / "bundled"
QUICK = {"PEP_STRESS__LEVEL_PAUSE_S": "0.5", "PEP_STRESS__POLL_INTERVAL_S": "0.2", "PEP_STRESS__KILL_GRACE_S": "2",
         "PEP_STRESS__SSE_POLL_S": "0.2", "PEP_STRESS__HEARTBEAT_S": "1", "PEP_EVALUATIONS__SSE_POLL_S": "0.2",
         "PEP_EVALUATIONS__RETRIES": "0", "PEP_EVALUATIONS__REQUEST_TIMEOUT_S": "10"}
NO_AWS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials", "AWS_CONFIG_FILE": "/nonexistent/aws-config",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL_CLOUDFORMATION": "http://127.0.0.1:9"}


@contextmanager
def live_platform(root: Path, seed: int = 13, **env: str) -> Iterator[tuple[AppServer, SimulatorProcess]]:
    with SimulatorProcess(seed=seed) as sim:
        settings = {"SIMULATOR_PORT": str(sim.port), "PEP_CATALOG__MODELS_FILE": catalogue_with_answerers(root),
                    "PEP_EVALUATIONS__DATASETS_DIR": str(root / "eval-datasets"),
                    "PEP_EVALUATIONS__OUTPUTS_DIR": str(root / "eval-outputs"),
                    "PEP_EVALUATIONS__LOGS_DIR": str(root / "eval-logs"), **QUICK, **NO_AWS, **env}
        with AppServer(env=settings, stress_worker=True) as server:
            yield server, sim


def arithmetic_right(model: str, limit: int) -> tuple[int, int]:
    """How many of the bundled arithmetic items' first ``limit`` the simulator's ``model`` answers right,
    by its documented rule: (right, n)."""
    with (BUNDLED / "arithmetic_val.csv").open(newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)][:limit]
    return sum(answered_right(model, item) for item in ids), len(ids)
