"""Exclusion rules: mark (never delete) finished participants who do not meet the study's rules.

Rules live in Study.exclusion_rules (part of the frozen configuration):
- "min_active_minutes": active time below this;
- "failed_attention": true to exclude those whose attention checks failed;
- "min_user_chars": fewer characters than this written to the assistant in total;
- "min_turns": fewer completed turns than this (useful after a time limit ended chats early).
Each excluded participant keeps every row and gets a reason naming the rules they broke.
"""

from django.db.models import Count, Q, Sum
from django.db.models.functions import Length

from studies.models import Message, Participant, Study
from studies.services.outcomes import participant_exclude

KNOWN_RULES = {"min_active_minutes", "failed_attention", "min_user_chars", "min_turns"}


def rules_problems(rules: dict) -> list[str]:
    """What is wrong with a rules dict (unknown names, wrong types); empty when fine."""
    problems = [f"unknown rule {name!r}" for name in rules if name not in KNOWN_RULES]
    for name in ("min_active_minutes", "min_user_chars", "min_turns"):
        value = rules.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            problems.append(f"{name} must be a non-negative number")
    if "failed_attention" in rules and not isinstance(rules["failed_attention"], bool):
        problems.append("failed_attention must be true or false")
    return problems


def exclusion_reasons(
    participant: Participant, rules: dict, *, user_chars: int, turns: int
) -> list[str]:
    """The rules this finished participant breaks, as readable reasons."""
    reasons = []
    minutes = rules.get("min_active_minutes")
    if minutes is not None and participant.active_seconds < minutes * 60:
        reasons.append(
            f"active {participant.active_seconds / 60:.1f} min < {minutes} min (min_active_minutes)"
        )
    if (
        rules.get("failed_attention")
        and participant.outcome == Participant.Outcome.FAILED_ATTENTION
    ):
        reasons.append(f"failed attention checks ({participant.attention_failures} wrong)")
    chars = rules.get("min_user_chars")
    if chars is not None and user_chars < chars:
        reasons.append(f"wrote {user_chars} characters < {chars} (min_user_chars)")
    min_turns = rules.get("min_turns")
    if min_turns is not None and turns < min_turns:
        reasons.append(f"{turns} turns < {min_turns} (min_turns)")
    return reasons


def exclusions_apply(*, study_id: int, by: str = "") -> dict[int, str]:
    """Evaluate the study's rules on completed, not yet excluded participants; mark who breaks them.

    Returns {participant id: reason} for the participants marked now. Pilots and previews are
    judged too (their data are apart anyway). Running it again marks nobody twice.
    """
    rules = Study.objects.values_list("exclusion_rules", flat=True).get(pk=study_id) or {}
    if problems := rules_problems(rules):
        raise ValueError("; ".join(problems))
    candidates = Participant.objects.filter(
        study_id=study_id, status=Participant.Status.COMPLETED, excluded_at__isnull=True
    ).annotate(
        user_chars=Sum(Length("messages__content"), filter=Q(messages__role=Message.Role.USER)),
        turns=Count(
            "messages",
            filter=Q(
                messages__role=Message.Role.ASSISTANT,
                messages__status=Message.Status.COMPLETE,
                messages__continuation_of__isnull=True,
            ),
        ),
    )
    marked: dict[int, str] = {}
    for participant in candidates:
        reasons = exclusion_reasons(
            participant, rules, user_chars=participant.user_chars or 0, turns=participant.turns
        )
        if reasons:
            reason = "; ".join(reasons)
            participant_exclude(participant_id=participant.pk, reason=reason, by=by)
            marked[participant.pk] = reason
    return marked
