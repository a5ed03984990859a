from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from backend.app import create_app
from tests.support.app_server import AppServer
from tests.support.bedrock_server import BedrockServer
from tests.support.simulator import SimulatorProcess

TEST_MODELS = str(Path(__file__).parent / "data" / "models.yaml")
BEDROCK_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIDTESTTESTTEST",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(seed=7) as sim:
        yield sim


@pytest.fixture(scope="session")
def bedrock_server() -> Iterator[BedrockServer]:
    with BedrockServer() as server:
        yield server


@pytest.fixture(scope="session")
def live_app(simulator: SimulatorProcess, bedrock_server: BedrockServer) -> Iterator[AppServer]:
    """The platform under gunicorn + gevent, wired to the simulator and the local Bedrock server."""
    env = {
        "SIMULATOR_PORT": str(simulator.port),
        "PEP_CATALOG__MODELS_FILE": TEST_MODELS,
        "PEP_INFERENCE__MODEL_TIMEOUT_S": "4",
        "PEP_INFERENCE__HEARTBEAT_S": "1",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock_server.url,
        "AWS_ENDPOINT_URL_CLOUDFORMATION": "http://127.0.0.1:9",
        **BEDROCK_CREDENTIALS,
    }
    with AppServer(env=env) as server:
        yield server


@pytest.fixture
def app(tmp_path: Path, simulator: SimulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """An in-process app on a fresh SQLite file (a file, so subprocesses could see it too)."""
    monkeypatch.setenv("ENVIRONMENT", "test")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "catalog": {"models_file": TEST_MODELS},
        "simulator": {"port": simulator.port},
    })


@pytest.fixture
def client(app: Flask):  # type: ignore[no-untyped-def]
    return app.test_client()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop running in the main thread for
    the rest of the session, and tests that call asyncio.run() cannot run after it starts."""
    items.sort(key=lambda item: "/e2e/" in str(item.path))
