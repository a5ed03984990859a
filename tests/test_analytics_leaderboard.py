"""The leaderboard (backend/analytics/leaderboard.py, GET /api/v1/leaderboard, /leaderboard) on rows the test
writes with known right/wrong patterns: order, best and ties computed here from Wilson's formula, dataset
versions and sample counts kept apart, which run a cell shows, filters, refusals and exports."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from tests.support.analytics import T0, add_run, pattern
from tests.support.evaluations import wilson

# Right answers out of 200 on "arith" and out of 100 on "facts".
ARITH = {"m-a": 170, "m-b": 160, "m-c": 120, "m-d": 100}
FACTS = {"m-a": 50, "m-b": 80, "m-c": 78}


@pytest.fixture
def board_rows(app: Flask) -> dict[str, Any]:
    cells = [{"model": m, "dataset": "arith", "right": pattern(200, k, i), "provider": "openai" if m != "m-d" else
              "bedrock"} for i, (m, k) in enumerate(ARITH.items())]
    cells += [{"model": m, "dataset": "facts", "right": pattern(100, k, i), "kind": "qa"}
              for i, (m, k) in enumerate(FACTS.items())]
    add_run(app, "run1", cells)
    return {}


def _get(client: Any, **args: str) -> dict[str, Any]:
    response = client.get("/api/v1/leaderboard", query_string=args)
    assert response.status_code == 200, response.json
    return response.json


def _tied_by_hand(counts: dict[str, int], n: int) -> tuple[str, set[str]]:
    best = max(counts, key=counts.get)
    low = wilson(counts[best], n)[0]
    return best, {m for m, k in counts.items() if m != best and wilson(k, n)[1] >= low}


def test_scores_best_ties_and_mean_rank(client: Any, board_rows: dict[str, Any]) -> None:
    board = _get(client)
    assert [c["dataset_id"] for c in board["columns"]] == ["arith", "facts"]
    for column, counts, n in ((board["columns"][0], ARITH, 200), (board["columns"][1], FACTS, 100)):
        best, tied = _tied_by_hand(counts, n)
        assert column["best"] == best and set(column["tied"]) == tied and column["models"] == len(counts)
        for row in board["rows"]:
            cell = row["cells"].get(column["key"])
            if row["model"] not in counts:
                assert cell is None
                continue
            low, high = wilson(counts[row["model"]], n)
            assert cell["score"] == pytest.approx(counts[row["model"]] / n) and cell["n"] == n
            assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((low, high))
            assert cell["best"] is (row["model"] == best) and cell["tied"] is (row["model"] in tied)
            assert cell["job_id"] == "run1" and cell["runs"] == 1 and cell["chosen"] == "latest"
    # Here: m-a leads arith with m-b tied; m-b leads facts with m-c tied, m-a not.
    assert board["columns"][0]["best"] == "m-a" and board["columns"][0]["tied"] == ["m-b"]
    assert board["columns"][1]["best"] == "m-b" and board["columns"][1]["tied"] == ["m-c"]
    # Mean rank: arith ranks a1 b2 c3 d4, facts b1 c2 a3.
    ranks = {r["model"]: (r["mean_rank"], r["ranked_in"]) for r in board["rows"]}
    assert ranks == {"m-a": (2.0, 2), "m-b": (1.5, 2), "m-c": (2.5, 2), "m-d": (4.0, 1)}
    assert [r["model"] for r in board["rows"]] == ["m-b", "m-a", "m-c", "m-d"]


def test_other_dataset_versions_and_sample_counts_get_columns_of_their_own(app: Flask, client: Any) -> None:
    add_run(app, "v1", [{"model": "m-a", "dataset": "arith", "hash": "1" * 64, "right": pattern(50, 40)},
                        {"model": "m-b", "dataset": "arith", "hash": "1" * 64, "right": pattern(50, 30)}])
    add_run(app, "v2", [{"model": "m-a", "dataset": "arith", "hash": "2" * 64, "right": pattern(50, 20)},
                        {"model": "m-c", "dataset": "arith", "hash": "2" * 64, "right": pattern(50, 45)}],
            finished=T0 + timedelta(days=1))
    add_run(app, "v2-short", [{"model": "m-b", "dataset": "arith", "hash": "2" * 64, "right": pattern(20, 19)}],
            finished=T0 + timedelta(days=2))
    board = _get(client)
    columns = {(c["dataset_hash"][:1], c["n"]): c for c in board["columns"]}
    assert set(columns) == {("1", 50), ("2", 50), ("2", 20)}
    assert all(c["split_versions"] and f"v{c['dataset_hash'][:8]}" in c["label"] for c in columns.values())
    cells = {(r["model"], key): cell["score"] for r in board["rows"] for key, cell in r["cells"].items()}
    assert cells == {("m-a", columns["1", 50]["key"]): 0.8, ("m-b", columns["1", 50]["key"]): 0.6,
                     ("m-a", columns["2", 50]["key"]): 0.4, ("m-c", columns["2", 50]["key"]): 0.9,
                     ("m-b", columns["2", 20]["key"]): 0.95}
    assert board["notes"] and "arith" in board["notes"][0]


def test_which_run_a_cell_shows(app: Flask, client: Any) -> None:
    add_run(app, "old", [{"model": "m-a", "dataset": "arith", "right": pattern(100, 90)}])
    add_run(app, "mid", [{"model": "m-a", "dataset": "arith", "right": pattern(100, 70)}],
            finished=T0 + timedelta(days=1))
    add_run(app, "new", [{"model": "m-a", "dataset": "arith", "right": pattern(100, 80)}],
            finished=T0 + timedelta(days=2))
    shown = {pick: _get(client, pick=pick)["rows"][0]["cells"] for pick in ("latest", "best")}
    latest, best = (next(iter(cells.values())) for cells in shown.values())
    assert (latest["job_id"], latest["score"], latest["runs"]) == ("new", 0.8, 3)
    assert (best["job_id"], best["score"], best["chosen"]) == ("old", 0.9, "best")
    chosen = next(iter(_get(client, runs="mid")["rows"][0]["cells"].values()))
    assert (chosen["job_id"], chosen["chosen"]) == ("mid", "run")
    since = next(iter(_get(client, until=T0.date().isoformat(), since="2026-10-01")["rows"][0]["cells"].values()))
    assert since["job_id"] == "old" and since["runs"] == 1  # a day alone in until is included whole


def test_filters(client: Any, board_rows: dict[str, Any]) -> None:
    assert [c["dataset_id"] for c in _get(client, datasets="facts")["columns"]] == ["facts"]
    assert [c["dataset_id"] for c in _get(client, group="qa")["columns"]] == ["facts"]
    assert {r["model"] for r in _get(client, models="m-a,m-d")["rows"]} == {"m-a", "m-d"}
    assert {r["model"] for r in _get(client, provider="bedrock")["rows"]} == {"m-d"}
    assert _get(client, since="2027-01-01")["rows"] == []


@pytest.mark.parametrize(("args", "field"), [({"pick": "worst"}, "pick"), ({"group": "x"}, "group"),
                                             ({"since": "yesterday"}, "since"),
                                             ({"since": "2026-12-01", "until": "2026-11-01"}, "until"),
                                             ({"format": "pdf"}, "format"), ({"models": "a\x00b"}, "models")])
def test_bad_arguments_are_400s_naming_them(client: Any, args: dict[str, str], field: str) -> None:
    response = client.get("/api/v1/leaderboard", query_string=args)
    assert response.status_code == 400
    assert response.json["error"]["details"]["field"] == field
    page = client.get("/leaderboard", query_string=args)
    if field == "models":  # a NUL is refused before any page runs: the error page names the field
        assert page.status_code == 400 and page.mimetype == "text/html" and b"models: contains a NUL" in page.data
    elif field != "format":
        assert page.status_code == 400 and b'id="analytics-problem"' in page.data


def test_exports_read_back(client: Any, board_rows: dict[str, Any]) -> None:
    from openpyxl import load_workbook

    expected = {(m, "arith"): k / 200 for m, k in ARITH.items()} | {(m, "facts"): k / 100 for m, k in FACTS.items()}
    body = client.get("/api/v1/leaderboard?format=csv")
    assert body.headers["Content-Disposition"] == 'attachment; filename="leaderboard.csv"'
    rows = list(csv.DictReader(io.StringIO(body.data.decode())))
    assert {(r["model"], r["dataset_id"]): float(r["score"]) for r in rows} == pytest.approx(expected)
    assert all(r["n"] and r["ci_low"] and r["ci_high"] for r in rows)
    data = json.loads(client.get("/api/v1/leaderboard?format=json").data)
    assert {(r["model"], r["dataset_id"]): r["score"] for r in data["rows"]} == pytest.approx(expected)
    sheet = load_workbook(io.BytesIO(client.get("/api/v1/leaderboard?format=xlsx").data)).active
    header, *values = list(sheet.values)
    got = {(row[header.index("model")], row[header.index("dataset_id")]): row[header.index("score")] for row in values}
    assert got == pytest.approx(expected)
    html = client.get("/api/v1/leaderboard?format=html").data.decode()
    assert "<script src=" not in html and "Plotly" in html and 'data-model="m-a"' in html  # offline: all inside


def test_page_marks_best_and_tied_and_links_each_cell_to_its_run(client: Any, board_rows: dict[str, Any]) -> None:
    page = client.get("/leaderboard").data.decode()
    assert page.count('data-best="true"') == 2 and page.count('data-tied="true"') == 2
    assert 'href="/evaluations/run1"' in page
    home = client.get("/").data.decode()
    assert 'id="home-analytics"' in home and "m-a" in home


def test_model_text_is_escaped_on_the_page_and_text_in_xlsx(app: Flask, client: Any) -> None:
    from openpyxl import load_workbook

    add_run(app, "hostile", [{"model": "=HYPERLINK(1)", "name": "<script>alert(1)</script>", "dataset": "arith",
                              "dataset_name": "<b>bold</b>", "right": pattern(10, 5)}])
    page = client.get("/leaderboard").data.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page
    sheet = load_workbook(io.BytesIO(client.get("/api/v1/leaderboard?format=xlsx").data)).active
    cell = next(row[0] for row in sheet.iter_rows(min_row=2))
    assert cell.value == "=HYPERLINK(1)" and cell.data_type == "s"
