"""The data stages as command-line scripts: collect from a YAML config, then build datasets."""

from __future__ import annotations

import json

import yaml

from tests.fakes.openai_server import FakeOpenAIServer
from tests.training.conftest import responder, user_says
from training.pipeline import stages


def test_collect_then_build_from_the_command_line(tmp_path, capsys):
    server = FakeOpenAIServer(tokens=8)
    server.responder = responder(
        user=user_says("a post please"),
        policy="Sure. Who is it for?",
        extractor=json.dumps({"final": "Sure."}),
        judge=json.dumps({"score": 4}),
    )
    base_url, stop = server.run_in_thread()
    config = {
        "endpoint": {"base_url": base_url, "model": "fake-script", "params": {"max_tokens": 64}},
        "kind": "document",
        "limit": 2,
        "sampling": {"window": 1, "samples": 1, "candidates": 2, "max_turns": 2},
        "reward": {"token_clamp": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    try:
        assert (
            stages.main(
                [
                    "collect",
                    "--config",
                    str(tmp_path / "run.yaml"),
                    "--run-dir",
                    str(tmp_path / "run"),
                ]
            )
            == 0
        )
    finally:
        stop()
    printed = capsys.readouterr().out
    assert "2/2 conversations" in printed and json.loads(printed.splitlines()[-1])["calls"] > 0
    assert stages.main(["build", "--run-dir", str(tmp_path / "run")]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["sft"] == 2 and counts["prompts"] == 4
    record = json.loads(next((tmp_path / "run" / "conversations").glob("*.json")).read_text())
    assert record["settings"]["reward"]["token_clamp"] is False
