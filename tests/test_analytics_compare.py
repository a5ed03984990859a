"""Paired comparisons (backend/analytics/paired.py, GET /api/v1/analytics/compare, /analytics/compare) on
rows with known patterns: the discordant counts, McNemar's p by hand, the samples where they disagree and
their link to the side by side, continuous scores by the paired bootstrap, versions that do not match."""

from __future__ import annotations

import csv
import io
import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from flask import Flask

from backend.analytics import stats
from tests.support.analytics import T0, add_run

N = 400
# A is right unless i % 5 == 0 (320); B is right unless i % 8 == 0 (350); C right on i % 10 != 9 (360).
A = [i % 5 != 0 for i in range(N)]
B = [i % 8 != 0 for i in range(N)]
C = [i % 10 != 9 for i in range(N)]


def by_hand(x: list[bool], y: list[bool]) -> tuple[int, int, float]:
    b = sum(1 for p, q in zip(x, y, strict=True) if p and not q)
    c = sum(1 for p, q in zip(x, y, strict=True) if q and not p)
    k, n = min(b, c), b + c
    return b, c, min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.fixture
def cells(app: Flask) -> list[int]:
    return add_run(app, "pair1", [{"model": "m-a", "name": "Model A", "dataset": "arith", "right": A},
                                  {"model": "m-b", "name": "Model B", "dataset": "arith", "right": B},
                                  {"model": "m-c", "name": "Model C", "dataset": "arith", "right": C}])


def test_two_models_exact_mcnemar_and_disagreements(client: Any, cells: list[int]) -> None:
    body = client.get("/api/v1/analytics/compare?models=m-a,m-b&dataset=arith").json
    assert body["n"] == N and body["binary"] and [c["cell_id"] for c in body["cells"]] == cells[:2]
    (pair,) = body["pairs"]
    b, c, p = by_hand(A, B)
    assert pair["counts"]["only_a"] == b and pair["counts"]["only_b"] == c
    assert pair["p"] == pytest.approx(p, rel=1e-9) and pair["test"] == "mcnemar"
    assert pair["diff"] == pytest.approx((sum(B) - sum(A)) / N)
    assert pair["ci_low"] < pair["diff"] < pair["ci_high"] and pair["ci_low"] > 0
    disagree = {f"s{i}" for i in range(N) if A[i] != B[i]}
    assert pair["disagreements"] == len(disagree) == b + c
    assert {d["sample_id"] for d in pair["disagreement_samples"]} <= disagree
    assert len(pair["disagreement_samples"]) == min(100, len(disagree))
    assert pair["side_by_side"] == {"a": cells[0], "b": cells[1]}
    diff = 100 * (sum(B) - sum(A)) / N
    assert pair["sentence"].startswith(f"Model B is better than Model A by {diff:.1f} points, 95 % CI ")
    assert pair["sentence"].endswith(f"p = {p:.3f}, n = {N}")
    # Each model's score on the common samples, with its interval.
    assert [c["score"]["score"] for c in body["cells"]] == [sum(A) / N, sum(B) / N]


def test_three_models_give_every_pair_and_the_page_links_the_side_by_side(client: Any, cells: list[int]) -> None:
    body = client.get("/api/v1/analytics/compare?models=m-a,m-b,m-c&dataset=arith").json
    assert [(p["a"], p["b"]) for p in body["pairs"]] == [("m-a", "m-b"), ("m-a", "m-c"), ("m-b", "m-c")]
    for pair, (x, y) in zip(body["pairs"], ((A, B), (A, C), (B, C)), strict=True):
        assert pair["p"] == pytest.approx(by_hand(x, y)[2], rel=1e-9)
    page = client.get("/analytics/compare?models=m-a,m-b&dataset=arith").data.decode()
    assert f'href="/evaluations/side-by-side?a={cells[0]}&amp;b={cells[1]}"' in page
    assert "Model B is better than Model A" in page
    rows = list(csv.DictReader(io.StringIO(client.get(
        "/api/v1/analytics/compare?models=m-a,m-b,m-c&dataset=arith&format=csv").data.decode())))
    assert [(r["model_a"], r["model_b"]) for r in rows] == [(p["a"], p["b"]) for p in body["pairs"]]
    assert [float(r["p"]) for r in rows] == pytest.approx([p["p"] for p in body["pairs"]])
    report = client.get(f"/api/v1/analytics/compare?cells={cells[0]},{cells[1]}&format=html").data.decode()
    assert "<script src=" not in report and "Model B is better than Model A" in report


