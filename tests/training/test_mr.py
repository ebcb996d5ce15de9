from __future__ import annotations

import json

import pytest

from tests.training.conftest import DOC, responder, scripted_roles, user_says
from training.pipeline.collect import collect_conversation
from training.pipeline.llm import Runtime
from training.pipeline.mr import Rollout, combine, score_candidates
from training.pipeline.rewards import Components, score_conversation
from training.pipeline.settings import RewardSettings, SamplingSettings

JUDGE_4 = json.dumps({"score": 4})


def _last_assistant(body) -> str:
    """The extractor's reply: the last ASSISTANT paragraph of the transcript it was sent."""
    transcript = body["messages"][-1]["content"]
    last = [p for p in transcript.split("\n\n") if p.startswith("ASSISTANT: ")][-1]
    return json.dumps({"final": last.removeprefix("ASSISTANT: ")})


def _rollout(task=None, penalty=None, interactivity=None) -> Rollout:
    return Rollout(
        future=[],
        terminated=False,
        components=Components(task=task, penalty=penalty, interactivity=interactivity),
    )


def test_mr_is_the_weighted_sum_of_the_term_means():
    rollouts = [_rollout(0.2, 0.1, 0.5), _rollout(0.4, 0.3, 1.0)]
    score = combine("c", rollouts, RewardSettings(interactivity_weight=0.5))
    assert score.mr == pytest.approx(0.3 - 0.2 + 0.5 * 0.75)
    assert score.spreads["task"] == pytest.approx(0.1)


def test_a_term_failing_in_one_rollout_is_averaged_over_the_others():
    rollouts = [_rollout(0.2, 0.1, None), _rollout(0.4, 0.3, 1.0)]
    score = combine("c", rollouts, RewardSettings())
    assert score.means["interactivity"] == 1.0
    assert score.mr == pytest.approx(0.3 - 0.2 + 1.0)


def test_a_term_failing_in_every_rollout_leaves_the_candidate_unscored():
    score = combine("c", [_rollout(0.2, 0.1, None), _rollout(0.4, 0.3, None)], RewardSettings())
    assert score.mr is None and score.means["task"] == pytest.approx(0.3)


async def test_each_term_is_kept_and_a_broken_judge_does_not_stop_the_others(scripted, doc_task):
    scripted.responder = responder(extractor=json.dumps({"final": DOC}), judge="five!")
    roles = scripted_roles(scripted)
    chat = [{"role": "user", "content": "help me"}, {"role": "assistant", "content": DOC}]
    terms = await score_conversation(Runtime(8), roles, doc_task, chat, RewardSettings())
    assert terms.task == pytest.approx(1.0)
    assert terms.tokens == len(DOC.split()) + 2  # the fake counts words, both sides by default
    assert terms.penalty == pytest.approx(1e-4 * terms.tokens)
    assert (
        terms.interactivity is None and "unreadable judge output" in terms.errors["interactivity"]
    )
    assert terms.reward(RewardSettings()) is None


async def test_the_penalty_follows_the_clamp_and_scope_settings(scripted, doc_task):
    scripted.responder = responder(extractor=json.dumps({"final": DOC}), judge=JUDGE_4)
    roles, rt = scripted_roles(scripted), Runtime(8)
    chat = [{"role": "user", "content": "help me"}, {"role": "assistant", "content": DOC}]
    paper = await score_conversation(rt, roles, doc_task, chat, RewardSettings(token_lambda=0.5))
    reference = RewardSettings(token_lambda=0.5, token_clamp=False, token_scope="assistant")
    code_like = await score_conversation(rt, roles, doc_task, chat, reference)
    assert paper.penalty == 1.0
    assert code_like.tokens == len(DOC.split())
    assert code_like.penalty == pytest.approx(0.5 * len(DOC.split()))
    assert paper.interactivity == pytest.approx(0.75)


