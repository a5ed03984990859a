"""Liveness (/health) and readiness (/ready: the database answers)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy.exc import SQLAlchemyError

from backend import db as database

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():  # type: ignore[no-untyped-def]
    try:
        database.ping()
    except SQLAlchemyError as exc:
        return jsonify({"status": "unavailable", "database": str(exc.__class__.__name__)}), 503
    return jsonify({"status": "ok", "database": "ok"})
