"""Work queues by kind: every task goes to its kind's queue, and the housekeeping beat tasks keep
their schedule while a pilot, a report and a training stage hold the other workers (real worker
processes, as `make demo` starts them, on the real Redis broker)."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from studies.models import PilotRun, ReportRun
from tests.e2e import conftest as e2e
from tests.factories import ModelEndpointFactory, StudyFactory
from training.models import TrainingRun, TrainingStage
from training.services import runs
from webapp import devrunner
from webapp.celery import app

ROUTES = {
    "studies.tasks.build_study_report": "reports",
    "studies.tasks.export_run": "reports",
    "studies.pilot.tasks.run_pilot": "pilots",
    "training.tasks.run_training_stage": "training",
    "studies.tasks.reap_stale_replies": "housekeeping",
    "studies.tasks.time_out_participants": "housekeeping",
    "studies.tasks.abandon_stale_participants": "housekeeping",
    "studies.tasks.check_endpoint_health": "housekeeping",
    "studies.tasks.recover_interrupted_jobs": "housekeeping",
    "training.tasks.recover_stale_stages": "housekeeping",
}


def queue_of(name: str) -> str:
    app.loader.import_default_modules()
    return app.amqp.router.route({}, name)["queue"].name


@pytest.mark.parametrize(("task", "queue"), ROUTES.items())
def test_each_task_goes_to_its_kinds_queue(task, queue):
    assert task in app.tasks
    assert queue_of(task) == queue


def test_every_beat_task_is_housekeeping():
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert queue_of(entry["task"]) == "housekeeping", entry["task"]


def test_the_demo_runs_a_worker_for_every_queue_and_beat_beside_housekeeping():
    taken = {q for _, queues in devrunner.WORKER_QUEUES for q in queues.split(",")}
    assert set(ROUTES.values()) | {settings.TRAINING_GPU_QUEUE} <= taken
    commands = [devrunner.worker_command(n, q) for n, q in devrunner.WORKER_QUEUES]
    assert [c for c in commands if "--beat" in c] == [devrunner.worker_command(*ROUTES_HK)]


ROUTES_HK = ("housekeeping", "housekeeping")
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")
EVERY = 3.0  # seconds between two runs of each beat task in this test
HOLD = 24.0  # seconds each long job holds its worker


def _times(log: Path, pattern: str) -> list[datetime]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        stamp = STAMP.match(line)
        if stamp and re.search(pattern, line):
            found.append(datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f"))
    return found


@pytest.fixture
def demo_workers(tmp_path):
    """The demo's workers (webapp/devrunner.py), beat every EVERY seconds, on the test database."""
    yield from _workers(tmp_path, devrunner.WORKER_QUEUES)


def _workers(tmp_path, groups):
    db = settings.DATABASES["default"]
    options = {k: v for k, v in (db.get("OPTIONS") or {}).items() if k != "pool"}
    env = e2e._server_env() | {
        "HOUSEKEEPING_EVERY_SECONDS": str(EVERY),
        "DATABASE_POOL": "false",  # as the demo runs its workers
        "DATABASE_URL": e2e.database_url({**db, "OPTIONS": options}),
    }
    with app.connection_for_write() as connection:  # messages an earlier run left behind
        for queue in {q for _, queues in devrunner.WORKER_QUEUES for q in queues.split(",")}:
            connection.default_channel.queue_purge(queue)
    procs, logs = [], {}
    for name, queues in groups:
        command = devrunner.worker_command(name, queues)
        command = [c.replace(str(devrunner.LOCAL), str(tmp_path)) for c in command]
        command += ["-I", "tests.webapp.slow_job", "--without-gossip", "--without-mingle"]
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("ab") as out:
            procs.append(
                subprocess.Popen(
                    command,
                    cwd=devrunner.ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    yield logs
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_ready(logs: dict[str, Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(" ready." in log.read_text(errors="replace") for log in logs.values()):
            return
        time.sleep(0.5)
    pytest.fail("\n".join(f"{n}:\n{e2e._tail(log)}" for n, log in logs.items()))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_beat_tasks_keep_their_schedule_while_a_pilot_a_report_and_a_training_stage_run(
    demo_workers,
):
    logs = demo_workers
    _wait_ready(logs)
    from tests.webapp.slow_job import hold

    for queue in ("reports", "pilots", "training"):
        hold.apply_async((HOLD,), queue=queue)
    time.sleep(HOLD + 2 * EVERY)
    held = {q: _times(logs[q], r"slow_job\.hold\[.*\] succeeded") for q in ("reports", "pilots")}
    held["training"] = _times(logs["training"], r"slow_job\.hold\[.*\] succeeded")
    assert all(len(times) == 1 for times in held.values()), held  # each long job ran to its end
    started = {q: _times(logs[q], r"slow_job\.hold\[.*\] received")[0] for q in held}
    window = (max(started.values()), min(t[0] for t in held.values()))
    runs = [
        t
        for t in _times(logs["housekeeping"], r"reap_stale_replies\[.*\] succeeded")
        if window[0] <= t <= window[1]
    ]
    # All three long jobs held their workers at once, and beat's task kept running meanwhile.
    assert (window[1] - window[0]).total_seconds() > HOLD / 2
    assert len(runs) >= (window[1] - window[0]).total_seconds() / EVERY / 2, runs
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(runs)]
    # The lag: how much later than its schedule the beat task ran, at worst.
    print(
        f"\nbeat every {EVERY:g}s, three long jobs running: {len(runs)} runs of reap-stale-replies,"
    )
    print(f"largest gap {max(gaps):.2f}s (lag {max(gaps) - EVERY:.2f}s)")


def _until(check, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_jobs_left_running_or_queued_by_a_dead_worker_are_interrupted_when_a_worker_starts(
    tmp_path, django_capture_on_commit_callbacks
):
    study = StudyFactory()
    now = timezone.now()
    # As a shutdown leaves them: a report and a pilot running (fresh heartbeats) and a training
    # stage running, under task ids no worker holds any more, and a report queued whose message
    # went with a Redis that kept nothing.
    report = ReportRun.objects.create(
        study=study, status="running", task_id="dead-1", heartbeat_at=now
    )
    lost = ReportRun.objects.create(study=study, status="queued", task_id="lost-1")
    ReportRun.objects.filter(pk=lost.pk).update(created_at=now - timedelta(minutes=5))
    pilot = PilotRun.objects.create(
        study=study, participants=3, status="running", task_id="dead-2", heartbeat_at=now
    )
    run = TrainingRun.objects.create(
        name="r", base_model="/m", policy_endpoint=ModelEndpointFactory()
    )
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk)
    stage = run.stage_rows.get(name="collect")
    TrainingStage.objects.filter(pk=stage.pk).update(status="running", heartbeat_at=now)

    worker = _workers(tmp_path, devrunner.WORKER_QUEUES[:1])  # only housekeeping, with beat
    logs = next(worker)
    try:
        _wait_ready(logs)
        interrupted = _until(
            lambda: (
                ReportRun.objects.filter(status="interrupted").count() == 2
                and PilotRun.objects.get(pk=pilot.pk).status == "interrupted"
                and TrainingStage.objects.get(pk=stage.pk).status == "interrupted"
            )
        )
        assert interrupted, e2e._tail(logs["housekeeping"])
    finally:
        next(worker, None)
    assert TrainingRun.objects.get(pk=run.pk).status == "interrupted"
    assert ReportRun.objects.get(pk=report.pk).finished_at is not None
