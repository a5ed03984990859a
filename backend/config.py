"""Configuration: defaults < environments/<ENVIRONMENT>.yaml < environment variables < overrides.

Every key lives in a two-level tree (``section.key``). An environment variable overrides one key:
``PEP_<SECTION>__<KEY>`` (for example ``PEP_INFERENCE__MODEL_TIMEOUT_S=30``); its value is parsed as
YAML, so numbers, booleans and lists keep their types. A few conventional names are accepted too
(see ``ALIASES``). Secrets are never read from here: they come from the environment where used.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"
ENV_PREFIX = "PEP_"

# Conventional variable names that map onto one key each.
ALIASES: dict[str, str] = {
    "HOST": "server.host",
    "PORT": "server.port",
    "SECRET_KEY": "server.secret_key",
    "DATABASE_PATH": "database.path",
    "DATABASE_URL": "database.url",
    "LOG_LEVEL": "logging.level",
    "AWS_REGION": "aws.region",
    "SIMULATOR_PORT": "simulator.port",
}


class ConfigError(ValueError):
    """The configuration files or variables are inconsistent."""


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping")
    return data


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    if not key:
        raise ConfigError(f"configuration key {dotted!r} must be 'section.key'")
    tree.setdefault(section, {})[key] = value


def env_overrides(environ: Mapping[str, str], known: Mapping[str, Any]) -> dict[str, Any]:
    """Keys set by environment variables, checked against the known tree so typos fail loudly."""
    tree: dict[str, Any] = {}
    for name, dotted in ALIASES.items():
        if name in environ and environ[name] != "":
            _set_dotted(tree, dotted, yaml.safe_load(environ[name]))
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section not in known or key not in known[section]:
            raise ConfigError(f"{name} names no configuration key ({section}.{key})")
        _set_dotted(tree, f"{section}.{key}", yaml.safe_load(raw) if raw != "" else None)
    return tree


def load_config(
    environment: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    environment = environment or environ.get("ENVIRONMENT", "development")
    if not (CONFIG_DIR / "environments" / f"{environment}.yaml").exists():
        raise ConfigError(f"ENVIRONMENT={environment!r} has no config/environments/{environment}.yaml")
    config = _read_yaml(CONFIG_DIR / "environments" / "default.yaml")
    config = deep_merge(config, _read_yaml(CONFIG_DIR / "environments" / f"{environment}.yaml"))
    config = deep_merge(config, env_overrides(environ, config))
    config = deep_merge(config, overrides or {})
    config["environment"] = environment
    _check_security(config)
    _check_targets(config)
    return config


def _check_security(config: dict[str, Any]) -> None:
    """The ``auth`` and ``security`` keys (backend/security/): types checked here, so that a typo fails at
    start-up; authentication is forced on in production whatever the files or variables say."""
    auth = config.setdefault("auth", {})
    if config["environment"] == "production":
        auth["enabled"] = True
    if not isinstance(auth.get("enabled", False), bool):
        raise ConfigError(f"auth.enabled must be true or false, not {auth.get('enabled')!r}")
    tokens = auth.get("tokens") or []
    if isinstance(tokens, str):
        tokens = [part for part in tokens.split(",") if part.strip()]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ConfigError("auth.tokens must be a list of \"role:token\" strings (or one comma-separated string)")
    auth["tokens"] = tokens
    hours = auth.get("session_hours", 12)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or hours <= 0:
        raise ConfigError(f"auth.session_hours must be a positive number, not {hours!r}")
    for key, default, kind in (("login_max_failures", 5, int), ("login_window_s", 300, int | float)):
        value = auth.setdefault(key, default)
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            raise ConfigError(f"auth.{key} must be a positive number, not {value!r}")
    security = config.setdefault("security", {})
    origins = security.get("cors_origins") or []
    if isinstance(origins, str):
        origins = [part.strip() for part in origins.split(",") if part.strip()]
    for origin in origins:
        if not isinstance(origin, str) or not origin.startswith(("http://", "https://")) or \
                origin.rstrip("/").count("/") != 2:
            raise ConfigError(f"security.cors_origins: {origin!r} is not an origin like https://host:port")
    security["cors_origins"] = [origin.rstrip("/") for origin in origins]


def _check_targets(config: dict[str, Any]) -> None:
    """``targets.*`` (backend/security/targets.py): a rule that cannot be read fails at start-up."""
    from backend.security.targets import check_config

    try:
        config["targets"] = check_config(config.get("targets") or {})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """A configured path, relative to the project root unless absolute."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate
