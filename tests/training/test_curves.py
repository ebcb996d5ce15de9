"""Loss (and, for DPO, reward margin) per step: recorded while a stage trains, plotted as SVG."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from tests.factories import ModelEndpointFactory
from tests.training.tiny import NOTES, tiny_policy
from training.charts import line_chart
from training.models import TrainingRun, TrainingStage
from training.pipeline.curves import curve_add, curve_point
from training.services import work
from training.services.runs import Reporter

STAGES = {
    "sft": {"enabled": True, "learning_rate": 1e-3, "batch_size": 2, "max_steps": 3},
    "dpo": {"enabled": True, "learning_rate": 1e-3, "batch_size": 2, "max_steps": 2, "beta": 0.1},
    "online_dpo": {"enabled": False},
    "per_device_batch_size": 2,
    "max_length": 96,
}


def _write(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")


@pytest.fixture
def tiny_run(tmp_path, monkeypatch) -> TrainingRun:
    """A run on a tiny random Llama with small SFT and DPO datasets already built."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    user = [[{"role": "user", "content": f"write a {note}"}] for note in NOTES]
    short = [{"role": "assistant", "content": "what is it for ?"}]
    _write(out / "data/sft", [{"messages": u + short} for u in user])
    _write(
        out / "data/dpo",
        [
            {"prompt": u, "chosen": short, "rejected": [{"role": "assistant", "content": n}]}
            for u, n in zip(user, NOTES, strict=True)
        ],
    )
    run = TrainingRun.objects.create(
        name="curves",
        base_model=str(tiny_policy(tmp_path / "base")),
        policy_endpoint=ModelEndpointFactory(),
        output_dir=str(out),
        stages=STAGES,
    )
    for position, name in enumerate(("sft", "dpo")):
        TrainingStage.objects.create(run=run, name=name, position=position, status="running")
    return run


def _train(run: TrainingRun, name: str) -> TrainingStage:
    stage = run.stage_rows.get(name=name)
    result = getattr(work, name)(run, stage, Reporter(stage))
    TrainingStage.objects.filter(pk=stage.pk).update(status="succeeded", result=result)
    stage.refresh_from_db()
    return stage


def _page(run: TrainingRun) -> str:
    client = Client()
    client.force_login(User.objects.create_superuser("researcher", "r@example.org", "pw-r-1"))
    url = reverse("admin:training_trainingrun_progress", args=[run.pk])
    return client.get(url).content.decode()


def _figure(page: str, figure_id: str) -> str:
    found = re.search(rf'<figure id="{figure_id}">(.*?)</figure>', page, re.S)
    assert found, f"no figure {figure_id}"
    return found.group(1)


@pytest.mark.django_db
def test_a_tiny_sft_stage_records_its_loss_per_step_and_the_page_plots_each_step(tiny_run):
    stage = _train(tiny_run, "sft")

    assert [p["step"] for p in stage.curve] == [1, 2, 3]
    assert all(p["loss"] > 0 for p in stage.curve)
    figure = _figure(_page(tiny_run), "curve-sft-1")
    assert "Loss per step" in figure
    assert re.findall(r'<circle class="point"[^>]*data-step="(\d+)"', figure) == ["1", "2", "3"]
    assert "<polyline" in figure and "style=" not in figure


@pytest.mark.django_db
def test_a_dpo_stage_also_plots_its_reward_margin(tiny_run):
    _train(tiny_run, "sft")
    stage = _train(tiny_run, "dpo")

    assert all("rewards/margins" in p for p in stage.curve)
    page = _page(tiny_run)
    margins = _figure(page, "curve-dpo-2")
    assert "Reward margin" in margins
    assert len(re.findall(r'<circle class="point"', margins)) == len(stage.curve) == 2


def test_a_resumed_stage_replaces_the_steps_it_logs_again():
    curve = [{"step": s, "loss": 3.0 - s} for s in (1.0, 2.0, 3.0)]
    assert curve_add(curve, {"step": 2.0, "loss": 9.0}) == [curve[0], {"step": 2.0, "loss": 9.0}]


def test_the_closing_summary_is_not_a_step():
    assert curve_point(5, {"train_loss": 1.2, "train_runtime": 3.0}) is None
    assert curve_point(5, {"loss": 1.2, "grad_norm": 0.3}) == {"step": 5.0, "loss": 1.2}


def test_a_higher_loss_is_drawn_higher_up():
    chart = line_chart([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}], "loss", "Loss")
    first, second = chart.markers
    assert first.y < second.y and first.x < second.x


@pytest.mark.django_db
def test_a_diverged_step_neither_stops_the_progress_write_nor_bends_the_chart():
    # fp16 on a tiny run can log loss nan or inf: the JSON column takes no NaN, and the stage
    # must not fail over a progress line; the chart plots the finite steps.
    run = TrainingRun.objects.create(
        name="nan", base_model="/m", policy_endpoint=ModelEndpointFactory(), stages=STAGES
    )
    stage = TrainingStage.objects.create(run=run, name="sft", position=0, status="running")
    reporter = Reporter(stage)
    reporter.trained(1, 3, {"loss": 2.0})
    reporter.trained(2, 3, {"loss": float("nan"), "rewards/margins": float("inf")})
    reporter.trained(3, 3, {"loss": 1.0})
    stage.refresh_from_db()
    assert [p["step"] for p in stage.curve] == [1.0, 3.0] and stage.done == 3
