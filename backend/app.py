"""The application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask

from backend import db, errors, logging_setup
from backend.config import PROJECT_ROOT, ConfigError, load_config


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    config = load_config(overrides=overrides)
    if not config["server"]["secret_key"]:
        raise ConfigError("server.secret_key is not set: export SECRET_KEY (required in production)")
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config["PEP"] = config
    app.config["SECRET_KEY"] = config["server"]["secret_key"]
    app.config["MAX_CONTENT_LENGTH"] = int(config["inference"]["max_request_bytes"])
    app.config["JSON_SORT_KEYS"] = False

    logging_setup.init_app(app)
    db.init_app(app)
    errors.init_app(app)

    from backend.catalog import api as catalog_api
    from backend.catalog import pages as catalog_pages
    from backend.catalog import service as catalog_service
    from backend.health import bp as health_bp
    from backend.inference import api as inference_api
    from backend.inference import pages as inference_pages
    from backend.results import api as results_api
    from backend.results import capacity_api
    from backend.results import pages as results_pages
    from backend.stress import api as stress_api
    from backend.stress import pages as stress_pages
    from backend.web import bp as web_bp

    catalog_service.init_app(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(catalog_api.bp)
    app.register_blueprint(inference_api.bp)
    app.register_blueprint(stress_api.bp)
    app.register_blueprint(results_api.bp)
    app.register_blueprint(capacity_api.bp)
    app.register_blueprint(capacity_api.pages_bp)
    app.register_blueprint(results_pages.bp)  # before web_bp, whose /results placeholder it replaces
    app.register_blueprint(web_bp)
    app.register_blueprint(catalog_pages.bp)
    app.register_blueprint(inference_pages.bp)
    app.register_blueprint(stress_pages.bp)
    return app
