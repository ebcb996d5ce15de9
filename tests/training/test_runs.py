"""Training runs in the database: stages, leases, failures, retries, resume, checkpoints as arms."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from studies.models import Condition, ModelEndpoint, Study, StudyVersion
from tests.factories import ModelEndpointFactory, StudyFactory
from tests.fakes.openai_server import FakeOpenAIServer
from tests.training.conftest import responder, user_says
from training.models import Checkpoint, TrainingRun, TrainingStage
from training.services import runs
from training.services.checkpoints import checkpoint_add_to_study, checkpoint_register

pytestmark = pytest.mark.django_db
S = TrainingStage.Status


@pytest.fixture
def fake_endpoint():
    """A scripted model server in its own thread (the stages run their own event loops)."""
    server = FakeOpenAIServer(tokens=8)
    server.responder = responder(
        user=lambda body: (
            user_says("perfect, thanks [[TERMINATE CHAT]]")
            if "ASSISTANT:" in body["messages"][-1]["content"]
            else user_says("help with a post")
        ),
        policy="Here is a draft. What tone do you want?",
        extractor=json.dumps({"final": "Here is a draft."}),
        judge=json.dumps({"score": 5}),
    )
    base_url, stop = server.run_in_thread()
    yield ModelEndpointFactory(base_url=base_url, served_model="fake-script"), server
    stop()


def _run(endpoint: ModelEndpoint, tmp_path, **stages) -> TrainingRun:
    config = {
        "sft": {"enabled": True, "learning_rate": 1e-4, "batch_size": 1, "max_steps": 1},
        "dpo": {"enabled": False, "learning_rate": 1e-4, "beta": 0.1},
        "online_dpo": {"enabled": False},
        **stages,
    }
    return TrainingRun.objects.create(
        name=f"run-{tmp_path.name}",
        base_model=str(tmp_path / "no-such-model"),
        policy_endpoint=endpoint,
        task_set="document",
        task_limit=2,
        window=1,
        samples=1,
        candidates=2,
        max_turns=1,
        max_tokens=32,
        output_dir=str(tmp_path / "out"),
        stages=config,
    )


def _stage(run: TrainingRun, name: str) -> TrainingStage:
    return run.stage_rows.get(name=name)


def test_starting_a_run_lays_out_its_stages_and_queues_the_first(
    tmp_path, django_capture_on_commit_callbacks
):
    run = _run(ModelEndpointFactory(), tmp_path)
    with django_capture_on_commit_callbacks() as queued:
        runs.run_start(run_id=run.pk, by="alice")
    statuses = dict(run.stage_rows.values_list("name", "status"))
    assert statuses == {
        "collect": S.QUEUED,
        "build_data": S.PENDING,
        "sft": S.PENDING,
        "dpo": S.SKIPPED,
        "online_dpo": S.SKIPPED,
        "register": S.PENDING,
        "evaluate": S.PENDING,
    }
    assert len(queued) == 1
    run.refresh_from_db()
    assert (run.status, run.created_by) == (TrainingRun.Status.RUNNING, "alice")


def test_a_running_run_cannot_be_started_again(tmp_path, django_capture_on_commit_callbacks):
    run = _run(ModelEndpointFactory(), tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
    with pytest.raises(runs.RunStateError, match="already running"):
        runs.run_start(run_id=run.pk)


def test_a_run_with_no_training_stage_is_refused(tmp_path):
    run = _run(ModelEndpointFactory(), tmp_path, sft={"enabled": False})
    with pytest.raises(runs.RunStateError, match="enable at least one"):
        runs.run_start(run_id=run.pk)
    assert not run.stage_rows.exists()


def test_a_stage_held_by_a_live_worker_is_not_taken_twice(
    tmp_path, django_capture_on_commit_callbacks
):
    run = _run(ModelEndpointFactory(), tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
    collect = _stage(run, "collect")
    TrainingStage.objects.filter(pk=collect.pk).update(
        status=S.RUNNING, heartbeat_at=timezone.now(), attempts=1
    )
    assert runs.stage_execute(stage_id=collect.pk) == S.RUNNING
    assert _stage(run, "collect").attempts == 1


def test_collection_and_datasets_run_and_the_next_stage_is_queued(
    tmp_path, fake_endpoint, django_capture_on_commit_callbacks
):
    endpoint, _ = fake_endpoint
    run = _run(endpoint, tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
    with django_capture_on_commit_callbacks() as queued:
        status = runs.stage_execute(stage_id=_stage(run, "collect").pk)
    collect = _stage(run, "collect")
    assert status == S.SUCCEEDED, collect.error
    assert (collect.done, collect.total, collect.result["failed_calls"]) == (2, 2, 0)
    assert "collecting 2 conversations" in collect.log
    rollouts = collect.result["rollouts"]
    assert rollouts["attempted"] == rollouts["succeeded"] > 0 and rollouts["failed"] == 0
    assert collect.result["unranked_candidates"] == 0
    assert _stage(run, "build_data").status == S.QUEUED and len(queued) == 1
    with django_capture_on_commit_callbacks():
        assert runs.stage_execute(stage_id=_stage(run, "build_data").pk) == S.SUCCEEDED
    counts = _stage(run, "build_data").result
    assert counts["sft"] == 2 and counts["prompts"] == 2
    assert (tmp_path / "out/data/sft/train.parquet").is_file()
    assert (tmp_path / "out/data/sft/README.md").read_text().count('"window": 1') == 1


def test_a_restarted_collection_skips_the_conversations_on_disk(
    tmp_path, fake_endpoint, django_capture_on_commit_callbacks
):
    endpoint, server = fake_endpoint
    run = _run(endpoint, tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
        runs.stage_execute(stage_id=_stage(run, "collect").pk)
    calls_for_two = server.stats.chat_requests
    _, second = sorted((tmp_path / "out/conversations").glob("*.json"))
    second.unlink()  # as if the worker died before writing it
    collect = _stage(run, "collect")
    TrainingStage.objects.filter(pk=collect.pk).update(status=S.QUEUED)
    with django_capture_on_commit_callbacks():
        assert runs.stage_execute(stage_id=collect.pk) == S.SUCCEEDED
    assert second.exists()
    assert server.stats.chat_requests - calls_for_two == calls_for_two // 2
    assert _stage(run, "collect").attempts == 2


def test_a_failed_stage_shows_why_fails_the_run_and_can_be_retried(
    tmp_path, fake_endpoint, django_capture_on_commit_callbacks
):
    endpoint, _ = fake_endpoint
    run = _run(endpoint, tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
        runs.stage_execute(stage_id=_stage(run, "collect").pk)
        runs.stage_execute(stage_id=_stage(run, "build_data").pk)
        assert runs.stage_execute(stage_id=_stage(run, "sft").pk) == S.FAILED
    sft = _stage(run, "sft")
    assert "no-such-model" in sft.error
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    with pytest.raises(runs.RunStateError, match="only a failed, cancelled or interrupted stage"):
        runs.stage_retry(stage_id=_stage(run, "collect").pk)
    with django_capture_on_commit_callbacks() as queued:
        runs.stage_retry(stage_id=sft.pk)
    assert _stage(run, "sft").status == S.QUEUED and len(queued) == 1
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING


def test_a_stage_whose_worker_went_quiet_is_interrupted_and_can_be_retried(
    tmp_path, settings, django_capture_on_commit_callbacks
):
    run = _run(ModelEndpointFactory(), tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
    quiet, live = _stage(run, "collect"), _stage(run, "build_data")
    stale = timezone.now() - timedelta(minutes=settings.JOB_STALE_MINUTES, seconds=1)
    TrainingStage.objects.filter(pk=quiet.pk).update(status=S.RUNNING, heartbeat_at=stale)
    TrainingStage.objects.filter(pk=live.pk).update(status=S.RUNNING, heartbeat_at=timezone.now())
    assert runs.stages_recover_stale() == [quiet.pk]
    run.refresh_from_db()
    assert _stage(run, "collect").status == S.INTERRUPTED
    assert run.status == TrainingRun.Status.INTERRUPTED
    with django_capture_on_commit_callbacks() as queued:
        runs.stage_retry(stage_id=quiet.pk)
    assert len(queued) == 1 and _stage(run, "collect").status == S.QUEUED


def test_a_running_stage_no_worker_holds_is_interrupted(
    tmp_path, django_capture_on_commit_callbacks
):
    run = _run(ModelEndpointFactory(), tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
    stage = _stage(run, "collect")
    TrainingStage.objects.filter(pk=stage.pk).update(status=S.RUNNING, heartbeat_at=timezone.now())
    assert runs.stages_recover_stale(workers={stage.task_id}) == []
    assert runs.stages_recover_stale(workers={"another-task"}) == [stage.pk]
    assert _stage(run, "collect").status == S.INTERRUPTED


def test_cancelling_a_run_stops_its_queued_stage_and_queues_no_more(
    tmp_path, django_capture_on_commit_callbacks
):
    run = _run(ModelEndpointFactory(), tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
    collect = _stage(run, "collect")
    runs.run_cancel(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and run.cancel_requested
    assert _stage(run, "collect").status == S.CANCELLED
    assert runs.stage_execute(stage_id=collect.pk) == S.CANCELLED  # a late delivery does nothing
    with pytest.raises(runs.RunStateError):
        runs.run_cancel(run_id=run.pk)


@pytest.mark.django_db(transaction=True)
def test_a_run_cancelled_while_collecting_stops_at_its_next_progress_write(
    tmp_path, fake_endpoint, django_capture_on_commit_callbacks
):
    endpoint, server = fake_endpoint
    run = _run(endpoint, tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)

    def cancel() -> None:
        runs.run_cancel(run_id=run.pk)
        connection.close()

    def policy_then_cancel(body):
        # The researcher presses Cancel while the first conversation is being collected (from
        # another thread: the fake server's loop is async).
        researcher = threading.Thread(target=cancel)
        researcher.start()
        researcher.join()
        return "Here is a draft. What tone do you want?"

    server.responder = responder(
        user=lambda body: user_says("help with a post"),
        policy=policy_then_cancel,
        extractor=json.dumps({"final": "Here is a draft."}),
        judge=json.dumps({"score": 5}),
    )
    with django_capture_on_commit_callbacks() as queued:
        status = runs.stage_execute(stage_id=_stage(run, "collect").pk)
    run.refresh_from_db()
    assert status == S.CANCELLED and run.status == TrainingRun.Status.CANCELLED
    # Conversations run concurrently, so both may be done by then: what matters is that the
    # stage ends cancelled at that write (what it wrote stays on disk) and nothing comes next.
    assert not queued and (tmp_path / "out").is_dir()
    assert _stage(run, "build_data").status == S.PENDING


@pytest.mark.parametrize("ends", ["finishes", "fails"])
def test_a_cancel_during_a_stages_last_stretch_still_ends_the_stage(
    tmp_path, monkeypatch, ends, django_capture_on_commit_callbacks
):
    # Cancel pressed after the stage's last progress write: its closing log line must not leave
    # the stage running with no worker (its result kept when it finished, its error when not).
    from training.services import work

    def last_stretch(run, stage, reporter):
        runs.run_cancel(run_id=run.pk)
        if ends == "fails":
            raise RuntimeError("out of memory")
        return {"examples": 3}

    monkeypatch.setitem(work.STAGE_WORK, "collect", last_stretch)
    run = _run(ModelEndpointFactory(), tmp_path)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
    with django_capture_on_commit_callbacks() as queued:
        status = runs.stage_execute(stage_id=_stage(run, "collect").pk)
    collect = _stage(run, "collect")
    run.refresh_from_db()
    assert not queued and collect.status == status != S.RUNNING
    if ends == "finishes":
        assert status == S.SUCCEEDED and collect.result == {"examples": 3}
        assert run.status == TrainingRun.Status.CANCELLED
    else:
        assert status == S.FAILED and "out of memory" in collect.error


def _adapter(tmp_path, rank=32):
    folder = tmp_path / "out" / "dpo" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
    return str(folder)


def test_a_registered_checkpoint_gets_a_vllm_endpoint_serving_its_adapter(tmp_path, settings):
    settings.TRAINING_GPU, settings.TRAINING_VLLM_PYTHON = False, "/opt/vllm/bin/python"
    run = _run(ModelEndpointFactory(), tmp_path)
    checkpoint = checkpoint_register(run=run, adapter_path=_adapter(tmp_path))
    endpoint = checkpoint.endpoint
    assert checkpoint.adapter_name == f"collabllm-run{run.pk}-dpo"
    assert endpoint.server == "vllm" and endpoint.served_model == f"run{run.pk}-base"
    assert endpoint.launch["lora_modules"] == {checkpoint.adapter_name: checkpoint.adapter_path}
    assert endpoint.launch["python"] == "/opt/vllm/bin/python"
    assert endpoint.launch["extra_args"][:2] == ["--max-lora-rank", "32"]
    assert "float32" in endpoint.launch["extra_args"]
    assert endpoint.launch["gpu_memory_utilization"] == 0.25
    again = checkpoint_register(run=run, adapter_path=checkpoint.adapter_path)
    assert again.pk == checkpoint.pk and Checkpoint.objects.count() == 1


def test_a_checkpoint_becomes_an_arm_of_a_paused_study_but_not_a_live_one(tmp_path):
    run = _run(ModelEndpointFactory(), tmp_path)
    checkpoint = checkpoint_register(run=run, adapter_path=_adapter(tmp_path))
    live = StudyFactory(status=Study.Status.LIVE)
    with pytest.raises(runs.RunStateError, match="pause the study"):
        checkpoint_add_to_study(checkpoint=checkpoint, study=live)
    assert not Condition.objects.filter(study=live).exists()
    paused = StudyFactory(status=Study.Status.PAUSED)
    arm = checkpoint_add_to_study(checkpoint=checkpoint, study=paused, by="alice")
    assert (arm.endpoint, arm.model_name, arm.system_prompt) == (
        checkpoint.endpoint,
        checkpoint.adapter_name,
        "collabllm",
    )
    version = StudyVersion.objects.filter(study=paused).latest("number")
    assert arm.key in json.dumps(version.config)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_online_dpo_trains_on_the_multiturn_reward_of_sampled_replies(
    tmp_path, fake_endpoint, django_capture_on_commit_callbacks
):
    from tests.training.tiny import tiny_policy

    endpoint, server = fake_endpoint
    online = {
        "enabled": True,
        "learning_rate": 1e-4,
        "batch_size": 2,
        "beta": 0.1,
        "max_steps": 1,
        "max_new_tokens": 8,
    }
    run = _run(endpoint, tmp_path, sft={"enabled": False}, online_dpo=online)
    TrainingRun.objects.filter(pk=run.pk).update(
        base_model=str(tiny_policy(tmp_path / "base")),
        stages={**run.stages, "per_device_batch_size": 2, "max_length": 256},
    )
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
        for name in ("collect", "build_data"):
            runs.stage_execute(stage_id=_stage(run, name).pk)
    before = server.stats.chat_requests
    with django_capture_on_commit_callbacks() as queued:
        status = runs.stage_execute(stage_id=_stage(run, "online_dpo").pk)
    stage = _stage(run, "online_dpo")
    assert status == S.SUCCEEDED, stage.error
    adapter = Path(stage.result["adapter"])
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 32
    # Each of the 2 sampled replies was scored by forward sampling: user, policy, extractor.
    assert server.stats.chat_requests - before >= 2 * 3
    assert _stage(run, "register").status == S.QUEUED and len(queued) == 1


def test_the_train_command_queues_a_run_and_names_what_it_cannot_start(
    tmp_path, django_capture_on_commit_callbacks
):
    from io import StringIO

    from django.core.management import CommandError, call_command

    run = _run(ModelEndpointFactory(), tmp_path)
    out = StringIO()
    with django_capture_on_commit_callbacks() as queued:
        call_command("train", str(run.pk), stdout=out)
    assert "Queued" in out.getvalue() and len(queued) == 1
    with pytest.raises(CommandError, match="already running"):
        call_command("train", str(run.pk))
    with pytest.raises(CommandError, match="no training run"):
        call_command("train", "999999")


@pytest.mark.django_db(transaction=True)  # stages are queued on commit, as outside tests
def test_an_inline_run_carries_out_its_stages_here_and_reports_the_failure(
    tmp_path, fake_endpoint, settings
):
    from io import StringIO

    from django.core.management import CommandError, call_command

    from webapp.celery import app

    endpoint, _ = fake_endpoint
    run = _run(endpoint, tmp_path)
    out = StringIO()
    try:
        with pytest.raises(CommandError, match="ended failed"):
            call_command("train", str(run.pk), "--inline", stdout=out)
    finally:
        app.conf.task_always_eager = False
    statuses = dict(run.stage_rows.values_list("name", "status"))
    assert statuses["collect"] == statuses["build_data"] == S.SUCCEEDED
    assert statuses["sft"] == S.FAILED and "sft: failed" in out.getvalue()


def test_a_finished_stage_keeps_the_rate_it_ran_at():
    start = timezone.now() - timedelta(hours=1)
    stage = TrainingStage(
        name="collect", done=8, total=8, started_at=start, finished_at=start + timedelta(minutes=4)
    )
    assert runs.stage_rate(stage) == (pytest.approx(2.0), 0.0)
