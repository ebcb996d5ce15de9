"""The append-only audit log."""

from typing import Any

from studies.models import Event


def event_record(
    *,
    study_id: int,
    kind: str,
    participant_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> Event:
    """Append one event row; callers run it inside the transaction of the change it describes."""
    return Event.objects.create(
        study_id=study_id, participant_id=participant_id, kind=kind, payload=payload or {}
    )
