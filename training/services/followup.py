"""The loop closed: a run trained on a study's chats, its checkpoint tested in a follow-up study.

`run_from_study` makes the draft run the study admin's "Train from this study" opens;
`followup_study` copies the study (settings, arms, tasks) into a new draft with the checkpoint as
one more arm. Nothing here goes live: the researcher reviews the draft and publishes it.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from models_serving.convert import DEFAULT_OUT
from studies.models import Condition, Study, Task
from studies.services.events import event_record
from studies.services.versions import CONDITION_FIELDS, STUDY_FIELDS, TASK_FIELDS
from training.models import Checkpoint, TrainingRun
from training.services.checkpoints import checkpoint_add_to_study
from training.services.presets import PRESETS, PresetError
from training.services.runs import RunStateError

# Codes are each study's own (a recruiting platform tells studies apart by them): new ones.
FRESH_FIELDS = {
    "completion_code",
    "screened_out_code",
    "attention_failed_code",
    "timed_out_code",
    "declined_code",
}
SLUG_LENGTH = Study._meta.get_field("slug").max_length


@transaction.atomic
def run_from_study(*, study: Study, by: str = "") -> TrainingRun:
    """A draft run on the study's chats: the cpu-tiny preset's settings and base-model folder,
    every role on the endpoint of the study's first arm; every turn of the chats is scored."""
    arm = study.conditions.select_related("endpoint").order_by("id").first()
    if arm is None:
        raise PresetError(f"{study.slug} has no arm whose endpoint could serve the policy")
    preset = dict(PRESETS["cpu-tiny"])
    preset.update(task_limit=None, max_turns=max(study.min_turns, study.max_turns or 0))
    return TrainingRun.objects.create(
        name=f"{study.slug}-train-{timezone.now():%Y%m%d-%H%M%S}"[:100],
        base_model=str(DEFAULT_OUT),
        policy_endpoint=arm.endpoint,
        json_mode="json_object" if arm.endpoint.server == "llama_cpp" else "json_schema",
        source_study=study,
        created_by=by,
        **preset,
    )


def _followup_slug(study: Study) -> str:
    n = 1
    while True:
        tail = f"-followup-{n}"
        slug = study.slug[: SLUG_LENGTH - len(tail)] + tail
        if not Study.objects.filter(slug=slug).exists():
            return slug
        n += 1


@transaction.atomic
def followup_study(checkpoint: Checkpoint, *, from_study: Study, by: str = "") -> Study:
    """A new draft copying from_study's settings, arms and tasks, plus the checkpoint's arm."""
    if checkpoint.endpoint is None:
        raise RunStateError(f"{checkpoint} has no endpoint to serve it")
    settings = {f: getattr(from_study, f) for f in STUDY_FIELDS if f not in FRESH_FIELDS}
    settings["title"] = f"{from_study.title} (follow-up)"[:200]
    study = Study.objects.create(
        slug=_followup_slug(from_study), status=Study.Status.DRAFT, **settings
    )
    # Who took part in the original (or in a study it excludes) is a repeat worker here too.
    study.linked_studies.set([from_study, *from_study.linked_studies.all()])
    Condition.objects.bulk_create(
        Condition(
            study=study,
            key=c.key,
            endpoint_id=c.endpoint_id,
            **{f: getattr(c, f) for f in CONDITION_FIELDS},
        )
        for c in from_study.conditions.order_by("id")
    )
    Task.objects.bulk_create(
        Task(study=study, **{f: getattr(t, f) for f in TASK_FIELDS})
        for t in from_study.tasks.order_by("id")
    )
    condition = checkpoint_add_to_study(checkpoint=checkpoint, study=study, by=by)
    event_record(
        study_id=study.pk,
        kind="study.followup.created",
        payload={"from": from_study.slug, "checkpoint": checkpoint.adapter_name,
                 "arm": condition.key, "by": by},
    )  # fmt: skip
    return study
