"""The models page: the catalogue as a table, filtered with HTMX, and a one-token check per model."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from backend.catalog.api import CAPABILITIES, PROVIDERS
from backend.catalog.checks import check_model
from backend.catalog.service import get_catalog, unavailable_groups
from backend.web import render

bp = Blueprint("catalog_pages", __name__)

CHECK_TIMEOUT_S = 15.0


@bp.get("/models")
def models():  # type: ignore[no-untyped-def]
    provider = request.args.get("provider", "").strip()
    capability = request.args.get("capability", "").strip()
    problems = []
    if provider and provider not in PROVIDERS:
        problems.append(f"There is no provider “{provider}”; choose one of {', '.join(PROVIDERS)}.")
        provider = ""
    if capability and capability not in CAPABILITIES:
        problems.append(f"There is no capability “{capability}”; choose one of {', '.join(CAPABILITIES)}.")
        capability = ""
    catalog = get_catalog()
    specs = [
        spec for spec in catalog.all_specs()
        if (not provider or spec.provider == provider)
        and (not capability or capability in spec.capabilities.as_list())
    ]
    described = catalog.describe(specs)
    response = render(
        "catalog/models.html", "catalog/_table.html",
        models=described, unavailable_groups=unavailable_groups(described), provider=provider, capability=capability,
        problems=problems,
        providers=PROVIDERS, capabilities=CAPABILITIES, emd_error=catalog.emd.get().error,
    )
    if problems:
        response.status_code = 400
    return response


@bp.post("/models/<key>/check")
def check(key: str):  # type: ignore[no-untyped-def]
    catalog = get_catalog()
    spec = catalog.get(key)
    if spec is None:
        return render_template("catalog/_check.html", result=None, key=key), 404
    return render_template("catalog/_check.html", result=check_model(catalog, spec, CHECK_TIMEOUT_S), key=key)
