"""The README and docs/ARCHITECTURE.md (issue 9, item 22): a title first, the two commands, every page,
and references only to files that are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

# Routes that answer GET but are not pages an operator opens: live streams, fragments, files, Prometheus.
NOT_PAGES = {"/favicon.ico", "/vendor/plotly.min.js", "/stress-tests/live", "/stress-tests/<job_id>/log", "/metrics"}

# First path segments that name something in the repository (backend's packages may be named without
# "backend/", as the architecture document does); logs/, outputs/ and data/ are made at run time.
REPO_ROOTS = {"backend", "clients", "config", "docs", "scripts", "static", "templates", "tests", "README.md",
              "pyproject.toml"}
BACKEND_PARTS = {path.name for path in (ROOT / "backend").iterdir()}


def _paragraphs(text: str) -> list[str]:
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def test_readme_starts_with_a_title_one_sentence_and_the_two_commands() -> None:
    blocks = _paragraphs(README.read_text())
    assert blocks[0] == "# Performance Evaluation Platform"
    sentence = " ".join(blocks[1].split())
    assert not sentence.startswith(("#", "```", "|", "-")), sentence
    assert sentence.endswith(".") and sentence.count(". ") == 0, f"one sentence, not: {sentence}"
    commands = blocks[2]
    assert commands.startswith("```bash\n") and commands.endswith("```")
    lines = [line.split("#", 1)[0].strip() for line in commands.splitlines()[1:-1]]
    assert [line for line in lines if line] == ["./scripts/start.sh", "./scripts/test.sh"]
    for script in ("start.sh", "test.sh"):
        assert (ROOT / "scripts" / script).stat().st_mode & 0o111, f"scripts/{script} is not executable"


def _pages_table(text: str) -> dict[str, str]:
    section = text.split("\n## Pages\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {row.split("`")[1]: row.split("|")[2].strip() for row in rows}


def _page_routes(app: Flask) -> set[str]:
    """Every GET route of the app's page blueprints (not the API, not static files), its variables as <x>."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.endpoint == "static" or "_api." in rule.endpoint:
            continue
        routes.add(re.sub(r"<(?:[a-z]+:)?[a-z_]+>", "<x>", rule.rule))
    return routes - {re.sub(r"<[a-z_]+>", "<x>", path) for path in NOT_PAGES}


def test_readme_lists_every_page_with_what_it_is_for(app: Flask) -> None:
    table = _pages_table(README.read_text())
    listed = {re.sub(r"<[a-z_]+>", "<x>", path.split("?", 1)[0]) for path in table}
    assert listed == _page_routes(app), "the README's Pages table and the app's pages differ"
    adapter = app.url_map.bind("localhost")
    for path, purpose in table.items():
        assert len(purpose.split()) >= 4, f"{path}: say what it is for"
        concrete = re.sub(r"<[a-z_]+>", "abc123", path.split("?", 1)[0])
        endpoint, _ = adapter.match(concrete, method="GET")  # raises when no page answers there
        assert not endpoint.startswith(("static", "catalog_api", "inference_api", "stress_api", "results_api"))


def _repo_paths(text: str) -> list[str]:
    """Backticked tokens that name a file or folder of the repository."""
    found = []
    for token in re.findall(r"`([^`\s]+)`", text):
        token = token.rstrip(".,;:")
        if token.startswith(("/", "./", "http")) or any(c in token for c in "<>*$="):
            continue
        if "/" in token or token in REPO_ROOTS:
            first = token.split("/", 1)[0]
            if first in REPO_ROOTS or first in BACKEND_PARTS:
                found.append(token)
    return found


@pytest.mark.parametrize("document", [README, ARCHITECTURE], ids=["README", "ARCHITECTURE"])
def test_documents_point_only_inside_the_repository(document: Path) -> None:
    text = document.read_text()
    assert "../" not in text, "a reference outside the repository"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not target.startswith(("http://", "https://", "#")):
            assert (document.parent / target.split("#", 1)[0]).exists(), target
    # What is built is named as it is in the repository; planned parts are in their own section.
    built = text.split("\n## Planned", 1)[0]
    paths = _repo_paths(built)
    assert paths, "no file named at all?"
    missing = [path for path in paths
               if not (ROOT / path.rstrip("/")).exists() and not (ROOT / "backend" / path.rstrip("/")).exists()]
    assert not missing, f"named but not in the repository: {missing}"
    # A module named on its own (`storage.py`, inside the feature a sentence is about) exists somewhere.
    modules = {name.name for folder in ("backend", "clients", "scripts", "tests")
               for name in (ROOT / folder).rglob("*.py")}
    unknown = [name for name in re.findall(r"`([A-Za-z0-9_]+\.py)`", built) if name not in modules]
    assert not unknown, f"modules that do not exist: {unknown}"


def test_architecture_describes_the_request_and_job_flows() -> None:
    text = ARCHITECTURE.read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    for wanted in ("A streamed request", "A stress test", "Where to change what", "Planned"):
        assert any(title.startswith(wanted) for title in sections), wanted
    for name in ("backend/validation.py", "prepare", "_pump", "_Mailbox", "RunWriter", "create_job", "claim",
                 "evalscope_entry", "_ingest_levels", "recover", "backend/supervisor.py"):
        assert name in text, name
