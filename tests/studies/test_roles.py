"""Researcher roles: every admin URL and action of our apps against every role.

The URLs and actions are enumerated from admin.site, so a new one without an entry here (and a
permission in the code) fails. Each role's capabilities are written out below, independently of
the migration that creates the groups.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps as global_apps
from django.contrib import admin
from django.contrib.auth.models import Group, Permission, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from studies.models import (
    ErasureRecord,
    Event,
    ModelEndpoint,
    Participant,
    PilotRun,
    ReportRun,
    Study,
    StudyVersion,
)
from studies.services import turns, versions
from tests.factories import ModelEndpointFactory, ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, complete_reply, new_key
from training.models import Checkpoint, TrainingRun, TrainingStage
from training.services import runs

pytestmark = pytest.mark.django_db
APPS = ("studies", "training")
ROLE_GROUPS = {"viewer": "Study viewer", "operator": "Study operator", "admin": "Study admin"}
ROLES = ["staff", "viewer", "operator", "admin", "superuser"]
ALL = "every permission of our apps"
VIEWER = {
    "studies.view_study", "studies.view_participant", "studies.view_studyversion",
    "studies.view_modelendpoint", "training.view_trainingrun", "training.view_checkpoint",
}  # fmt: skip
CAPABILITIES: dict[str, Any] = {
    "staff": set(),
    "viewer": VIEWER,
    "operator": VIEWER | {"studies.view_transcripts", "studies.run_study", "studies.export_study"},
    "admin": ALL,
    "superuser": ALL,
}
NOBODY = ("nobody",)  # not even a superuser: records that are never deleted or added by hand
RUN = ("studies.view_study", "studies.run_study")
EXPORT = (
    "studies.view_study", "studies.view_participant", "studies.view_transcripts",
    "studies.export_study",
)  # fmt: skip
TRAIN = ("training.view_trainingrun", "training.run_training")
MIGRATION = "0006_researcher_roles_protect_records"


def may(role: str, need: tuple[str, ...]) -> bool:
    """Whether the role's capabilities (as this test defines them) cover the need."""
    if need == NOBODY:
        return False
    caps = CAPABILITIES[role]
    return True if caps == ALL else all(p in caps for p in need)


@dataclass
class World:
    study: Study  # live, with a participant who chatted
    draft: Study  # draft, nobody entered
    participant: Participant
    version: StudyVersion
    endpoint: ModelEndpoint  # not referenced by anything
    report: ReportRun
    pilot: PilotRun  # interrupted
    export_name: str
    run: TrainingRun  # started: stages, one of them failed
    draft_run: TrainingRun  # never started
    stage: TrainingStage
    checkpoint: Checkpoint
    erasure: ErasureRecord


@pytest.fixture(autouse=True)
def reports_dir(settings, tmp_path):
    settings.REPORTS_DIR = tmp_path / "reports"
    return settings.REPORTS_DIR


