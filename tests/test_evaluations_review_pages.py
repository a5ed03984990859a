"""The evaluation pages rendered by the app on fixed rows (no browser): what each shows, escaping, 400s."""

from __future__ import annotations

import re

from flask import Flask

from tests.test_evaluations_review import A_RIGHT, B_RIGHT, add_run, mcq

ACC = {"acc": {"score": 20 / 30, "n": 30, "ci_low": 0.4880, "ci_high": 0.8077, "method": "wilson"}}


def _run(app: Flask, job_id: str = "runp", **cell_extra) -> list[int]:  # type: ignore[no-untyped-def]
    return add_run(app, job_id, [
        {"model": "sim-a", "name": "Sim A", "samples": mcq(A_RIGHT, prediction="<b>bold</b> A"), "metrics": ACC,
         **cell_extra},
        {"model": "sim-b", "name": "Sim B", "samples": mcq(B_RIGHT), "metrics": {}, "status": "failed",
         "error": "acc: could not be computed (no scored sample)"},
    ])


def test_run_page_shows_scores_with_n_and_interval_and_escapes_model_output(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    _run(app)
    html = client.get("/evaluations/runp").get_data(as_text=True)
    assert "0.667" in html and "[0.488, 0.808]" in html and "n=30" in html
    assert "acc: could not be computed (no scored sample)" in html and "not computed" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt; A" in html
    figures = re.search(r'<script type="application/json" id="figures-data">(.*?)</script>', html, re.S)
    assert figures and '"error_y"' in figures.group(1)
    # The chart draws only the computed score: the failed cell is a gap, never 0.
    assert '"y": [0.6667]' in figures.group(1) or '"y":[0.6667]' in figures.group(1)


def test_review_fragment_for_htmx_and_its_filters(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    a, _ = _run(app)
    response = client.get(f"/evaluations/runp?wrong=1&cell={a}&limit=500",
                          headers={"HX-Request": "true", "HX-Target": "review"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and html.lstrip().startswith('<div id="review"')
    assert html.count("<tr data-sample=") == A_RIGHT.count(False)
    bad = client.get("/evaluations/runp?limit=0", headers={"HX-Request": "true", "HX-Target": "review"})
    assert bad.status_code == 400 and "limit: must be between 1 and 500" in bad.get_data(as_text=True)


def test_live_fragment_polls_while_running_and_reloads_when_finished(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    add_run(app, "live1", [{"model": "sim-a", "samples": [], "metrics": {}, "status": "running",
                            "live": {"answered": 5, "reviewed": 4, "scored": 4, "score_so_far": 0.75,
                                                     "metric": "acc"}}], status="running")
    headers = {"HX-Request": "true", "HX-Target": "eval-live"}
    running = client.get("/evaluations/live1", headers=headers)
    html = running.get_data(as_text=True)
    assert 'hx-trigger="every 2s"' in html and "acc so far 0.750" in html and "n=4 scored of 5 answered" in html
    assert "HX-Refresh" not in running.headers
    add_run(app, "done1", [{"model": "sim-a", "samples": mcq([True]), "metrics": ACC}])
    finished = client.get("/evaluations/done1?was=running", headers=headers)
    assert finished.headers.get("HX-Refresh") == "true" and "hx-trigger" not in finished.get_data(as_text=True)


def test_side_by_side_page_counts(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    a, b = _run(app)
    html = client.get(f"/evaluations/side-by-side?a={a}&b={b}").get_data(as_text=True)
    pairs = list(zip(A_RIGHT, B_RIGHT, strict=True))
    for key, value in (("only_a", pairs.count((True, False))), ("only_b", pairs.count((False, True))),
                       ("both_wrong", pairs.count((False, False))), ("both_right", pairs.count((True, True)))):
        assert re.search(rf'data-outcome="{key}">.*?<td class="num">{value}</td>', html, re.S), key
    assert client.get(f"/evaluations/side-by-side?a={a}&b=zz").status_code == 400
    # The run page offers the comparison.
    run_html = client.get("/evaluations/runp").get_data(as_text=True)
    assert f'<option value="{b}" data-a="{a}">' in run_html


def test_list_filters_and_home_panel(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    _run(app)
    add_run(app, "other", [{"model": "sim-c", "samples": mcq([True]), "metrics": ACC}], status="failed")
    html = client.get("/evaluations?model=sim-c").get_data(as_text=True)
    assert 'data-job="other"' in html and 'data-job="runp"' not in html
    html = client.get("/evaluations?status=completed").get_data(as_text=True)
    assert 'data-job="runp"' in html and 'data-job="other"' not in html
    assert client.get("/evaluations?status=nope").status_code == 400
    assert client.get("/evaluations?offset=-1").status_code == 400
    home = client.get("/").get_data(as_text=True)
    assert 'id="home-evaluations"' in home and 'data-job="runp"' in home


def test_unknown_run_page_is_404(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/evaluations/nope").status_code == 404


def _bundled_ids(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    html = client.get("/evaluations/new").get_data(as_text=True)
    found = re.findall(r'name="datasets" value="([0-9a-f]{16})"[^>]*>\s*([^<]+?) <span class="muted small">(\w[^,<]*)',
                       html)
    return {kind: ref for ref, _name, kind in found}


def test_form_refusals_are_shown_next_to_their_fields(client) -> None:  # type: ignore[no-untyped-def]
    datasets = _bundled_ids(client)
    assert "multiple choice" in datasets, "the bundled multiple-choice dataset is offered"
    mcq_id = datasets["multiple choice"]
    cases = [
        ({"limit": "5"}, "models", "Models: choose at least one model"),
        ({"models": "sim-fast", "limit": "5"}, "datasets", "Datasets: choose at least one dataset"),
        ({"models": "sim-fast", "datasets": mcq_id, "limit": "abc"}, "limit", "Sample limit: must be a whole number"),
        ({"models": "sim-fast", "datasets": mcq_id, "limit": "0"}, "limit", "Sample limit: must be at least 1"),
        ({"models": "sim-fast", "datasets": mcq_id, "temperature": "9"}, "temperature",
         "Temperature: must be at most 2"),
        ({"models": "sim-fast", "datasets": mcq_id, "repeats": ""}, "repeats", "Repeats: enter a whole number"),
        ({"models": "nope", "datasets": mcq_id}, "models", "Models: unknown model &#39;nope&#39;"),
        ({"models": "sim-fast", "datasets": mcq_id, "labels": "vpc a"}, "labels", "Worker labels: "),
    ]
    for form, field, message in cases:
        response = client.post("/evaluations/new", data=form)
        html = response.get_data(as_text=True)
        assert response.status_code == 400, form
        error = re.search(rf'<div class="field-error" id="error-{field}"[^>]*>(.*?)</div>', html, re.S)
        assert error and message in error.group(1), (form, error and error.group(1))
    # What was typed is kept.
    html = client.post("/evaluations/new", data={"models": "sim-fast", "limit": "7", "label": "mine"}).get_data(
        as_text=True)
    assert 'value="sim-fast" checked' in html and 'name="limit" type="number" step="1" value="7"' in html


def test_form_creates_an_evaluation_and_redirects_to_its_page(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    mcq_id = _bundled_ids(client)["multiple choice"]
    response = client.post("/evaluations/new", data={"models": ["sim-fast", "sim-slow"], "datasets": mcq_id,
                                                      "limit": "4", "temperature": "0", "max_tokens": "64",
                                                      "seed": "3", "few_shot": "0", "repeats": "2", "label": "form",
                                                      "labels": "vpc-b, gpu-net"})
    assert response.status_code == 303
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    from backend.db import db
    from backend.evaluations.models import EvaluationJob

    with app.app_context():
        job = db.session.get(EvaluationJob, job_id)
        assert job is not None and job.label == "form" and job.status == "queued"
        assert job.labels == ["gpu-net", "vpc-b"]
        assert [c.model_key for c in job.cells] == ["sim-fast", "sim-slow"]
        assert job.params["limit"] == 4 and job.params["repeats"] == 2 and job.params["seed"] == 3
        assert [c.total for c in job.cells] == [4 * 2, 4 * 2]
    page = client.get(f"/evaluations/{job_id}").get_data(as_text=True)
    assert 'id="eval-cancel"' in page and 'hx-trigger="every 2s"' in page
    cancelled = client.post(f"/evaluations/{job_id}/cancel")
    assert cancelled.status_code == 303
    with app.app_context():
        assert db.session.get(EvaluationJob, job_id).status == "cancelled"


def test_judge_token_cost_is_summed_and_unknown_when_a_price_is(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    qa = {"acc": {"score": 1.0, "n": 1, "ci_low": 0.2, "ci_high": 1.0, "method": "wilson"}}
    add_run(app, "judged", [
        {"model": "sim-a", "samples": mcq([True]), "metrics": qa, "judge_input_tokens": 1200,
         "judge_output_tokens": 300, "judge_cost": 0.0123},
        {"model": "sim-b", "samples": mcq([True]), "metrics": qa, "judge_input_tokens": 800,
         "judge_output_tokens": 200, "judge_cost": 0.0077},
    ])
    html = client.get("/evaluations/judged").get_data(as_text=True)
    text = " ".join(re.search(r'id="eval-judge-cost">(.*?)</p>', html, re.S).group(1).split())
    assert f"{1200 + 800:,} input and {300 + 200} output tokens over 2 cells" in text
    assert f"${0.0123 + 0.0077:.4f}" in text
    add_run(app, "judged2", [
        {"model": "sim-a", "samples": mcq([True]), "metrics": qa, "judge_input_tokens": 10,
         "judge_output_tokens": 5, "judge_cost": 0.001},
        {"model": "sim-b", "samples": mcq([True]), "metrics": qa, "judge_input_tokens": 10,
         "judge_output_tokens": 5, "judge_cost": None},
    ])
    html = client.get("/evaluations/judged2").get_data(as_text=True)
    text = re.search(r'id="eval-judge-cost">(.*?)</p>', html, re.S).group(1)
    assert "unknown" in text and "$" not in text  # never a partial sum shown as the cost


def test_run_page_offers_cells_of_other_runs_on_the_same_dataset(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    a, _ = _run(app)
    (other,) = add_run(app, "later", [{"model": "sim-c", "samples": mcq([True] * 30), "metrics": ACC}])
    (elsewhere,) = add_run(app, "otherdata", [{"model": "sim-d", "hash": "c" * 64, "samples": mcq([True])}])
    html = client.get("/evaluations/runp").get_data(as_text=True)
    assert f'<option value="{other}" data-a="{a}">' in html and "run later" in html
    assert f'value="{elsewhere}"' not in html


def test_list_is_newest_first_and_paged(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    from backend.db import db
    from backend.evaluations.models import EvaluationJob

    for i in range(27):
        add_run(app, f"r{i:02d}", [{"model": "sim-a", "samples": mcq([True]), "metrics": ACC}])
    with app.app_context():
        for i in range(27):
            when = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(hours=i)
            db.session.get(EvaluationJob, f"r{i:02d}").created_at = when
        db.session.commit()
    first = re.findall(r'<tr data-job="(r\d\d)">', client.get("/evaluations").get_data(as_text=True))
    assert first == [f"r{i:02d}" for i in range(26, 1, -1)]  # 25, newest first
    second = client.get("/evaluations?offset=25").get_data(as_text=True)
    assert re.findall(r'<tr data-job="(r\d\d)">', second) == ["r01", "r00"] and "Runs 26\u201327 of 27" in second


def test_a_metric_that_left_samples_out_says_how_many(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    add_run(app, "excl", [{"model": "sim-a", "samples": mcq([True, False, True]),
                           "metrics": {"judge": {"score": 0.5, "n": 2, "ci_low": 0.09, "ci_high": 0.91,
                                                 "method": "wilson", "excluded": 1}}}])
    html = client.get("/evaluations/excl").get_data(as_text=True)
    assert "n=2" in html and "1 not scored" in html


def test_the_form_says_how_many_items_each_bundled_dataset_has(client) -> None:  # type: ignore[no-untyped-def]
    html = client.get("/evaluations/new").get_data(as_text=True)
    assert "multiple choice, 40 items, bundled" in html and "question answering, 30 items, bundled" in html
    assert "built-in method" not in html
