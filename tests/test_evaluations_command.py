"""The evalscope eval argument list (no evalscope run here): bounded retries, a judge always at our URL,
request values that cannot become options, keys never on it; and what the entry module does with a group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backend.evaluations import evalscope_entry
from backend.evaluations.command import CommandError, build_command

SETTINGS = {"outputs_dir": "/tmp/pep-eval-out", "logs_dir": "/tmp/pep-eval-logs", "retry_interval_s": 1}
PARAMS = {"temperature": 0.0, "max_tokens": 32, "seed": 7, "timeout_s": 9, "retries": 1, "repeats": 2,
          "batch_size": 3, "limit": 5, "few_shot": 0}
SIM = {"provider": "openai", "model_id": "sim-answer-a", "chat_url": "http://127.0.0.1:8001/v1/chat/completions"}
JUDGE = {"provider": "openai", "model_id": "sim-judge", "chat_url": "http://127.0.0.1:8001/v1/chat/completions",
         "name": "judge"}


def _cell(position: int, target: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"position": position, "benchmark": "general_qa", "target": target,
            "dataset_args": {"local_path": "/data/x", "subset_list": ["default"]}, **extra}


def _flag(group: list[str], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in group if arg.startswith(name + "="))


def test_each_cell_is_a_group_with_bounded_requests_and_its_own_work_dir() -> None:
    command = build_command(job_id="abc123", cells=[_cell(0, SIM), _cell(1, SIM, judged=True)], params=PARAMS,
                            settings=SETTINGS, judge=JUDGE)
    assert command[1:3] == ["-m", "backend.evaluations.evalscope_entry"]
    groups = evalscope_entry.split_groups(command[3:])
    assert [cell for cell, _ in groups] == [0, 1]
    for cell, group in groups:
        assert group[0] == "eval"
        assert _flag(group, "--work-dir") == f"/tmp/pep-eval-out/abc123/cell_{cell}"
        generation = json.loads(_flag(group, "--generation-config"))
        assert generation == {"temperature": 0.0, "max_tokens": 32, "seed": 7, "timeout": 9, "retries": 1,
                              "retry_interval": 1}
        assert json.loads(_flag(group, "--model-args")) == {"max_retries": 0}  # the OpenAI client's own retries off
        counts = (_flag(group, "--repeats"), _flag(group, "--limit"), _flag(group, "--eval-batch-size"))
        assert counts == ("2", "5", "3")
        assert json.loads(_flag(group, "--dataset-args"))["general_qa"]["few_shot_num"] == 0
        assert not any(arg.startswith("--api-key") for arg in group)
    assert not any(arg.startswith("--judge") for arg in groups[0][1])
    judge = json.loads(_flag(groups[1][1], "--judge"))
    assert judge["strategy"] == "llm"
    assert judge["models"][0]["api_url"] == "http://127.0.0.1:8001/v1"  # always ours, never a public hub
    assert judge["models"][0]["generation_config"]["retries"] == 1


@pytest.mark.parametrize("model_id", ["--help", "a b", "x;rm -rf /", ""])
def test_a_model_id_that_could_become_an_option_is_refused(model_id: str) -> None:
    with pytest.raises(CommandError):
        build_command(job_id="abc123", cells=[_cell(0, {**SIM, "model_id": model_id})], params=PARAMS,
                      settings=SETTINGS, judge=None)


def test_a_bedrock_cell_uses_our_model_api() -> None:
    target = {"provider": "bedrock", "model_id": "anthropic.claude-3-5-sonnet-20241022-v2:0", "region": "us-west-2"}
    group = evalscope_entry.split_groups(build_command(job_id="j1", cells=[_cell(0, target)], params=PARAMS,
                                                       settings=SETTINGS, judge=None)[3:])[0][1]
    assert "--eval-type=pep_bedrock" in group and "--api-url=bedrock://us-west-2" in group
    assert not any(arg.startswith("--model-args") for arg in group)
    with pytest.raises(CommandError):
        build_command(job_id="j1", cells=[_cell(0, {**target, "region": "us-west-2 --x"})], params=PARAMS,
                      settings=SETTINGS, judge=None)


def test_the_entry_takes_keys_from_the_environment_and_puts_them_in_its_groups() -> None:
    environ = {"PEP_CELL_API_KEY_1": "k1", "PEP_JUDGE_API_KEY": "kj", "PEP_TARGET_API_KEY": "x", "HOME": "/h"}
    keys, judge = evalscope_entry.take_keys(environ)
    assert (keys, judge) == ({1: "k1"}, "kj") and environ == {"HOME": "/h"}  # nothing left to inherit
    args = evalscope_entry.with_keys(["eval", '--judge={"models": [{"model_id": "j", "api_key": "EMPTY"}]}'],
                                     keys.get(1), judge)
    assert args[-1] == "--api-key=k1"
    assert json.loads(args[1].split("=", 1)[1])["models"][0]["api_key"] == "kj"


def test_the_entry_records_each_cells_verdict(tmp_path: Path) -> None:
    evalscope_entry.write_status(tmp_path / "cell_0", {"status": "error", "error": "APIConnectionError: refused"})
    assert json.loads((tmp_path / "cell_0" / "pep_status.json").read_text())["status"] == "error"
    with pytest.raises(SystemExit):
        evalscope_entry.split_groups(["eval", "--model=x"])  # a group must say which cell it is


def test_multiple_choice_is_asked_in_english_with_evalscopes_own_template() -> None:
    """general_mcq's default is evalscope's Chinese template; ours is its English one, letter for letter, so
    that evalscope extracts "ANSWER: X" (and a change of that template in evalscope is noticed here)."""
    from evalscope.utils.multi_choices import SINGLE_ANSWER_TEMPLATE

    mcq = {**_cell(0, SIM), "benchmark": "general_mcq"}
    command = build_command(job_id="abc123", cells=[mcq, _cell(1, SIM)], params=PARAMS, settings=SETTINGS,
                            judge=None)
    (_, mcq_group), (_, qa_group) = evalscope_entry.split_groups(command[3:])
    assert json.loads(_flag(mcq_group, "--dataset-args"))["general_mcq"]["prompt_template"] == SINGLE_ANSWER_TEMPLATE
    assert "prompt_template" not in json.loads(_flag(qa_group, "--dataset-args"))["general_qa"]