@pytest.fixture
def world(tmp_path, reports_dir, django_capture_on_commit_callbacks) -> World:
    study = three_arm_study()
    participant = advance_to_chat(ParticipantFactory(study=study, external_id="prolific:P1"))
    reply = turns.turn_start(participant_id=participant.pk, text="Draft my post", key=new_key())
    complete_reply(reply.assistant_message, text="Here is a draft")
    draft = three_arm_study(status=Study.Status.DRAFT)
    out = tmp_path / "run"
    (out / "report").mkdir(parents=True)
    (out / "report" / "summary.json").write_text("{}")
    report = ReportRun.objects.create(
        study=study, status=ReportRun.Status.DONE, progress=1, out_dir=str(out)
    )
    pilot = PilotRun.objects.create(study=study, participants=2, status="interrupted")
    exports = reports_dir / study.slug / "exports"
    exports.mkdir(parents=True)
    (exports / "20260101-csv.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    policy = ModelEndpointFactory()
    # Trained on the live study: its checkpoint offers a follow-up study.
    run = TrainingRun.objects.create(
        name="run", base_model="/m", policy_endpoint=policy, source_study=study
    )
    draft_run = TrainingRun.objects.create(name="draft", base_model="/m", policy_endpoint=policy)
    with django_capture_on_commit_callbacks():
        runs.run_start(run_id=run.pk, by="test")
    stage = run.stage_rows.get(name="collect")
    checkpoint = Checkpoint.objects.create(
        run=run, stage="sft", adapter_path="/a", adapter_name="adapter-1", endpoint=policy
    )
    erasure = ErasureRecord.objects.create(
        study_slug=study.slug, participant_pseudonym="h_0", requested_by="dpo", reason="r"
    )
    return World(
        study=study, draft=draft, participant=participant, version=versions.version_latest(study),
        endpoint=ModelEndpointFactory(), report=report, pilot=pilot,
        export_name="20260101-csv.zip", run=run, draft_run=draft_run, stage=stage,
        checkpoint=checkpoint, erasure=erasure,
    )  # fmt: skip


@pytest.fixture
def groups() -> None:
    """The groups as migration 0006 makes them (a flush by a transactional test removes them)."""
    if Group.objects.filter(name__in=ROLE_GROUPS.values()).count() < len(ROLE_GROUPS):
        migration = importlib.import_module(f"studies.migrations.{MIGRATION}")
        migration.researcher_groups_create(global_apps, connection.schema_editor())


@pytest.fixture
def users(groups) -> dict[str, User]:
    made = {}
    for role in ROLES:
        if role == "superuser":
            user = User.objects.create_superuser(role, f"{role}@example.org", None)
        else:
            user = User.objects.create_user(role, is_staff=True)  # no password: force_login
        if role in ROLE_GROUPS:
            user.groups.add(Group.objects.get(name=ROLE_GROUPS[role]))
        made[role] = user
    return made


def _consume(response: Any) -> None:
    """Read a download to its end: the test client then closes its file."""
    if response.streaming:
        b"".join(response.streaming_content)


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


# URL name -> (method, kwargs, POST data, what it needs, status when allowed).
Case = tuple[str, Callable[[World], dict], dict, tuple[str, ...], int]


def _model_urls(model: str, obj: Callable[[World], Any], app: str = "studies", **needs) -> dict:
    """The five URLs every ModelAdmin has; needs gives add/change/delete/view requirements."""
    view = needs.get("view", (f"{app}.view_{model}",))
    pk = lambda w: {"object_id": obj(w).pk}  # noqa: E731
    delete_obj = needs.get("delete_obj", obj)
    return {
        f"{app}_{model}_changelist": ("get", lambda w: {}, {}, view, 200),
        f"{app}_{model}_add": ("get", lambda w: {}, {}, needs.get("add", NOBODY), 200),
        f"{app}_{model}_history": ("get", pk, {}, view, 200),
        f"{app}_{model}_change": ("get", pk, {}, view, 200),
        f"{app}_{model}_delete": (
            "get", lambda w: {"object_id": delete_obj(w).pk}, {}, needs.get("delete", NOBODY), 200,
        ),
    }  # fmt: skip


def _study(w: World) -> dict:
    return {"study_id": w.study.pk}


URLS: dict[str, Case] = {
    **_model_urls(
        "study", lambda w: w.study, add=("studies.add_study",),
        delete=("studies.delete_study",), delete_obj=lambda w: w.draft,
    ),
    "studies_study_monitor": ("get", _study, {}, ("studies.view_study",), 200),
    "studies_study_monitor_status": ("post", _study, {"status": "?"}, RUN, 302),
    "studies_study_monitor_pilot": ("post", _study, {}, RUN, 302),
    "studies_study_pilot_status": ("get", _study, {}, ("studies.view_study",), 200),
    "studies_study_pilot_cancel": (
        "post", lambda w: {"study_id": w.study.pk, "run_id": w.pilot.pk}, {}, RUN, 302,
    ),
    "studies_study_pilot_retry": (
        "post", lambda w: {"study_id": w.study.pk, "run_id": w.pilot.pk}, {}, RUN, 302,
    ),
    "studies_study_report": ("get", _study, {}, EXPORT, 200),
    "studies_study_report_build": ("post", _study, {}, EXPORT, 302),
    "studies_study_report_file": (
        "get", lambda w: {"study_id": w.study.pk, "run_id": w.report.pk, "name": "summary.json"},
        {}, EXPORT, 200,
    ),
    "studies_study_report_cancel": (
        "post", lambda w: {"study_id": w.study.pk, "run_id": w.report.pk}, {}, EXPORT, 302,
    ),
    "studies_study_report_retry": (
        "post", lambda w: {"study_id": w.study.pk, "run_id": w.report.pk}, {}, EXPORT, 302,
    ),
    "studies_study_report_export": (
        "get", lambda w: {"study_id": w.study.pk, "name": w.export_name}, {}, EXPORT, 200,
    ),
    **_model_urls("studyversion", lambda w: w.version),
    **_model_urls(
        "modelendpoint", lambda w: w.endpoint, add=("studies.add_modelendpoint",),
        delete=("studies.delete_modelendpoint",),
    ),
    **_model_urls("participant", lambda w: w.participant),
    **_model_urls("erasurerecord", lambda w: w.erasure),
    **_model_urls(
        "trainingrun", lambda w: w.run, app="training", add=("training.add_trainingrun",),
        delete=("training.delete_trainingrun",), delete_obj=lambda w: w.draft_run,
    ),
    "training_trainingrun_progress": (
        "get", lambda w: {"run_id": w.run.pk}, {}, ("training.view_trainingrun",), 200,
    ),
    "training_trainingrun_start": ("post", lambda w: {"run_id": w.run.pk}, {}, TRAIN, 302),
    "training_trainingrun_cancel": ("post", lambda w: {"run_id": w.run.pk}, {}, TRAIN, 302),
    "training_trainingrun_retry": ("post", lambda w: {"stage_id": w.stage.pk}, {}, TRAIN, 302),
    **_model_urls("checkpoint", lambda w: w.checkpoint, app="training"),
    "training_checkpoint_add_to_study": (
        "get", lambda w: {"checkpoint_id": w.checkpoint.pk}, {},
        ("training.view_checkpoint", "training.run_training", "studies.change_study"), 200,
    ),
    "training_checkpoint_followup": (
        "get", lambda w: {"checkpoint_id": w.checkpoint.pk}, {},
        ("training.view_checkpoint", "training.run_training", "studies.add_study",
         "studies.view_study"), 200,
    ),
}  # fmt: skip


def our_admins() -> list[tuple[type, admin.ModelAdmin]]:
    return [(m, a) for m, a in admin.site._registry.items() if m._meta.app_label in APPS]


def test_every_admin_url_of_our_apps_is_in_the_matrix():
    names = {p.name for _, a in our_admins() for p in a.get_urls() if p.name}
    assert names == set(URLS)


def test_the_migration_makes_the_three_groups(groups):
    viewer = Group.objects.get(name="Study viewer")
    codes = {f"{p.content_type.app_label}.{p.codename}" for p in viewer.permissions.all()}
    assert codes == VIEWER
    granted = Group.objects.get(name="Study admin").permissions.count()
    assert granted == Permission.objects.filter(content_type__app_label__in=APPS).count()


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_exactly_the_admin_urls_it_should(role, world, users):
    client = _client(users[role])
    wrong = []
    for name, (method, kwargs, data, need, allowed_status) in URLS.items():
        url = reverse(f"admin:{name}", kwargs=kwargs(world))
        response = getattr(client, method)(url, data)
        _consume(response)
        expected = allowed_status if may(role, need) else 403
        login = response.status_code == 302 and "/login/" in response["Location"]
        if response.status_code != expected or login:
            wrong.append((name, response.status_code, expected))
    assert wrong == []


@pytest.mark.parametrize("role", ROLES)
def test_transcripts_and_final_documents_show_only_to_roles_that_may_read_them(role, world, users):
    url = reverse("admin:studies_participant_change", args=[world.participant.pk])
    page = _client(users[role]).get(url).content.decode()
    shown = "Draft my post" in page or "Here is a draft" in page
    assert shown == may(role, ("studies.view_participant", "studies.view_transcripts"))


# --- actions -------------------------------------------------------------------------------------


def _status(study: Callable[[World], Study], status: str) -> Callable[[World, Any], bool]:
    return lambda w, r: Study.objects.get(pk=study(w).pk).status == status


def _outcome(value: str) -> Callable[[World, Any], bool]:
    return lambda w, r: Participant.objects.get(pk=w.participant.pk).outcome == value


def _complete_and_break_a_rule(w: World) -> None:
    Participant.objects.filter(pk=w.participant.pk).update(
        status=Participant.Status.COMPLETED, completed_at=timezone.now()
    )
    Study.objects.filter(pk=w.study.pk).update(exclusion_rules={"min_user_chars": 10_000})


@dataclass
class ActionCase:
    target: Callable[[World], Any]
    need: tuple[str, ...]
    applied: Callable[[World, Any], bool]
    data: dict | None = None
    setup: Callable[[World], None] | None = None


ACTIONS: dict[tuple[str, str], ActionCase] = {
    ("study", "go_live"): ActionCase(lambda w: w.draft, RUN, _status(lambda w: w.draft, "live")),
    ("study", "pause"): ActionCase(lambda w: w.study, RUN, _status(lambda w: w.study, "paused")),
    ("study", "resume"): ActionCase(
        lambda w: w.study, RUN, _status(lambda w: w.study, "live"),
        setup=lambda w: Study.objects.filter(pk=w.study.pk).update(status="paused"),
    ),
    ("study", "close"): ActionCase(lambda w: w.study, RUN, _status(lambda w: w.study, "closed")),
    ("study", "apply_exclusion_rules"): ActionCase(
        lambda w: w.study, RUN,
        lambda w, r: Participant.objects.get(pk=w.participant.pk).excluded_at is not None,
        setup=_complete_and_break_a_rule,
    ),
    ("study", "export_data"): ActionCase(
        lambda w: w.study, EXPORT, lambda w, r: r.get("Content-Type") == "application/zip",
        data={"export": "1", "fmt": "csv"},
    ),
    ("study", "export_in_background"): ActionCase(
        lambda w: w.study, EXPORT, lambda w, r: r.callbacks > 0
    ),
    ("study", "build_report"): ActionCase(
        lambda w: w.study, EXPORT, lambda w, r: ReportRun.objects.count() == 2
    ),
    ("participant", "mark_returned"): ActionCase(
        lambda w: w.participant, ("studies.view_participant", "studies.run_study"),
        _outcome("returned"),
    ),
    ("participant", "mark_timed_out"): ActionCase(
        lambda w: w.participant, ("studies.view_participant", "studies.run_study"),
        _outcome("timed_out"),
    ),
    ("participant", "exclude_with_reason"): ActionCase(
        lambda w: w.participant, ("studies.view_participant", "studies.run_study"),
        lambda w, r: Participant.objects.get(pk=w.participant.pk).exclusion_reason == "bot",
        data={"reason": "bot"},
    ),
    ("modelendpoint", "delete_selected"): ActionCase(
        lambda w: w.endpoint, ("studies.view_modelendpoint", "studies.delete_modelendpoint"),
        lambda w, r: not ModelEndpoint.objects.filter(pk=w.endpoint.pk).exists(),
        data={"post": "yes"},
    ),
    ("study", "train_from_study"): ActionCase(
        lambda w: w.study, ("studies.view_study", "training.run_training"),
        lambda w, r: TrainingRun.objects.filter(
            source_study=w.study, name__startswith=f"{w.study.slug}-train-"
        ).exists(),
    ),
    ("trainingrun", "start_runs"): ActionCase(
        lambda w: w.draft_run, TRAIN,
        lambda w, r: TrainingRun.objects.get(pk=w.draft_run.pk).status == "running",
    ),
}  # fmt: skip


def _admin_for(model_name: str) -> admin.ModelAdmin:
    return next(a for m, a in our_admins() if m._meta.model_name == model_name)


def test_every_action_of_our_apps_is_in_the_matrix_and_declares_a_permission(rf, groups):
    request = rf.get("/")
    request.user = User.objects.create_superuser("root", "root@example.org", None)
    found = set()
    for model, model_admin in our_admins():
        for name, (func, _, _) in model_admin.get_actions(request).items():
            found.add((model._meta.model_name, name))
            assert getattr(func, "allowed_permissions", ()), name
    assert found == set(ACTIONS)


def _snapshot() -> list:
    """Every row of our apps, to show a refused action changed nothing."""
    models = [m for app in APPS for m in global_apps.get_app_config(app).get_models()]
    return [list(m.objects.order_by("pk").values()) for m in models]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("key", list(ACTIONS), ids=lambda k: f"{k[0]}.{k[1]}")
def test_each_role_runs_exactly_the_actions_it_should(
    key, role, world, users, rf, django_capture_on_commit_callbacks
):
    model_name, action = key
    case = ACTIONS[key]
    model_admin = _admin_for(model_name)
    request = rf.get("/")
    request.user = users[role]
    allowed = may(role, case.need)
    assert (action in model_admin.get_actions(request)) == allowed
    if case.setup:
        case.setup(world)
    before = _snapshot()
    opts = model_admin.model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    data = {"action": action, "_selected_action": [case.target(world).pk], **(case.data or {})}
    with django_capture_on_commit_callbacks() as callbacks:
        response = _client(users[role]).post(url, data)
    _consume(response)
    response.callbacks = len(callbacks)
    if allowed:
        assert case.applied(world, response)
    else:  # refused: 403, or the changelist again (redirect or page) without running it
        assert response.status_code in (200, 302, 403)
        assert _snapshot() == before and not callbacks


# --- what the pages show -------------------------------------------------------------------------

PLATFORM_TOKEN = "sess-only-the-participant-has"


def _holds_a_platform_token(w: World) -> None:
    # The token rebinds a browser to the participant (studies.services.reentry): a credential.
    params = {"PROLIFIC_PID": "P1", "STUDY_ID": "S", "SESSION_ID": PLATFORM_TOKEN}
    Participant.objects.filter(pk=w.participant.pk).update(
        recruiting_source="prolific",
        recruiting_params=params,
        attempts=[{"session_id": PLATFORM_TOKEN, "at": "2026-01-01T00:00:00+00:00"}],
    )
    Event.objects.create(  # as a re-entry was recorded before payloads left the token out
        study=w.study,
        participant=w.participant,
        kind="study.participant.reentered",
        payload={"session_id": PLATFORM_TOKEN, "attempt": 2},
    )


@pytest.mark.parametrize("role", ROLES)
def test_a_participants_platform_token_shows_only_to_roles_that_may_read_transcripts(
    role, world, users
):
    _holds_a_platform_token(world)
    url = reverse("admin:studies_participant_change", args=[world.participant.pk])
    page = _client(users[role]).get(url).content.decode()
    assert (PLATFORM_TOKEN in page) == may(
        role, ("studies.view_participant", "studies.view_transcripts")
    )


def test_the_event_log_shows_a_re_entry_but_not_its_token(world, users):
    _holds_a_platform_token(world)
    auditor = users["viewer"]
    event_log = Permission.objects.get(codename="view_event", content_type__app_label="studies")
    auditor.user_permissions.add(event_log)
    url = reverse("admin:studies_participant_change", args=[world.participant.pk])
    page = _client(auditor).get(url).content.decode()
    assert "study.participant.reentered" in page
    assert PLATFORM_TOKEN not in page


@pytest.mark.parametrize("role", ROLES)
def test_the_pilot_link_shows_only_to_roles_that_may_run_a_study(role, world, users):
    url = reverse("admin:studies_study_monitor", args=[world.study.pk])
    page = _client(users[role]).get(url).content.decode()
    shown = 'id="pilot-link"' in page or "?pilot=" in page
    assert shown == may(role, RUN)
    if may(role, ("studies.view_study",)):
        assert 'id="preview-link"' in page
