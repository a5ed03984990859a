"""A leaderboard built from real runs: the worker runs ``evalscope eval`` (offline) for three of the simulator's
answering models, whose true accuracies are set (0.75, 0.6 and, added here, 0.2), on the bundled multiple-choice
dataset. Which items each model gets right is recomputed here from the simulator's documented rule (a seeded
hash per item), so the expected scores, their order, the ties (Wilson's formula) and McNemar's p (the binomial
by hand) are all independent of the code under test."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TEST_MODELS
from tests.support.evaluations import bundled_id, create, finished, make_app, wilson
from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker

MODELS = {"sim-answer-a": (3, 0.75), "sim-answer-b": (12, 0.6), "sim-answer-c": (7, 0.2)}  # seed, accuracy
EXTRA_PROFILE = ("sim-answer-c:behavior=answer,accuracy=0.2,seed=7,max_batch=100000,prefill_ms_per_token=0,"
                 "decode_base_ms=1,decode_ms_per_seq=0")


def right(model: str, item_id: str) -> bool:
    """backend/simulator/answers.py's rule, recomputed."""
    seed, accuracy = MODELS[model]
    return int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16) / 2**32 < accuracy


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, dict[str, Any], list[str]]]:
    tmp = tmp_path_factory.mktemp("analytics-sim")
    catalogue = yaml.safe_load(Path(TEST_MODELS).read_text())
    for key in MODELS:
        catalogue["models"][key] = {"name": key, "provider": "simulator", "model_id": key}
    models_file = tmp / "models.yaml"
    models_file.write_text(yaml.safe_dump(catalogue))
    sim = SimulatorProcess(extra_args=["--profile", EXTRA_PROFILE]).start()
    app = make_app(tmp, sim.port, models_file=str(models_file))
    worker = ThreadWorker(app)
    try:
        client = app.test_client()
        dataset = bundled_id(client, "mcq")
        job = create(client, models=list(MODELS), datasets=[dataset], max_tokens=32)
        job = finished(client, job["id"], timeout=240)
        assert job["status"] == "completed", job["error"]
        from backend.evaluations import datasets

        with app.app_context():
            items = [item["id"] for item in datasets.read_items(datasets.get_dataset(dataset),
                                                                app.config["PEP"]["evaluations"])]
        yield app, client, job, items
    finally:
        worker.close()
        sim.stop()


def test_the_leaderboard_orders_the_answering_models_and_marks_ties(run: tuple[Any, Any, dict, list[str]]) -> None:
    _app, client, job, items = run
    n = len(items)
    counts = {m: sum(right(m, i) for i in items) for m in MODELS}
    board = client.get("/api/v1/leaderboard").json
    (column,) = board["columns"]
    assert column["n"] == n and column["metric"] == "acc" and column["models"] == 3
    expected_order = sorted(MODELS, key=lambda m: -counts[m])
    assert [r["model"] for r in board["rows"]] == expected_order
    best = expected_order[0]
    best_low = wilson(counts[best], n)[0]
    tied = {m for m in MODELS if m != best and wilson(counts[m], n)[1] >= best_low}
    assert column["best"] == best and set(column["tied"]) == tied
    for row in board["rows"]:
        cell = row["cells"][column["key"]]
        low, high = wilson(counts[row["model"]], n)
        assert cell["score"] == pytest.approx(counts[row["model"]] / n)
        assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((low, high), abs=1e-9)
        assert cell["job_id"] == job["id"]
    # With 40 items the 0.2 model's interval is far below the 0.75 model's.
    assert "sim-answer-c" not in tied and best != "sim-answer-c"


def test_mcnemar_between_two_answering_models(run: tuple[Any, Any, dict, list[str]]) -> None:
    _app, client, _job, items = run
    dataset = client.get("/api/v1/leaderboard").json["columns"][0]["dataset_id"]
    body = client.get(f"/api/v1/analytics/compare?models=sim-answer-a,sim-answer-c&dataset={dataset}").json
    (pair,) = body["pairs"]
    b = sum(1 for i in items if right("sim-answer-a", i) and not right("sim-answer-c", i))
    c = sum(1 for i in items if right("sim-answer-c", i) and not right("sim-answer-a", i))
    p = min(1.0, 2 * sum(math.comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c))
    assert body["n"] == len(items)
    assert (pair["counts"]["only_a"], pair["counts"]["only_b"]) == (b, c)
    assert pair["p"] == pytest.approx(p, rel=1e-9)
    disagree = {i for i in items if right("sim-answer-a", i) != right("sim-answer-c", i)}
    assert {d["sample_id"] for d in pair["disagreement_samples"]} == disagree
