"""Security headers on every response, and CORS only for the configured origins.

The Content-Security-Policy allows scripts from this site only: no inline script, no ``eval`` (htmx runs
with ``allowEval: false``, set in templates/base.html; pages keep their data in ``<script
type="application/json">`` blocks, which are never executed). ``style-src`` keeps ``'unsafe-inline'``
because plotly.js writes ``style`` attributes while drawing (d3's ``.attr("style", ...)``) and the
templates carry a few ``style=""`` attributes; styles cannot run code. The offline HTML reports (a
download with plotly and its drawing script inline) get a policy that allows exactly their own inline
scripts, by SHA-256 hash, and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import re

from flask import Flask, Response, current_app, request

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data: blob:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "frame-ancestors": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
}
FIXED = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
# An executable inline script: <script> without a type, or with a JavaScript one (JSON data blocks are inert).
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.S | re.I)
_DATA_TYPE = re.compile(r"""\btype\s*=\s*["']?application/(ld\+)?json""", re.I)


def policy(extra_scripts: list[str] | None = None) -> str:
    directives = dict(POLICY)
    if extra_scripts:
        directives["script-src"] = " ".join(["'self'", *extra_scripts])
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def inline_script_hashes(html: str) -> list[str]:
    """``'sha256-...'`` sources for every executable inline script of a document."""
    hashes = []
    for match in _INLINE_SCRIPT.finditer(html):
        if _DATA_TYPE.search(match.group("attrs")):
            continue
        digest = hashlib.sha256(match.group("body").encode()).digest()
        hashes.append(f"'sha256-{base64.b64encode(digest).decode()}'")
    return hashes


def _is_html_download(response: Response) -> bool:
    return (response.mimetype == "text/html" and not response.direct_passthrough and not response.is_streamed
            and response.headers.get("Content-Disposition", "").startswith("attachment"))


def apply(response: Response) -> Response:
    for name, value in FIXED.items():
        response.headers.setdefault(name, value)
    if "Content-Security-Policy" not in response.headers:
        extra = inline_script_hashes(response.get_data(as_text=True)) if _is_html_download(response) else None
        response.headers["Content-Security-Policy"] = policy(extra)
    _cors(response)
    return response


def _cors(response: Response) -> None:
    origin = request.headers.get("Origin")
    allowed = current_app.config["PEP"]["security"]["cors_origins"]
    if not allowed or not request.path.startswith("/api/"):
        return
    response.vary.add("Origin")
    if origin is None or origin.lower() not in {o.lower() for o in allowed}:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PUT, PATCH, DELETE"
    response.headers["Access-Control-Max-Age"] = "600"


def init_app(app: Flask) -> None:
    app.after_request(apply)
