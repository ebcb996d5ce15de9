from __future__ import annotations

import json

from tests.training.conftest import scripted_roles, user_says
from training.pipeline.llm import Runtime
from training.pipeline.simulator import TERMINATE, simulate_user


async def _simulate(server, task, retries=2):
    roles = scripted_roles(server)
    return await simulate_user(Runtime(4), roles.user, task, [], retries=retries)


async def test_it_reads_the_users_message_from_json(scripted, doc_task):
    scripted.script = [user_says("hey, can you help me write something?")]
    turn = await _simulate(scripted, doc_task)
    assert (turn.text, turn.terminated, turn.attempts, turn.fallback) == (
        "hey, can you help me write something?",
        False,
        1,
        None,
    )


async def test_the_terminate_marker_ends_the_chat(scripted, doc_task):
    scripted.script = [user_says(f"thanks, that's it {TERMINATE}")]
    turn = await _simulate(scripted, doc_task)
    assert turn.terminated and turn.text == "thanks, that's it"
    assert not turn.failed  # the user finished: an ending, not a failure


async def test_unreadable_output_is_retried_within_the_budget(scripted, doc_task):
    scripted.script = ['{"thought": "cut off', user_says("second try works")]
    turn = await _simulate(scripted, doc_task)
    assert (turn.text, turn.attempts, turn.fallback) == ("second try works", 2, None)


async def test_plain_text_is_taken_as_the_message_after_the_budget(scripted, doc_task):
    scripted.script = ["just write it for me"] * 3
    turn = await _simulate(scripted, doc_task)
    assert (turn.text, turn.fallback, turn.terminated, turn.attempts) == (
        "just write it for me",
        "raw_text",
        False,
        3,
    )
    assert not turn.failed  # plain text is still the user's message


async def test_json_without_a_response_ends_the_chat_with_a_recorded_fallback(scripted, doc_task):
    scripted.script = [json.dumps({"thought": "hmm"})] * 2
    turn = await _simulate(scripted, doc_task, retries=1)
    assert (turn.terminated, turn.fallback, turn.attempts) == (True, "terminate", 2)
    assert turn.error == "unreadable simulator output" and turn.failed


async def test_a_failing_server_ends_the_chat_as_a_failure_instead_of_raising(scripted, doc_task):
    scripted.script = ["!500"] * 3
    turn = await _simulate(scripted, doc_task)
    assert turn.terminated and turn.fallback == "terminate" and turn.failed
    assert "server_error" in (turn.error or "")
    assert scripted.stats.chat_requests == 3


def test_the_json_strings_are_sized_to_fit_the_token_limit(scripted):
    from models_serving.client import EndpointSpec
    from training.pipeline.settings import Role
    from training.pipeline.simulator import user_schema

    spec = EndpointSpec(base_url="http://127.0.0.1:9/v1", model="m")
    small = user_schema(Role(spec, {"max_tokens": 128}))["properties"]
    assert (small["thought"]["maxLength"], small["response"]["maxLength"]) == (80, 160)
    roomy = user_schema(Role(spec, {}))["properties"]
    assert (roomy["thought"]["maxLength"], roomy["response"]["maxLength"]) == (200, 800)
