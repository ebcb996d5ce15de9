"""Study status changes: go live (publishing the config), pause, resume, close."""

from django.db import transaction
from django.utils.translation import gettext as _

from studies.models import Study
from studies.services.errors import StudyActionError
from studies.services.events import event_record
from studies.services.setup import study_problems
from studies.services.versions import version_publish

S = Study.Status
ALLOWED = {
    S.DRAFT: {S.LIVE, S.CLOSED},
    S.LIVE: {S.PAUSED, S.CLOSED},
    S.PAUSED: {S.LIVE, S.CLOSED},
    S.CLOSED: set(),
}


class StudyNotReady(StudyActionError):
    """Going live refused: `problems` lists every reason, so all can be fixed in one pass."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "incomplete",
            _("A study needs %(n)d fix(es) before it can go live: %(list)s")
            % {"n": len(problems), "list": " ".join(problems)},
        )
        self.problems = problems


def study_set_status(*, study_id: int, status: str, by: str = "") -> Study:
    """Move a study to `status`; going live publishes the current configuration as a version."""
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        if status == study.status:
            return study
        if status not in ALLOWED[S(study.status)]:
            raise StudyActionError(
                "bad_transition",
                _("A %(current)s study cannot become %(wanted)s.")
                % {"current": study.status, "wanted": status},
            )
        if status == S.LIVE:
            if problems := study_problems(study):
                raise StudyNotReady(problems)
            version_publish(study, by=by)
        previous = study.status
        study.status = status
        study.save(update_fields=["status"])
        event_record(
            study_id=study.pk,
            kind="study.status.changed",
            payload={"from": previous, "to": status, "by": by},
        )
    return study