def test_only_common_samples_are_compared(app: Flask, client: Any) -> None:
    ids_a = [f"q{i}" for i in range(30)]
    ids_b = [f"q{i}" for i in range(10, 40)]
    add_run(app, "partial", [{"model": "m-a", "dataset": "facts", "right": [True] * 30, "sample_ids": ids_a},
                             {"model": "m-b", "dataset": "facts", "right": [i % 2 == 0 for i in range(30)],
                              "sample_ids": ids_b}])
    body = client.get("/api/v1/analytics/compare?models=m-a,m-b&dataset=facts").json
    assert body["n"] == 20 and [c["left_out"] for c in body["cells"]] == [10, 10]
    only_a = sum(1 for i in range(10, 30) if (i - 10) % 2 == 1)  # A right on all, B wrong on odd offsets
    assert body["pairs"][0]["counts"]["only_a"] == only_a and body["pairs"][0]["counts"]["only_b"] == 0


def test_continuous_scores_use_the_paired_bootstrap(app: Flask, client: Any) -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(0.2, 0.8, 300)
    b = np.clip(a + 0.1 + rng.normal(0, 0.05, 300), 0, 1)
    add_run(app, "rouge", [{"model": "m-a", "dataset": "qa", "scores": a.tolist(), "kind": "qa"},
                           {"model": "m-b", "dataset": "qa", "scores": b.tolist(), "kind": "qa"}])
    pair = client.get("/api/v1/analytics/compare?models=m-a,m-b&dataset=qa").json["pairs"][0]
    order = sorted(range(300), key=lambda i: f"s{i}")  # the samples are matched by id, in id order
    diffs = (b - a)[order]
    low, high, p = stats.paired_bootstrap(diffs)
    assert pair["test"] == "bootstrap" and pair["counts"] is None
    assert pair["diff"] == pytest.approx(diffs.mean())
    assert (pair["ci_low"], pair["ci_high"], pair["p"]) == pytest.approx((low, high, p))
    half = 1.959964 * diffs.std(ddof=1) / math.sqrt(len(diffs))  # the normal interval, by hand
    assert pair["ci_low"] == pytest.approx(diffs.mean() - half, abs=0.3 * half)
    assert pair["p"] < 0.001


def test_versions_that_do_not_match_are_refused_or_the_common_one_used(app: Flask, client: Any) -> None:
    add_run(app, "h1", [{"model": "m-a", "dataset": "arith", "hash": "1" * 64, "right": A[:50]},
                        {"model": "m-b", "dataset": "arith", "hash": "1" * 64, "right": B[:50]}])
    add_run(app, "h2", [{"model": "m-a", "dataset": "arith", "hash": "2" * 64, "right": A[:60]}],
            finished=T0 + timedelta(days=1))
    body = client.get("/api/v1/analytics/compare?models=m-a,m-b&dataset=arith").json
    assert body["dataset_hash"] == "1" * 64 and body["n"] == 50  # the newest version both have
    assert client.get("/api/v1/analytics/compare?models=m-a,m-b&dataset=arith&version=2222").status_code == 400
    add_run(app, "h3", [{"model": "m-c", "dataset": "arith", "hash": "3" * 64, "right": C[:50]}])
    refused = client.get("/api/v1/analytics/compare?models=m-a,m-c&dataset=arith")
    assert refused.status_code == 400 and refused.json["error"]["details"]["field"] == "dataset"
    assert "never run on one version" in refused.json["error"]["message"]
    cells = [c["cell_id"] for c in client.get("/api/v1/leaderboard").json["rows"][0]["cells"].values()]
    assert cells  # and named cells on different versions are refused too
    ids = sorted({cell["cell_id"] for r in client.get("/api/v1/leaderboard?models=m-a").json["rows"]
                  for cell in r["cells"].values()})
    mixed = client.get(f"/api/v1/analytics/compare?cells={ids[0]},{ids[-1]}")
    assert mixed.status_code == 400 and mixed.json["error"]["details"]["field"] == "cells"


@pytest.mark.parametrize(("query", "field"), [("models=m-a&dataset=arith", "models"), ("models=m-a,m-b", "dataset"),
                                              ("models=m-a,zz&dataset=arith", "models"), ("cells=1,x", "cells"),
                                              ("models=m-a,m-b&dataset=arith&version=xyz", "version"),
                                              ("models=m-a,m-b&dataset=arith&format=pdf", "format")])
def test_bad_arguments(client: Any, cells: list[int], query: str, field: str) -> None:
    response = client.get(f"/api/v1/analytics/compare?{query}")
    assert response.status_code == 400 and response.json["error"]["details"]["field"] == field
