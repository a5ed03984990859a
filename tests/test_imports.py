"""The web app and the stress worker must not import evalscope: it costs seconds of CPU and ~150 MB,
and a worker that imports it freezes while following jobs (scripts/bench_stress_overhead.py found one)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.simulator import PROJECT_ROOT


def test_web_app_and_worker_leave_evalscope_unimported() -> None:
    code = (
        "import sys\n"
        "from backend.app import create_app\n"
        "import backend.jobs.worker, backend.evaluations.kind, backend.evaluations.command\n"
        "import backend.stress.command, backend.stress.service, backend.stress.pages\n"
        "print(sorted(m for m in sys.modules if m == 'evalscope' or m.startswith('evalscope.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"
