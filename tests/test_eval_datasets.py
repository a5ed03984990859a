"""Evaluation datasets (issue 11, item 2): upload validation that names the line and column, identity by
content hash, the bundled datasets, evalscope's layout, and built-in benchmarks found only on disk."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.app import create_app

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "backend" / "evaluations" / "bundled"
MCQ = (b"id,question,A,B,C,D,answer\nq1,What is 2 + 2?,3,4,5,6,B\nq2,What is 3 + 3?,6,7,8,9,A\n"
       b"q3,What is 1 + 1?,0,1,2,3,C\n")


def make_app(base: Path) -> Flask:
    return create_app({"database": {"path": str(base / "app.db")}, "logging": {"dir": str(base / "logs")},
                       "evaluations": {"datasets_dir": str(base / "datasets"), "max_dataset_bytes": 20 * 2**20}})


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def upload(client: FlaskClient, data: bytes, filename: str = "items.csv", kind: str = "mcq",
           dev: tuple[bytes, str] | None = None, name: str | None = None):  # type: ignore[no-untyped-def]
    form: dict = {"kind": kind, "file": (io.BytesIO(data), filename)}
    if dev is not None:
        form["dev_file"] = (io.BytesIO(dev[0]), dev[1])
    if name is not None:
        form["name"] = name
    return client.post("/api/v1/datasets", data=form, content_type="multipart/form-data")


def refused(response, field: str, line: int | None, column: str | None = None,  # type: ignore[no-untyped-def]
            status: int = 400) -> str:
    assert response.status_code == status, response.json
    error = response.json["error"]
    assert error["details"]["field"] == field
    assert error["details"].get("line") == line
    assert error["details"].get("column") == column
    assert error["message"].startswith(f"{field}: " + (f"line {line}" if line is not None else ""))
    return error["message"]


def stored_rows(app: Flask) -> int:
    from backend.db import db
    from backend.evaluations.dataset_models import EvalDataset

    with app.app_context():
        return db.session.query(EvalDataset).count()


# --- validation ---------------------------------------------------------------------------------------

def test_bad_header_names_line_1_and_the_column(client: FlaskClient) -> None:
    message = refused(upload(client, b"id,question,A,B,Answer\n1,q,x,y,A\n"), "file", 1)
    assert "unknown column 'Answer'" in message and "did you mean 'answer'" in message


def test_a_header_after_blank_lines_is_named_by_its_own_line(client: FlaskClient) -> None:
    message = refused(upload(client, b"\n\nid,question,A,B,answer,extra\n1,q,x,y,A,z\n"), "file", 3)
    assert "unknown column 'extra'" in message


def test_missing_column(client: FlaskClient) -> None:
    assert "missing column 'answer'" in refused(upload(client, b"id,question,A,B\n1,q,x,y\n"), "file", 1)
    assert "missing column 'C'" in refused(upload(client, b"id,question,A,B,D,answer\n1,q,w,x,y,A\n"), "file", 1)
    assert "missing column 'B'" in refused(upload(client, b"id,question,A,answer\n1,q,x,A\n"), "file", 1)


def test_wrong_answer_letter_names_the_line_and_the_answer_column(client: FlaskClient) -> None:
    data = MCQ + b"q4,What is 0 + 0?,0,1,2,3,E\n"
    message = refused(upload(client, data), "file", 5, "answer")
    assert "'E' is not one of the row's choices A, B, C, D" in message


def test_a_row_with_too_few_values_and_an_empty_choice(client: FlaskClient) -> None:
    assert "4 values for the 7 columns" in refused(upload(client, MCQ + b"q4,Short?,1,B\n"), "file", 5)
    assert "empty choice" in refused(upload(client, MCQ + b"q4,Blank?,1,,3,4,A\n"), "file", 5, "B")


def test_a_quoted_multi_line_question_counts_lines_as_an_editor_does(client: FlaskClient) -> None:
    data = b'id,question,A,B,answer\nq1,"one\nline two",x,y,A\nq2,q,x,y,Z\n'
    refused(upload(client, data), "file", 4, "answer")


def test_duplicate_id_names_both_lines(client: FlaskClient) -> None:
    message = refused(upload(client, MCQ + b"q2,Again?,1,2,3,4,A\n"), "file", 5, "id")
    assert "already used on line 3" in message


def test_empty_file(client: FlaskClient) -> None:
    assert "empty" in refused(upload(client, b""), "file", 1)
    assert "empty" in refused(upload(client, b"\n  \n"), "file", 1)
    assert "no items" in refused(upload(client, b"id,question,A,B,answer\n"), "file", 2)
    assert "empty" in refused(upload(client, b"\n\n", "qa.jsonl", kind="qa"), "file", 1)


def test_a_50_mb_file_is_refused_with_413(client: FlaskClient, app: Flask) -> None:
    row = b"q,What is this?,yes,no,A\n"
    data = b"id,question,A,B,answer\n" + row * (50 * 2**20 // len(row))
    limit = 20 * 2**20
    response = upload(client, data)
    header = len(b"id,question,A,B,answer\n")
    line_at_limit = 1 + 1 + (limit - header) // len(row)  # the header's newline, whole rows, then the cut line
    message = refused(response, "file", line_at_limit, status=413)
    assert response.json["error"]["code"] == "too_large"
    assert "20,971,520 bytes" in message
    assert stored_rows(app) == 2  # only the bundled datasets


def test_binary_garbage_names_the_line_of_the_first_bad_byte(client: FlaskClient) -> None:
    data = MCQ + b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"
    message = refused(upload(client, data), "file", 5)
    assert "not UTF-8" in message and "binary" in message
    refused(upload(client, b"id,question,A,B,answer\n1,q\x00,x,y,A\n"), "file", 2)


def test_a_traversal_file_name_is_refused_and_nothing_is_written(client: FlaskClient, tmp_path: Path) -> None:
    for name in ("../../evil.csv", "..", "/etc/evil.csv", "a/b.csv", "evil\x07.csv"):
        message = refused(upload(client, MCQ, filename=name), "file", None)
        assert "plain name" in message
    assert not list(tmp_path.parent.glob("**/evil.csv"))
    stored = list((tmp_path / "datasets").iterdir())
    assert len(stored) == 2  # the bundled datasets' folders only


def test_wrong_extension_and_missing_fields(client: FlaskClient) -> None:
    assert "is a .csv or .jsonl file" in refused(upload(client, MCQ, filename="items.txt"), "file", None)
    assert "is a .jsonl file" in refused(upload(client, MCQ, filename="items.csv", kind="qa"), "file", None)
    response = client.post("/api/v1/datasets", data={"kind": "mcq"}, content_type="multipart/form-data")
    refused(response, "file", None)
    response = upload(client, MCQ, kind="tsv")
    assert response.status_code == 400 and response.json["error"]["details"]["field"] == "kind"
    response = upload(client, MCQ, name="x" * 101)
    assert response.status_code == 400 and response.json["error"]["details"]["field"] == "name"


def test_mcq_jsonl_problems(client: FlaskClient) -> None:
    good = json.dumps({"id": "1", "question": "q?", "A": "x", "B": "y", "answer": "A"})
    assert "not JSON" in refused(upload(client, f"{good}\n{{oops\n".encode(), "i.jsonl"), "file", 2)
    assert "not an object" in refused(upload(client, f"{good}\n[1, 2]\n".encode(), "i.jsonl"), "file", 2)
    row = json.dumps({"id": "2", "question": "q?", "A": "x", "B": "y", "answer": "C"})
    refused(upload(client, f"{good}\n\n{row}\n".encode(), "i.jsonl"), "file", 3, "answer")
    row = json.dumps({"id": "2", "question": "q?", "A": "x", "B": "y", "answer": "A", "hint": "no"})
    refused(upload(client, f"{good}\n{row}\n".encode(), "i.jsonl"), "file", 2, "hint")
    row = json.dumps({"id": "2", "question": ["q"], "A": "x", "B": "y", "answer": "A"})
    refused(upload(client, f"{good}\n{row}\n".encode(), "i.jsonl"), "file", 2, "question")
    row = '{"id": "2", "question": "\\ud800", "A": "x", "B": "y", "answer": "A"}'
    assert "surrogate" in refused(upload(client, f"{good}\n{row}\n".encode(), "i.jsonl"), "file", 2, "question")


def test_qa_problems(client: FlaskClient) -> None:
    good = json.dumps({"query": "Capital of France?", "response": "Paris"})

    def qa(second: dict) -> object:
        return upload(client, f"{good}\n{json.dumps(second)}\n".encode(), "qa.jsonl", kind="qa")

    refused(qa({"query": "No answer?"}), "file", 2, "response")
    refused(qa({"query": "", "response": "x"}), "file", 2, "query")
    refused(qa({"query": "q", "response": "x", "question": "q"}), "file", 2, "question")
    refused(qa({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "response": "x"}), "file", 2, "messages")
    refused(qa({"messages": [{"role": "robot", "content": "q"}], "response": "x"}), "file", 2, "messages[0]")
    refused(qa({"query": "q", "reply": "x"}), "file", 2, "reply")
    response = upload(client, good.encode(), "qa.jsonl", kind="qa", dev=(good.encode(), "dev.jsonl"))
    assert response.status_code == 400 and response.json["error"]["details"]["field"] == "dev_file"


def test_a_bad_dev_file_is_named_as_the_dev_file(client: FlaskClient) -> None:
    refused(upload(client, MCQ, dev=(b"id,question,A,B,answer\nd1,q,x,y,Q\n", "dev.csv")), "dev_file", 2, "answer")


# --- identity, storage, preview ------------------------------------------------------------------------

def expected_hash(kind: str, files: dict[str, bytes]) -> str:
    """The documented content hash, worked out here from the normalised files."""
    digest = hashlib.sha256(f"pep-eval-dataset\n{kind}\n".encode())
    for name in sorted(files):
        digest.update(f"{name}\n{len(files[name])}\n".encode() + files[name])
    return digest.hexdigest()


def mcq_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode()


def test_an_upload_is_stored_normalised_under_its_content_hash(client: FlaskClient, tmp_path: Path) -> None:
    response = upload(client, MCQ, name="Sums")
    assert response.status_code == 201 and response.json["created"] is True
    body = response.json
    rows = list(csv.DictReader(io.StringIO(MCQ.decode())))
    normalised = mcq_jsonl(rows)
    digest = expected_hash("mcq", {"default_val.jsonl": normalised})
    assert body["content_hash"] == digest and body["id"] == digest[:16]
    assert (body["name"], body["kind"], body["items"], body["bundled"]) == ("Sums", "mcq", 3, False)
    assert body["summary"]["answers"] == {"A": 1, "B": 1, "C": 1, "D": 0}
    folder = tmp_path / "datasets" / body["id"]
    assert sorted(path.name for path in folder.iterdir()) == ["default_val.jsonl"]
    assert (folder / "default_val.jsonl").read_bytes() == normalised


def test_the_same_content_twice_is_one_dataset_whatever_its_form(client: FlaskClient, app: Flask) -> None:
    first = upload(client, MCQ, name="first").json
    again = upload(client, MCQ, name="second")
    assert again.status_code == 200 and again.json["created"] is False
    assert again.json["id"] == first["id"] and again.json["name"] == "first"
    crlf_bom = b"\xef\xbb\xbf" + MCQ.replace(b"\n", b"\r\n")
    assert upload(client, crlf_bom).json["id"] == first["id"]
    rows = list(csv.DictReader(io.StringIO(MCQ.decode())))
    as_jsonl = "\n".join(json.dumps({**row, "answer": row["answer"].lower()}) for row in rows).encode()
    assert upload(client, as_jsonl, "items.jsonl").json["id"] == first["id"]
    assert stored_rows(app) == 3  # two bundled and this one


def test_a_changed_file_is_a_new_version(client: FlaskClient, app: Flask) -> None:
    first = upload(client, MCQ).json
    changed = upload(client, MCQ.replace(b"What is 1 + 1?", b"What is 1 + 1 ?")).json
    assert changed["id"] != first["id"] and changed["content_hash"] != first["content_hash"]
    with_dev = upload(client, MCQ, dev=(b"id,question,A,B,answer\nd1,q,x,y,B\n", "dev.csv")).json
    assert with_dev["id"] not in (first["id"], changed["id"]) and with_dev["dev_items"] == 1
    assert stored_rows(app) == 5


def test_list_one_and_preview(client: FlaskClient) -> None:
    lines = [{"id": f"c{n}", "query": f"Question {n}?", "response": "x" * n} for n in range(1, 13)]
    lines.append({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Last?"}],
                  "answer": "yes"})
    created = upload(client, "\n".join(json.dumps(line) for line in lines).encode(), "qa.jsonl", kind="qa").json
    listing = client.get("/api/v1/datasets").json
    ids = [row["id"] for row in listing["datasets"]]
    assert created["id"] in ids and len(ids) == 3
    assert [row["bundled"] for row in listing["datasets"]][:2] == [True, True]
    assert client.get(f"/api/v1/datasets/{created['id']}").json["items"] == 13
    preview = client.get(f"/api/v1/datasets/{created['id']}/preview").json
    assert preview["shown"] == 10 and preview["items"] == 13
    assert preview["rows"][0] == {"id": "c1", "query": "Question 1?", "response": "x"}
    everything = client.get(f"/api/v1/datasets/{created['id']}/preview?rows=50").json["rows"]
    assert everything[-1] == {"id": "13", "messages": lines[-1]["messages"], "response": "yes"}  # numbered
    assert created["summary"]["reference_chars"] == {"min": 1, "median": 6, "max": 12}  # 1..12 and 3
    assert created["summary"]["forms"] == {"messages": 1, "query": 12}
    assert client.get("/api/v1/datasets/0123456789abcdef").status_code == 404
    assert client.get("/api/v1/datasets/../../etc").status_code == 404
    assert client.get(f"/api/v1/datasets/{created['id']}/preview?rows=x").status_code == 400


def test_bundled_datasets_are_registered_once(tmp_path: Path) -> None:
    first = make_app(tmp_path).test_client().get("/api/v1/datasets").json["datasets"]
    second = make_app(tmp_path).test_client().get("/api/v1/datasets").json["datasets"]  # a restart
    assert [row["id"] for row in first] == [row["id"] for row in second]
    bundled = {row["kind"]: row for row in second if row["bundled"]}
    assert len(second) == 2 and set(bundled) == {"mcq", "qa"}
    assert (bundled["mcq"]["items"], bundled["mcq"]["dev_items"], bundled["qa"]["items"]) == (40, 5, 30)
    assert bundled["mcq"]["summary"]["answers"] == {"A": 10, "B": 10, "C": 10, "D": 10}
    with (BUNDLED / "arithmetic_val.csv").open(newline="") as handle:
        val = mcq_jsonl(list(csv.DictReader(handle)))
    with (BUNDLED / "arithmetic_dev.csv").open(newline="") as handle:
        dev = mcq_jsonl(list(csv.DictReader(handle)))
    assert bundled["mcq"]["content_hash"] == expected_hash("mcq", {"default_val.jsonl": val,
                                                                   "default_dev.jsonl": dev})


def test_uploading_a_bundled_content_gives_the_bundled_dataset(client: FlaskClient) -> None:
    data = (BUNDLED / "facts.jsonl").read_bytes()
    response = upload(client, data, "mine.jsonl", kind="qa", name="mine")
    assert response.status_code == 200 and response.json["bundled"] is True


# --- handing a dataset to evalscope ---------------------------------------------------------------------

def test_evalscope_dir_gives_the_folder_and_dataset_args(client: FlaskClient, app: Flask, tmp_path: Path) -> None:
    from backend.evaluations import datasets

    mcq_id = upload(client, MCQ, dev=(b"id,question,A,B,answer\nd1,q,x,y,B\nd2,r,x,y,A\n", "dev.csv")).json["id"]
    plain_id = upload(client, MCQ.replace(b"q3", b"q9")).json["id"]
    qa_id = upload(client, b'{"query": "q?", "response": "a"}\n', "qa.jsonl", kind="qa").json["id"]
    with app.app_context():
        folder, args = datasets.evalscope_dir(datasets.get_dataset(mcq_id))
        assert folder == (tmp_path / "datasets" / mcq_id).resolve()
        assert args == {"general_mcq": {"local_path": str(folder), "subset_list": ["default"], "few_shot_num": 2}}
        assert sorted(path.name for path in folder.iterdir()) == ["default_dev.jsonl", "default_val.jsonl"]
        assert datasets.evalscope_dir(datasets.get_dataset(mcq_id), few_shot=1)[1]["general_mcq"]["few_shot_num"] == 1
        with pytest.raises(ValueError):
            datasets.evalscope_dir(datasets.get_dataset(mcq_id), few_shot=3)
        assert datasets.evalscope_dir(datasets.get_dataset(plain_id))[1]["general_mcq"]["few_shot_num"] == 0
        folder, args = datasets.evalscope_dir(datasets.get_dataset(qa_id))
        assert args == {"general_qa": {"local_path": str(folder), "subset_list": ["default"]}}
        assert [path.name for path in folder.iterdir()] == ["default.jsonl"]


def test_evalscope_dir_refuses_changed_files_and_restores_bundled_ones(client: FlaskClient, app: Flask,
                                                                       tmp_path: Path) -> None:
    from backend.evaluations import datasets

    uploaded = upload(client, MCQ).json["id"]
    bundled = next(row["id"] for row in client.get("/api/v1/datasets").json["datasets"] if row["kind"] == "qa")
    (tmp_path / "datasets" / uploaded / "default_val.jsonl").write_text("{}\n")
    for path in (tmp_path / "datasets" / bundled).iterdir():
        path.unlink()
    with app.app_context():
        with pytest.raises(datasets.DatasetFilesMissing, match="missing or changed"):
            datasets.evalscope_dir(datasets.get_dataset(uploaded))
        folder, _ = datasets.evalscope_dir(datasets.get_dataset(bundled))
        assert (folder / "default.jsonl").read_bytes().count(b"\n") == 30
    assert client.get(f"/api/v1/datasets/{uploaded}/preview").status_code == 410


# --- evalscope's built-in benchmarks --------------------------------------------------------------------

def test_builtin_benchmarks_are_available_only_from_local_caches(tmp_path: Path) -> None:
    from backend.evaluations.datasets import builtin_benchmarks

    env = {"HOME": str(tmp_path / "home"), "MODELSCOPE_CACHE": str(tmp_path / "ms"),
           "HF_HOME": str(tmp_path / "hf")}
    empty = {entry["name"]: entry for entry in builtin_benchmarks(env)}
    assert {"gsm8k", "mmlu", "arc", "ceval"} <= set(empty)
    assert not any(entry["available"] for entry in empty.values())
    assert empty["gsm8k"]["reason"].startswith("not available offline: ")
    assert "AI-ModelScope/gsm8k" in empty["gsm8k"]["reason"]
    gsm8k = tmp_path / "ms" / "datasets" / "AI-ModelScope" / "gsm8k"
    gsm8k.mkdir(parents=True)
    (tmp_path / "hf" / "hub" / "datasets--cais--mmlu" / "snapshots").mkdir(parents=True)  # folders, no files
    arc = tmp_path / "hf" / "hub" / "datasets--allenai--ai2_arc" / "snapshots" / "abc"
    arc.mkdir(parents=True)
    (arc / "ARC-Easy.parquet").write_bytes(b"PAR1")
    (gsm8k / "train.jsonl").write_text("{}\n")
    found = {entry["name"]: entry for entry in builtin_benchmarks(env)}
    assert found["gsm8k"]["available"] and found["gsm8k"]["reason"] is None
    assert found["arc"]["available"]
    assert not found["mmlu"]["available"]


# --- the HTML form ------------------------------------------------------------------------------------

def test_the_form_shows_a_refusal_under_its_field_and_a_stored_upload_redirects(client: FlaskClient) -> None:
    response = client.post("/datasets", data={"kind": "mcq", "file": (io.BytesIO(MCQ + b"q4,x?,1,2,3,4,Z\n"),
                                                                    "items.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    error = html.split('id="error-file"', 1)[1].split("</div>", 1)[0]
    assert "line 5, column &#39;answer&#39;" in error
    response = client.post("/datasets", data={"kind": "mcq", "name": "Sums",
                                              "file": (io.BytesIO(MCQ), "items.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 303
    dataset_id = response.headers["Location"].rsplit("/", 1)[1]
    page = client.get(f"/datasets/{dataset_id}").get_data(as_text=True)
    assert "Sums" in page and "stored: 3 items" in page and "What is 2 + 2?" in page
    assert client.get("/datasets/0123456789abcdef").status_code == 404
