"""Whole-study setup checks: everything that stops a study from running, listed at once.

The admin refuses a save that breaks a rule a single form can see (block sizes against the arms'
weights, strata); going live runs `study_problems`, which also looks at what only the saved study
shows (arms that nobody can reach, prompts, endpoints, tasks).
"""

from models_serving.prompts import PromptNotFoundError, load_prompt
from studies.models import ModelEndpoint, Study
from studies.services.allocation import PERMUTED_BLOCKS
from studies.services.assignment import design_problems
from studies.services.endpoints import endpoint_api_key
from studies.services.exclusions import rules_problems
from studies.services.reentry import TOKEN_PARAMS


def stratify_problem(value: str) -> str:
    """Why `value` is not a usable Study.stratify_by ("" when it is)."""
    if value not in ("", "document_type") and not (
        value.startswith("param:") and len(value) > len("param:")
    ):
        return f"Stratify by {value!r}: use blank, 'document_type' or 'param:NAME'."
    if value.removeprefix("param:") in TOKEN_PARAMS:
        return f"Stratify by {value!r}: a platform's per-attempt token is not a stratum."
    return ""


def block_problems(study: Study, total_weight: int) -> list[str]:
    """Block sizes the active arms' summed weight does not divide (permuted blocks only)."""
    if study.design != PERMUTED_BLOCKS or not total_weight:
        return []
    sizes = study.block_sizes or [study.block_size]
    bad = sorted({s for s in sizes if s % total_weight})
    if not bad:
        return []
    fits = ", ".join(str(total_weight * k) for k in (1, 2, 3))
    return [
        f"Block size {', '.join(map(str, bad))} is not a multiple of the summed weights of the "
        f"active arms ({total_weight}): use e.g. {fits}, or change the weights."
    ]


def study_problems(study: Study) -> list[str]:
    """Every reason the study cannot go live, in the order a researcher would fix them."""
    problems = []
    for arm in study.conditions.select_related("endpoint").order_by("key"):
        if not arm.is_active:
            continue
        if arm.cap == 0 or arm.cap_per_stratum == 0:
            problems.append(f"Arm {arm.key}: its cap is 0, so nobody can be assigned to it.")
        if arm.endpoint.health == ModelEndpoint.Health.DOWN:
            problems.append(
                f"Arm {arm.key}: its endpoint {arm.endpoint.name} was down at the last health "
                "check; start it, or choose another endpoint."
            )
        if arm.endpoint.api_key_env and not endpoint_api_key(arm.endpoint):
            problems.append(
                f"Arm {arm.key}: its endpoint {arm.endpoint.name} takes its key from "
                f"{arm.endpoint.api_key_env}, which this deployment does not set (or allow)."
            )
        try:
            load_prompt(arm.system_prompt, arm.prompt_version or None)
        except PromptNotFoundError as exc:
            problems.append(f"Arm {arm.key}: {exc}.")
    rules = [f"Exclusion rules: {p}." for p in rules_problems(study.exclusion_rules or {})]
    return problems + design_problems(study) + rules
