"""Frozen study configurations: a snapshot per version, published whenever the config changes.

The live rows (Study, Condition, Task) are what the researcher edits; a StudyVersion is what a
participant saw. Every participant is stamped with the version current when they entered, and their
turns read arm settings (model, prompt, parameters) from that version, so a later edit never
changes a conversation already under way.
"""

from typing import Any

from django.db import transaction

from studies.models import Study, StudyVersion
from studies.services.events import event_record

STUDY_FIELDS = [
    "title",
    "consent_text",
    "instructions",
    "min_turns",
    "max_turns",
    "rating_every",
    "time_limit_minutes",
    "time_warning_minutes",
    "target_per_arm",
    "design",
    "block_size",
    "block_sizes",
    "stratify_by",
    "reuse_slots",
    "seed",
    "recruiting_source",
    "completion_code",
    "screened_out_code",
    "attention_failed_code",
    "timed_out_code",
    "declined_code",
    "asks_training_consent",
    "asks_sharing_consent",
    "completion_redirect_url",
    "comprehension_questions",
    "attention_checks",
    "attention_fail_threshold",
    "min_user_message_chars",
    "detect_paste",
    "abandon_after_minutes",
    "exclusion_rules",
]
CONDITION_FIELDS = [
    "label",
    "model_name",
    "system_prompt",
    "prompt_version",
    "generation_params",
    "weight",
    "cap",
    "cap_per_stratum",
    "is_active",
    "allow_continue",
]
TASK_FIELDS = ["document_type", "topic", "brief", "intent_questions"]


def config_snapshot(study: Study) -> dict[str, Any]:
    """The study's configuration as plain JSON (arms keyed by key, tasks by id)."""
    conditions = study.conditions.select_related("endpoint").order_by("key")
    return {
        "study": {f: getattr(study, f) for f in STUDY_FIELDS},
        "arms": {
            c.key: {f: getattr(c, f) for f in CONDITION_FIELDS} | {"endpoint": c.endpoint.name}
            for c in conditions
        },
        "tasks": {str(t.pk): {f: getattr(t, f) for f in TASK_FIELDS} for t in study.tasks.all()},
        "linked_studies": sorted(study.linked_studies.values_list("slug", flat=True)),
    }


def version_publish(study: Study, *, by: str = "") -> StudyVersion:
    """The version matching the study's current configuration, creating it when it changed."""
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        snapshot = config_snapshot(locked)
        latest = locked.versions.order_by("-number").first()
        if latest is not None and latest.config == snapshot:
            return latest
        number = (latest.number + 1) if latest else 1
        version = StudyVersion.objects.create(
            study=locked, number=number, config=snapshot, created_by=by
        )
        Study.objects.filter(pk=locked.pk).update(config_version=number)
        study.config_version = number
        event_record(
            study_id=locked.pk,
            kind="study.config.published",
            payload={"version": number, "by": by, "changes": len(version_diff(latest, version))},
        )
    return version


def version_latest(study: Study) -> StudyVersion:
    """The newest version (published on first use)."""
    latest = study.versions.order_by("-number").first()
    return latest if latest is not None else version_publish(study)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    # An empty dict contributes no path, so filling one in shows only the keys that were added.
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out |= _flatten(sub, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def version_diff(old: StudyVersion | None, new: StudyVersion) -> list[tuple[str, Any, Any]]:
    """(path, old value, new value) for every setting that differs, sorted by path."""
    before = _flatten(old.config) if old is not None else {}
    after = _flatten(new.config)
    return [
        (path, before.get(path), after.get(path))
        for path in sorted(before.keys() | after.keys())
        if before.get(path) != after.get(path)
    ]


def arm_settings(participant) -> dict[str, Any] | None:
    """The arm settings frozen in the participant's version (None for unversioned rows)."""
    if participant.version_id is None or participant.condition_id is None:
        return None
    return participant.version.config["arms"].get(participant.condition.key)


# Operational settings stay live for everyone: housekeeping applies them set-based in SQL, and a
# time limit or completion code changed mid-study must mean the same for the chat page and for
# the sweeper (the recruiting platform only knows the current codes).
LIVE_FIELDS = frozenset(
    {
        "time_limit_minutes",
        "time_warning_minutes",
        "abandon_after_minutes",
        "completion_code",
        "screened_out_code",
        "attention_failed_code",
        "timed_out_code",
        "declined_code",
        "completion_redirect_url",
    }
)


class FrozenStudy:
    """A study as a participant's version froze it: what shapes their study (turns, ratings,
    checks, message rules, texts) comes from the snapshot; operational settings (LIVE_FIELDS) and
    anything the snapshot lacks (slug, status, ids) are the live study's. Edits made after the
    participant consented never change their conversation."""

    def __init__(self, participant) -> None:
        self._live = participant.study
        version = participant.version if participant.version_id else None
        self._config = version.config.get("study", {}) if version is not None else {}

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__["_config"]
        if name in STUDY_FIELDS and name not in LIVE_FIELDS and name in config:
            return config[name]
        return getattr(self.__dict__["_live"], name)


def frozen_study(participant) -> Any:
    """The participant's study settings, frozen at their version (see FrozenStudy)."""
    return FrozenStudy(participant)