async def test_all_rollouts_of_all_candidates_are_in_flight_together(scripted, doc_task):
    scripted.responder = responder(
        user=user_says("more detail please"),
        policy="sure",
        extractor=_last_assistant,
        judge=JUDGE_4,
    )
    roles = scripted_roles(scripted, fake_first_token_delay_ms=300)
    sampling = SamplingSettings(window=1, samples=3, candidates=2)
    history = [{"role": "user", "content": "write me a compost note"}]
    scores = await score_candidates(
        Runtime(32), roles, doc_task, history, [DOC, "no idea"], sampling, RewardSettings()
    )
    # 2 candidates x 3 samples at once; when scoring, each rollout's extractor and judge too.
    assert scripted.stats.max_in_flight == 12
    assert [len(s.rollouts) for s in scores] == [3, 3]
    assert all(len(r.future) == 2 for s in scores for r in s.rollouts)  # w = 1: user + policy


async def test_the_in_flight_bound_is_respected(scripted, doc_task):
    scripted.responder = responder(
        user=user_says("ok"), policy="sure", extractor=_last_assistant, judge=JUDGE_4
    )
    roles = scripted_roles(scripted, fake_first_token_delay_ms=100)
    sampling = SamplingSettings(window=1, samples=3, candidates=2)
    history = [{"role": "user", "content": "hi"}]
    await score_candidates(
        Runtime(2), roles, doc_task, history, ["a", "b"], sampling, RewardSettings()
    )
    assert scripted.stats.max_in_flight == 2


async def test_a_failing_policy_server_fails_the_rollouts_and_leaves_the_candidate_unranked(
    scripted, doc_task
):
    def policy(body):
        return "!500"

    scripted.responder = responder(
        user=user_says("go on"), policy=policy, extractor=_last_assistant, judge=JUDGE_4
    )
    sampling = SamplingSettings(window=2, samples=2, candidates=1)
    history = [{"role": "user", "content": "hi"}]
    rt = Runtime(8)
    [score] = await score_candidates(
        rt, scripted_roles(scripted), doc_task, history, [DOC], sampling, RewardSettings()
    )
    assert all(r.failure == "policy_failed" for r in score.rollouts)
    assert all("server_error" in (r.error or "") for r in score.rollouts)
    # Not scored on what was sampled before the failure: a cut-short future is not an ending.
    assert score.mr is None and "0 of 2 rollouts succeeded" in (score.unranked or "")
    assert score.counts == {
        "attempted": 2,
        "succeeded": 0,
        "failed": 2,
        "failures": {"policy_failed": 2},
    }
    assert "judge" not in rt.stats.by_role and "extractor" not in rt.stats.by_role


def _failing_first(times: int, then: str):
    """A user simulator whose server fails its first `times` calls."""
    calls = iter(range(10_000))
    return lambda body: "!500" if next(calls) < times else then


async def test_a_failed_user_simulator_is_a_failure_left_out_of_the_mean(scripted, doc_task):
    # The policy's "sure" scores about 0 on the task; the candidate alone (what a failed rollout
    # has as its future) would score 1: the mean shows whether a failure was scored.
    scripted.responder = responder(
        user=_failing_first(1, user_says("more detail please")),
        policy="sure",
        extractor=_last_assistant,
        judge=JUDGE_4,
    )
    sampling = SamplingSettings(window=1, samples=3, candidates=1, user_retries=0)
    history = [{"role": "user", "content": "write me a compost note"}]
    [score] = await score_candidates(
        Runtime(8), scripted_roles(scripted), doc_task, history, [DOC], sampling, RewardSettings()
    )
    [failed] = [r for r in score.rollouts if r.failed]
    assert failed.failure == "user_failed" and not failed.terminated
    assert "server_error" in (failed.error or "")
    assert score.counts["succeeded"] == 2 and score.counts["failures"] == {"user_failed": 1}
    assert score.means["task"] is not None and score.means["task"] < 0.5
    assert score.mr is not None and score.unranked is None
    record = score.record(RewardSettings())
    assert record["rollout_counts"] == score.counts and record["rollouts"][0]["failure"] in (
        None,
        "user_failed",
    )


