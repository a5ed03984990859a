"""Cross-site request forgery: a state-changing request from another site is refused, auth on or off.

An origin check rather than a form token, so that every form post and every htmx request is covered
without touching a template (the algorithm of Go's ``net/http.CrossOriginProtection``):

1. GET, HEAD and OPTIONS change nothing and pass.
2. A request with an ``Authorization: Bearer`` header and no cookie passes: a browser never adds that
   header to a cross-site form or fetch by itself, so such a call is not CSRF-prone (it is a script's).
3. ``Sec-Fetch-Site`` (sent by every current browser): ``same-origin`` and ``none`` (typed, bookmarked)
   pass, anything else (``cross-site``, ``same-site``: another port of the same host is another origin) is
   refused unless the ``Origin`` is one of ``security.cors_origins``.
4. Without it, the ``Origin`` (or, without that, the ``Referer``'s origin) must be this site's; ``Origin:
   null`` (a sandboxed or privacy-stripped page) is refused. A request with neither comes from a client
   that is not a browser (curl, the test client), which holds no victim's cookie to abuse, and passes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, request
from werkzeug.exceptions import Forbidden

from backend.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def _this_site() -> str:
    return f"{request.scheme}://{request.host}".lower()


def refusal() -> str | None:
    """Why this request is refused as cross-site, or None when it may go on."""
    if request.method in SAFE_METHODS:
        return None
    if request.headers.get("Authorization", "").lower().startswith("bearer ") and not request.cookies:
        return None
    trusted = {origin.lower() for origin in current_app.config["PEP"]["security"]["cors_origins"]}
    origin_header = request.headers.get("Origin")
    origin = _origin_of(origin_header) if origin_header and origin_header != "null" else None
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site in ("same-origin", "none") or (origin is not None and origin in trusted):
            return None
        return f"a {fetch_site} request (Sec-Fetch-Site) may not {request.method} here"
    if origin_header is not None:
        claimed = origin
        if claimed is None:
            return f"Origin {origin_header!r} is not this site"
    else:
        referer = request.headers.get("Referer")
        if referer is None:
            return None
        claimed = _origin_of(referer)
    if claimed is not None and (claimed == _this_site() or claimed in trusted):
        return None
    return f"a request from {claimed or 'an unknown origin'} may not {request.method} on {_this_site()}"


def guard() -> None:
    reason = refusal()
    if reason is None:
        return
    current_app.logger.warning("refused cross-site %s %s: %s", request.method, request.path, reason)
    if request.path.startswith("/api/"):
        raise ApiError(f"cross-site request refused: {reason}", status=403, code="cross_site_refused")
    raise Forbidden(f"Cross-site request refused: {reason}.")
