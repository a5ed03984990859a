"""GET /api/v1/models and /api/v1/models/<key>."""

from __future__ import annotations

from typing import get_args

from flask import Blueprint, jsonify, request

from backend.catalog.registry import ProviderName
from backend.catalog.service import get_catalog
from backend.errors import ApiError, NotFound
from backend.openapi import documented
from backend.openapi.models import JSON, ModelList

bp = Blueprint("catalog_api", __name__, url_prefix="/api/v1/models")

PROVIDERS = get_args(ProviderName)
CAPABILITIES = ("streaming", "images", "video", "reasoning")


@bp.get("")
@documented(responses={200: ModelList})
def list_models():  # type: ignore[no-untyped-def]
    provider = request.args.get("provider")
    capability = request.args.get("capability")
    if provider and provider not in PROVIDERS:
        raise ApiError(f"provider must be one of {', '.join(PROVIDERS)}", field="provider")
    if capability and capability not in CAPABILITIES:
        raise ApiError(f"capability must be one of {', '.join(CAPABILITIES)}", field="capability")
    catalog = get_catalog()
    specs = [
        spec for spec in catalog.all_specs()
        if (not provider or spec.provider == provider)
        and (not capability or capability in spec.capabilities.as_list())
    ]
    return jsonify({"models": catalog.describe(specs)})


@bp.get("/<key>")
@documented(responses={200: JSON})
def get_model(key: str):  # type: ignore[no-untyped-def]
    catalog = get_catalog()
    spec = catalog.get(key)
    if spec is None:
        raise NotFound(f"unknown model {key!r}", known=catalog.known_keys())
    return jsonify(catalog.describe([spec])[0])