async def test_a_simulated_user_who_ends_the_chat_is_an_ending_and_is_scored(scripted, doc_task):
    scripted.responder = responder(
        user=user_says("perfect, thanks [[TERMINATE CHAT]]"),
        policy="sure",
        extractor=_last_assistant,
        judge=JUDGE_4,
    )
    sampling = SamplingSettings(window=2, samples=2, candidates=1)
    history = [{"role": "user", "content": "write me a compost note"}]
    [score] = await score_candidates(
        Runtime(8), scripted_roles(scripted), doc_task, history, [DOC], sampling, RewardSettings()
    )
    assert all(r.terminated and not r.failed for r in score.rollouts)
    assert score.counts["failed"] == 0 and score.means["task"] == pytest.approx(1.0)
    assert score.mr is not None


async def test_a_candidate_with_too_few_successful_rollouts_is_not_ranked(scripted, doc_task):
    scripted.responder = responder(
        user=_failing_first(2, user_says("ok")), policy="sure", extractor=_last_assistant,
        judge=JUDGE_4,
    )  # fmt: skip
    sampling = SamplingSettings(window=1, samples=3, candidates=1, user_retries=0)
    assert sampling.min_successful() == 2  # half of S, rounded up
    history = [{"role": "user", "content": "hi"}]
    [score] = await score_candidates(
        Runtime(8), scripted_roles(scripted), doc_task, history, [DOC], sampling, RewardSettings()
    )
    assert score.counts["succeeded"] == 1 and score.mr is None
    assert "1 of 3 rollouts succeeded; 2 needed" == score.unranked


def test_failed_rollouts_are_left_out_of_every_term():
    broken = _rollout(1.0, 0.0, 1.0)
    broken.fail("policy_failed", "server_error: HTTP 500")
    score = combine("c", [broken, _rollout(0.2, 0.1, 0.5)], RewardSettings(), min_successful=1)
    assert score.means == {"task": 0.2, "penalty": 0.1, "interactivity": 0.5}
    assert score.counts["failed"] == 1


def test_the_successful_rollout_minimum_must_fit_the_samples():
    with pytest.raises(ValueError, match="min_successful_rollouts"):
        SamplingSettings(samples=3, min_successful_rollouts=4)
    assert SamplingSettings(samples=4).min_successful() == 2


async def test_a_user_simulator_that_fails_at_the_start_is_not_a_finished_chat(scripted, doc_task):
    scripted.responder = responder(user="!500", policy="sure", extractor=_last_assistant)
    conv = await collect_conversation(
        Runtime(8), scripted_roles(scripted), doc_task, SamplingSettings(), RewardSettings()
    )
    assert conv.ended == "user_failed" and conv.messages == []


async def test_the_chosen_path_follows_the_best_candidate(scripted, doc_task):
    replies = iter([DOC, "bananas are yellow"] * 10)
    scripted.responder = responder(
        user=lambda body: (
            user_says("thanks, perfect [[TERMINATE CHAT]]")
            if "ASSISTANT:" in body["messages"][-1]["content"]
            else user_says("compost note please")
        ),
        policy=lambda body: next(replies),
        extractor=_last_assistant,
        judge=JUDGE_4,
    )
    sampling = SamplingSettings(window=1, samples=2, candidates=2, max_turns=3)
    conv = await collect_conversation(
        Runtime(16), scripted_roles(scripted), doc_task, sampling, RewardSettings()
    )
    assert conv.ended == "terminated"
    assert conv.messages == [
        {"role": "user", "content": "compost note please"},
        {"role": "assistant", "content": DOC},
    ]
    [turn] = conv.turns
    mrs = {c["candidate"]: c["mr"] for c in turn["candidates"]}
    assert mrs[DOC] > mrs["bananas are yellow"]
    assert all(len(c["rollouts"]) == 2 for c in turn["candidates"])


async def test_a_zero_interactivity_weight_skips_the_judge(scripted, doc_task):
    scripted.responder = responder(extractor=json.dumps({"final": DOC}), judge="never asked")
    chat = [{"role": "user", "content": "help me"}, {"role": "assistant", "content": DOC}]
    settings = RewardSettings(interactivity_weight=0)
    terms = await score_conversation(Runtime(8), scripted_roles(scripted), doc_task, chat, settings)
    assert terms.interactivity == 0.0 and terms.reward(settings) is not None
    assert scripted.stats.chat_requests == 1  # the extractor only
