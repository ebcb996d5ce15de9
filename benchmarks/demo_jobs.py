"""A pilot, a report and a training run at once on the running demo: beat's lag, and Cancel.

Run from the repository root with `make demo` up in another terminal and the base-model folder
made (about 10 minutes on 2 CPUs):

    make base-model
    HOUSEKEEPING_EVERY_SECONDS=10 make demo          # terminal 1: beat every 10 s, not 60
    .venv/bin/python benchmarks/demo_jobs.py          # terminal 2

Everything goes through the demo's admin in Chromium (/usr/bin/chromium), as a researcher with
the "Study admin" role (a user `demo-jobs` made for it): the run's Start button on its progress
page (a `cpu-tiny` run, training/services/presets.py), "Run pilot" on the demo study's monitor
(3 simulated participants, one at a time), "Build report" on its report page. Once the pilot and
the training stage both run, a report is built to the end, then a second one is built and
cancelled at once; after HOLD seconds the pilot and the training run are cancelled with their
Cancel buttons. Measured: the gaps between runs of beat's `reap_stale_replies` in the
housekeeping worker's log (.local/logs/worker-housekeeping.log) while the long jobs ran, each
job's state over time, and how long each Cancel took to reach `cancelled`.
Results: benchmarks/results/demo_jobs.{md,json}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
os.environ.setdefault("DJANGO_DEMO_ENV_FILE", str(ROOT / ".local" / "demo.env"))
# Playwright's sync API runs an event loop in this thread; the ORM calls here are plain reads.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.urls import reverse  # noqa: E402
from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

from studies.models import PilotRun, ReportRun, Study  # noqa: E402
from training.models import TrainingStage  # noqa: E402
from training.services.presets import run_from_preset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HOUSEKEEPING_LOG = ROOT / ".local" / "logs" / "worker-housekeeping.log"
BASE_MODEL = ROOT / ".local" / "models" / "smollm2-135m-bf16"
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")
BEAT_TASK = r"reap_stale_replies\[.*\] succeeded"
USER = "demo-jobs"


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def beat_runs(since: datetime, until: datetime) -> list[datetime]:
    """When the housekeeping worker finished beat's reap task (its log's clock is UTC here)."""
    found = []
    for line in HOUSEKEEPING_LOG.read_text(errors="replace").splitlines():
        stamp = STAMP.match(line)
        if stamp and re.search(BEAT_TASK, line):
            at = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f")
            if since <= at <= until:
                found.append(at)
    return found


def researcher() -> str:
    """A Study admin with a fresh password (made once, reset each run)."""
    password = secrets.token_urlsafe(12)
    user, _ = User.objects.get_or_create(username=USER, defaults={"is_staff": True})
    user.is_staff = True
    user.set_password(password)
    user.save()
    user.groups.set([Group.objects.get(name="Study admin")])
    return password


def until(check, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")


def click(page: Page, url: str, button: str) -> None:
    page.goto(url)
    page.get_by_role("button", name=button, exact=True).first.click()
    page.wait_for_load_state()


def build_report(page: Page, url: str) -> None:
    """The demo's participants are all pilot ones: the report must include them."""
    page.goto(url)
    for attempt in range(5):  # the page may still be settling (its report section polls)
        try:
            page.get_by_label("include pilot participants").check()
            break
        except PlaywrightError:
            if attempt == 4:
                raise
            page.wait_for_timeout(500)
    page.get_by_role("button", name="Build report", exact=True).click()
    page.wait_for_load_state()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hold", type=float, default=120.0, help="seconds all run before Cancel")
    parser.add_argument("--out", default="demo_jobs")
    parser.add_argument(
        "--every",
        type=float,
        default=float(os.environ.get("HOUSEKEEPING_EVERY_SECONDS") or 10),
        help="the demo's beat schedule in seconds (HOUSEKEEPING_EVERY_SECONDS it was started with)",
    )
    args = parser.parse_args()

    base = settings.SITE_URL.rstrip("/")
    every = args.every
    study = Study.objects.get(slug="demo")
    run = run_from_preset(
        preset="cpu-tiny", base_model=BASE_MODEL, endpoint="default", by="benchmarks/demo_jobs"
    )
    password = researcher()
    timeline: list[tuple[str, str]] = []

    def mark(what: str) -> None:
        timeline.append((now().isoformat(timespec="seconds"), what))
        print(f"{timeline[-1][0]}  {what}", flush=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{base}/admin/login/")
        page.fill("#id_username", USER)
        page.fill("#id_password", password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_load_state()
        progress = base + reverse("admin:training_trainingrun_progress", args=[run.pk])
        monitor = base + reverse("admin:studies_study_monitor", args=[study.pk])
        report = base + reverse("admin:studies_study_report", args=[study.pk])

        click(page, progress, "Start")
        mark(f"training run {run.pk} started from its progress page")
        page.goto(monitor)
        page.fill("input[name=participants]", "3")
        page.fill("input[name=concurrency]", "1")
        page.get_by_role("button", name="Run pilot").click()
        page.wait_for_load_state()
        pilot = PilotRun.objects.filter(study=study).order_by("-pk").first()
        mark(f"pilot {pilot.pk} started from the monitor")

        until(
            lambda: (
                PilotRun.objects.get(pk=pilot.pk).status == "running"
                and TrainingStage.objects.filter(run=run, status="running").exists()
            ),
            300,
            "the pilot and a training stage to run",
        )
        window_start = now()
        mark("pilot and training stage both running")

        build_report(page, report)
        first = ReportRun.objects.filter(study=study, kind="report").order_by("-pk").first()
        mark(f"report {first.pk} built from the report page")
        done = until(
            lambda: ReportRun.objects.filter(pk=first.pk, status__in=["done", "failed"]).first(),
            600,
            "the report",
        )
        mark(f"report {first.pk} {done.status}")

        build_report(page, report)
        second = ReportRun.objects.filter(study=study, kind="report").order_by("-pk").first()
        click(page, report, "Cancel")
        cancel_report = time.monotonic()
        mark(f"report {second.pk} built, Cancel pressed")
        ended = until(
            lambda: ReportRun.objects.filter(
                pk=second.pk, status__in=["cancelled", "done", "failed"]
            ).first(),
            300,
            "the second report to end",
        )
        report_cancel_s = time.monotonic() - cancel_report
        mark(f"report {second.pk} {ended.status}")

        remaining = args.hold - (now() - window_start).total_seconds()
        if remaining > 0:
            time.sleep(remaining)
        held = {
            "pilot": PilotRun.objects.get(pk=pilot.pk).status,
            "training": list(
                TrainingStage.objects.filter(run=run).values_list("name", "status").order_by("pk")
            ),
        }
        mark(f"before Cancel: {held}")
        window_end = now()

        click(page, monitor, "Cancel the pilot")
        cancel_pilot = time.monotonic()
        mark(f"pilot {pilot.pk}: Cancel pressed")
        click(page, progress, "Cancel the run")
        cancel_training = time.monotonic()
        mark(f"training run {run.pk}: Cancel pressed")
        until(
            lambda: (
                not TrainingStage.objects.filter(run=run, status__in=["queued", "running"]).exists()
            ),
            600,
            "the training run to stop",
        )
        training_cancel_s = time.monotonic() - cancel_training
        mark(
            f"training run {run.pk}: "
            f"{list(TrainingStage.objects.filter(run=run).values_list('name', 'status'))}"
        )
        until(
            lambda: PilotRun.objects.get(pk=pilot.pk).status in ("cancelled", "done", "failed"),
            900,
            "the pilot to stop",
            every=2.0,
        )
        pilot_cancel_s = time.monotonic() - cancel_pilot
        pilot = PilotRun.objects.get(pk=pilot.pk)
        mark(f"pilot {pilot.pk} {pilot.status}: {pilot.done} of {pilot.participants} done")
        browser.close()

    runs = beat_runs(window_start, window_end)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(runs)]
    stages = dict(TrainingStage.objects.filter(run=run).values_list("name", "status"))
    result = {
        "date": now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "beat_every_s": every,
        "window_s": round((window_end - window_start).total_seconds(), 1),
        "beat_runs": len(runs),
        "gaps_s": [round(g, 2) for g in gaps],
        "worst_lag_s": round(max(gaps) - every, 2) if gaps else None,
        "report_first": done.status,
        "report_second": ended.status,
        "report_cancel_s": round(report_cancel_s, 1),
        "pilot": {"status": pilot.status, "done": pilot.done, "of": pilot.participants},
        "pilot_cancel_s": round(pilot_cancel_s, 1),
        "training_run": run.pk,
        "training_stages": stages,
        "training_cancel_s": round(training_cancel_s, 1),
        "timeline": timeline,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(report_md(result))
    print(report_md(result))
    return 0


def report_md(r: dict) -> str:
    gaps = r["gaps_s"]
    lag = "-" if r["worst_lag_s"] is None else f"{r['worst_lag_s']:.2f} s"
    lines = [
        "# A pilot, a report and a training run at once on the demo",
        "",
        f"{r['date']} UTC, {r['machine']}; `benchmarks/demo_jobs.py` against `make demo` "
        f"(beat every {r['beat_every_s']:g} s). Every job started and cancelled with the "
        "admin's buttons in Chromium, as a Study admin.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| window with the pilot and a training stage running | {r['window_s']:g} s |",
        f"| beat's reap task runs in it | {r['beat_runs']} |",
        f"| gaps between them (s) | {', '.join(f'{g:.1f}' for g in gaps) or '-'} |",
        f"| worst lag behind schedule | {lag} |",
        f"| first report (built inside the window) | {r['report_first']} |",
        f"| second report, Cancel pressed at once | {r['report_second']} "
        f"after {r['report_cancel_s']:g} s |",
        f"| pilot, Cancel pressed | {r['pilot']['status']} after {r['pilot_cancel_s']:g} s "
        f"({r['pilot']['done']} of {r['pilot']['of']} participants done; the one under way "
        "finishes) |",
        f"| training run {r['training_run']}, Cancel pressed | "
        f"{', '.join(f'{k} {v}' for k, v in r['training_stages'].items())} "
        f"after {r['training_cancel_s']:g} s |",
        "",
        "## Timeline",
        "",
        *[f"- {at} {what}" for at, what in r["timeline"]],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
