from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from backend.app import create_app
from tests.support import postgres
from tests.support.app_server import AppServer
from tests.support.bedrock_server import BedrockServer
from tests.support.simulator import SimulatorProcess

TEST_MODELS = str(Path(__file__).parent / "data" / "models.yaml")
BEDROCK_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIDTESTTESTTEST",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--database", choices=("sqlite", "postgresql"), default="sqlite",
                     help="the database every app and subprocess of the run uses: a fresh SQLite file per test "
                          "(default), or a fresh database per test on a PostgreSQL server (PEP_TEST_POSTGRES_URL, "
                          "or one this run starts)")


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a PostgreSQL server's ``postgres`` database: the one scripts/test.sh started, or a
    throwaway one for this process."""
    if os.environ.get("PEP_TEST_POSTGRES_URL"):
        yield os.environ["PEP_TEST_POSTGRES_URL"]
        return
    folder = Path(tempfile.mkdtemp(prefix="pep-postgres-"))  # not under pytest's folder: the server's user
    server = postgres.PostgresServer(folder).start()         # (postgres, when we are root) cannot enter it
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def _postgres_template(postgres_server_url: str) -> Iterator[str]:
    """A database migrated to the newest revision once per process (per xdist worker), that each test's
    database is copied from: CREATE DATABASE ... TEMPLATE costs a file copy, not the migrations."""
    name = postgres.create_template(postgres_server_url)
    yield name
    postgres.drop_database(postgres_server_url, name)


@pytest.fixture(autouse=True)
def _database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """With ``--database=postgresql``, each test (its apps and the subprocesses it starts) gets a new
    PostgreSQL database through ``DATABASE_URL``, which wins over the SQLite path tests give; dropped after.
    It is already migrated (a copy of the session's template) unless the test is marked ``empty_database``.
    Yields the kind of database: "sqlite" or "postgresql"."""
    if request.config.getoption("--database") != "postgresql":
        yield "sqlite"
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.fail("a sqlite_only test was selected with --database=postgresql (deselect: -m 'not sqlite_only')")
    server_url = request.getfixturevalue("postgres_server_url")
    template = None if request.node.get_closest_marker("empty_database") else \
        request.getfixturevalue("_postgres_template")
    url, name = postgres.create_database(server_url, template=template)
    monkeypatch.setenv("DATABASE_URL", url)
    yield "postgresql"
    postgres.drop_database(server_url, name)  # WITH (FORCE): the test's pooled connections are closed


@pytest.fixture(scope="session", autouse=True)
def _evaluation_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every app and subprocess of the session keeps evaluation datasets, outputs and logs in a temporary
    folder unless a test gives its own (overrides win over the environment): never the checkout's data/."""
    root = tmp_path_factory.mktemp("evaluations")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("datasets_dir", "outputs_dir", "logs_dir"):
            patch.setenv(f"PEP_EVALUATIONS__{key.upper()}", str(root / key))
        yield


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
