"""The application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask

from backend import db, errors, logging_setup, security
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
    security.init_app(app)  # CSRF refusal, sign-in and roles, security headers (backend/security/)

    from backend.catalog import api as catalog_api
    from backend.catalog import pages as catalog_pages
    from backend.catalog import service as catalog_service
    from backend.evaluations import api as evaluations_api
    from backend.evaluations import pages as evaluation_pages
    from backend.health import bp as health_bp
    from backend.inference import api as inference_api
    from backend.inference import pages as inference_pages
    from backend.metrics import api as metrics_api
    from backend.results import api as results_api
    from backend.results import capacity_api
    from backend.results import pages as results_pages
    from backend.stress import api as stress_api
    from backend.stress import pages as stress_pages
    from backend.web import bp as web_bp

    catalog_service.init_app(app)
    app.register_blueprint(health_bp)
    metrics_api.install(app)  # /metrics, and every request counted
    app.register_blueprint(catalog_api.bp)
    app.register_blueprint(inference_api.bp)
    app.register_blueprint(stress_api.bp)
    from backend.jobs import api as jobs_api
    app.register_blueprint(jobs_api.bp)
    app.register_blueprint(results_api.bp)
    app.register_blueprint(capacity_api.bp)
    app.register_blueprint(capacity_api.pages_bp)
    app.register_blueprint(results_pages.bp)  # before web_bp, whose /results placeholder it replaces
    app.register_blueprint(web_bp)
    app.register_blueprint(catalog_pages.bp)
    app.register_blueprint(inference_pages.bp)
    app.register_blueprint(stress_pages.bp)
    from backend.evaluations import datasets_api, datasets_pages
    app.register_blueprint(datasets_api.bp), app.register_blueprint(datasets_pages.bp)
    app.register_blueprint(evaluations_api.bp)
    evaluation_pages.init_app(app)  # the review API and the evaluation pages
    from backend.analytics import api as analytics_api
    from backend.analytics import pages as analytics_pages
    app.register_blueprint(analytics_api.bp), app.register_blueprint(analytics_pages.bp)
    from backend import openapi
    openapi.init_app(app)  # GET /api/v1/openapi.json and /api/docs, built from the routes above
    return app
