"""Browser tests: Playwright driving Debian's Chromium against the platform under gunicorn."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import TEST_MODELS
from tests.support.app_server import AppServer
from tests.support.simulator import SimulatorProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-quic", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "output" / "screenshots"


# Slower than the defaults, so that a person (or a test) can watch the columns grow.
E2E_SIMULATOR_ARGS = ["--profile", "sim-fast:decode_base_ms=40,min_output_tokens=30,max_output_tokens=60",
                      "--profile", "sim-reasoning:decode_base_ms=40",
                      "--profile", "sim-vision:decode_base_ms=30"]


# Whatever the machine has, the browser tests see no AWS account: Bedrock models are unavailable with
# a reason (and never called for real). Empty values count as unset for botocore.
NO_AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
                      "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
                      "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def e2e_simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(seed=11, extra_args=E2E_SIMULATOR_ARGS) as sim:
        yield sim


@pytest.fixture(scope="session")
def e2e_app(e2e_simulator: SimulatorProcess) -> Iterator[AppServer]:
    env = {"SIMULATOR_PORT": str(e2e_simulator.port), "PEP_CATALOG__MODELS_FILE": TEST_MODELS,
           "PEP_INFERENCE__MODEL_TIMEOUT_S": "20", "AWS_ENDPOINT_URL_CLOUDFORMATION": "http://127.0.0.1:9",
           **E2E_STRESS_SETTINGS, **NO_AWS_CREDENTIALS}
    with AppServer(env=env) as server:
        yield server


# Stress jobs in the browser tests: a short pause between levels and a worker that looks often.
E2E_STRESS_SETTINGS = {"PEP_STRESS__LEVEL_PAUSE_S": "1", "PEP_STRESS__POLL_INTERVAL_S": "0.25",
                       "PEP_STRESS__KILL_GRACE_S": "2", "PEP_STRESS__SSE_POLL_S": "0.25"}


@pytest.fixture(scope="session")
def e2e_stress_worker(e2e_app: AppServer) -> Iterator[AppServer]:
    """``python -m backend.jobs.worker`` on e2e_app's database and folders, for the tests that need it."""
    e2e_app.start_stress_worker()
    yield e2e_app
    e2e_app.stop_stress_worker()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context per test; JavaScript errors on the page fail the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under tests/output/screenshots/ for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
