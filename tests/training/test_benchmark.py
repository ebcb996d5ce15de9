"""The simulated benchmark: a study's arms against the simulated user on held-out tasks."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.core.management import CommandError, call_command

from tests.factories import ModelEndpointFactory, three_arm_study
from tests.fakes.openai_server import FakeOpenAIServer
from tests.training.conftest import kind_of, responder, user_says
from training.pipeline.benchmark import markdown_table
from training.pipeline.tasksets import load_tasks

pytestmark = pytest.mark.django_db


def _lines(path):
    return path.read_text().splitlines()


@pytest.fixture
def scripted_study():
    """The paper's three arms on a scripted server; the CollabLLM arm asks before it writes."""
    answers = {t.description: t.reference for t in load_tasks("math", split="heldout")}

    def extractor(body):
        system = body["messages"][0]["content"]
        [answer] = [a for description, a in answers.items() if description in system]
        return json.dumps({"final": answer})

    def policy(body):
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        return "Which form should the answer take?" if "CollabLLM" in system else "It is 1."

    server = FakeOpenAIServer(tokens=8)
    server.responder = responder(
        user=user_says("what's the answer?"),
        policy=policy,
        extractor=extractor,
        judge=json.dumps({"score": 3}),
    )
    base_url, stop = server.run_in_thread()
    endpoint = ModelEndpointFactory(base_url=base_url, served_model="fake-script")
    yield three_arm_study(endpoint=endpoint), server
    stop()


def test_the_table_has_a_row_per_task_kind_and_arm(scripted_study, tmp_path):
    study, _ = scripted_study
    out = io.StringIO()
    call_command(
        "benchmark_arms",
        study.slug,
        "--out",
        str(tmp_path),
        "--kinds",
        "math",
        "--limit",
        "2",
        "--max-turns",
        "2",
        stdout=out,
    )
    with (tmp_path / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["task"], r["arm"], r["n"]) for r in rows] == [
        ("math", "base", "2"),
        ("math", "collabllm", "2"),
        ("math", "proactive", "2"),
    ]
    assert all(float(r["score"]) == 100.0 and float(r["itr"]) == 50.0 for r in rows)
    assert all(float(r["tokens_k"]) > 0 for r in rows)
    conversations = [json.loads(line) for line in _lines(tmp_path / "conversations.jsonl")]
    assert len(conversations) == 6 and all(c["turns"] == 2 for c in conversations)
    assert "| math | accuracy | base | 2 | 100.00 |" in out.getvalue()
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["study"] == study.slug and len(settings["tasks"]) == 2


def test_unknown_studies_and_task_kinds_are_refused(scripted_study, tmp_path):
    study, server = scripted_study
    with pytest.raises(CommandError, match="no study"):
        call_command("benchmark_arms", "nope", "--out", str(tmp_path))
    with pytest.raises(CommandError, match="unknown task kind"):
        call_command("benchmark_arms", study.slug, "--out", str(tmp_path), "--kinds", "poetry")
    assert server.stats.chat_requests == 0 and not (tmp_path / "table.md").exists()


def test_a_failed_term_shows_as_not_available():
    table = [
        {
            "task": "code",
            "metric": "pass rate",
            "arm": "base",
            "n": 1,
            "score": None,
            "tokens_k": 0.2,
            "itr": 50.0,
            "failed_terms": 1,
        }
    ]
    assert "| code | pass rate | base | 1 | n/a | 0.20 | 50.00 | 1 |" in markdown_table(table)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_demo_arms_are_benchmarked_on_the_real_embedded_model(embedded_model, tmp_path):
    endpoint = ModelEndpointFactory(
        base_url=embedded_model.base_url,
        served_model=embedded_model.model,
        server="llama_cpp",
        read_timeout=300,
    )
    study = three_arm_study(endpoint=endpoint)
    call_command(
        "benchmark_arms",
        study.slug,
        "--out",
        str(tmp_path),
        "--kinds",
        "math",
        "--limit",
        "1",
        "--max-turns",
        "1",
        "--max-tokens",
        "64",
        stdout=io.StringIO(),
    )
    with (tmp_path / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["arm"] for r in rows} == {"base", "proactive", "collabllm"}
    conversations = [json.loads(line) for line in _lines(tmp_path / "conversations.jsonl")]
    assert any(conv["messages"] for conv in conversations)
    for conv in conversations:
        # A small simulator may end the chat at once ([[TERMINATE CHAT]] or its fallback).
        assert conv["ended"] in ("max_turns", "terminated", "user_failed")
        if conv["messages"]:
            assert conv["messages"][0]["role"] == "user"
            assert conv["tokens"] > 0  # counted by the server's own tokenizer
        assert conv["task"] in (0.0, 1.0) or conv["component_errors"]


def test_a_chat_the_simulated_user_ends_at_once_is_not_scored(scripted_study, tmp_path):
    study, server = scripted_study
    server.responder = lambda body: json.dumps(
        {"thought": "done", "response": "[[TERMINATE CHAT]]"}
    )
    call_command(
        "benchmark_arms",
        study.slug,
        "--out",
        str(tmp_path),
        "--kinds",
        "math",
        "--limit",
        "1",
        stdout=io.StringIO(),
    )
    [row, *_] = [json.loads(line) for line in _lines(tmp_path / "conversations.jsonl")]
    assert row["messages"] == [] and row["ended"] == "terminated" and row["task"] is None
    assert server.stats.chat_requests == 3  # one simulator call per arm, nothing scored


def _rows(study, tmp_path, *args):
    call_command(
        "benchmark_arms", study.slug, "--out", str(tmp_path), "--kinds", "math", "--limit", "1",
        *args, stdout=io.StringIO(),
    )  # fmt: skip
    return [json.loads(line) for line in _lines(tmp_path / "conversations.jsonl")]


def test_a_chat_cut_short_by_a_failing_policy_server_is_a_failure_not_scored(
    scripted_study, tmp_path
):
    study, server = scripted_study
    scripted = server.responder

    def second_reply_fails(body):
        later = any(m["role"] == "assistant" for m in body["messages"])
        return "!500" if kind_of(body) == "policy" and later else scripted(body)

    server.responder = second_reply_fails
    rows = _rows(study, tmp_path, "--max-turns", "3")
    assert rows and all(r["ended"] == "policy_failed: server_error" for r in rows)
    assert all(
        r["turns"] == 1 and r["task"] is None and "chat" in r["component_errors"] for r in rows
    )


def test_a_failing_user_simulator_is_a_failure_not_an_ending(scripted_study, tmp_path):
    study, server = scripted_study
    scripted = server.responder
    server.responder = lambda body: "!500" if kind_of(body) == "user" else scripted(body)
    rows = _rows(study, tmp_path)
    assert rows and all(r["ended"] == "user_failed" and r["task"] is None for r in rows)
