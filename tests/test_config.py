from __future__ import annotations

import pytest

from backend.config import ConfigError, load_config


def test_defaults_then_environment_file() -> None:
    dev = load_config("development", environ={})
    test = load_config("test", environ={})
    assert dev["logging"]["level"] == "DEBUG"  # development.yaml over default.yaml
    assert test["inference"]["model_timeout_s"] == 30  # test.yaml over default.yaml (120)
    assert dev["inference"]["model_timeout_s"] == 120
    assert test["environment"] == "test"


def test_environment_variable_beats_file_and_overrides_beat_both() -> None:
    environ = {"PEP_INFERENCE__MODEL_TIMEOUT_S": "45", "PEP_LOGGING__LEVEL": "WARNING"}
    config = load_config("test", environ=environ)
    assert config["inference"]["model_timeout_s"] == 45  # parsed as YAML: an int, not "45"
    assert config["logging"]["level"] == "WARNING"
    config = load_config("test", environ=environ, overrides={"inference": {"model_timeout_s": 7}})
    assert config["inference"]["model_timeout_s"] == 7
    assert config["inference"]["heartbeat_s"] == 15  # siblings of an overridden key survive


def test_conventional_aliases() -> None:
    config = load_config("development", environ={"PORT": "5123", "SIMULATOR_PORT": "9001", "HOST": "0.0.0.0"})
    assert config["server"]["port"] == 5123
    assert config["simulator"]["port"] == 9001
    assert config["server"]["host"] == "0.0.0.0"


def test_environment_chosen_by_variable() -> None:
    assert load_config(environ={"ENVIRONMENT": "production"})["environment"] == "production"
    assert load_config(environ={})["environment"] == "development"


@pytest.mark.parametrize("environ", [{"PEP_INFERENCE__NO_SUCH_KEY": "1"}, {"PEP_NOSECTION__X": "1"}])
def test_unknown_variable_fails_loudly(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="names no configuration key"):
        load_config("test", environ=environ)


def test_unknown_environment_fails() -> None:
    with pytest.raises(ConfigError, match="staging"):
        load_config("staging", environ={})


def test_production_needs_a_secret_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from backend.app import create_app

    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({"environment": "production", "server": {"secret_key": None},
                    "database": {"path": str(tmp_path / "a.db")}, "logging": {"dir": str(tmp_path)}})
