"""The study setup forms: named fields instead of JSON, and checks that refuse a design that
cannot run before anything is saved."""

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join

from models_serving.prompts import NO_PROMPT, PromptNotFoundError, list_prompts, load_prompt
from studies.admin.fields import (
    BlockSizesField,
    ChecksField,
    ExclusionRulesField,
    GenerationParamsField,
    LinesField,
)
from studies.models import Condition, Study, Task
from studies.services import setup


def prompt_choices() -> list[tuple[str, str]]:
    names = sorted({name for name, _ in list_prompts()})
    return [(NO_PROMPT, "none (no system prompt)")] + [(n, n) for n in names]


def prompt_version_choices() -> list[tuple[str, str]]:
    versions = sorted({v for _, v in list_prompts()}, key=lambda v: int(v[1:]))
    return [("", "latest")] + [(v, v) for v in versions]


class StudyForm(forms.ModelForm):
    comprehension_questions = ChecksField(
        noun="Question",
        help_text="After the brief; two attempts, then the participant is screened out.",
    )
    attention_checks = ChecksField(noun="Check", help_text="Asked in the final survey.")
    exclusion_rules = ExclusionRulesField(
        help_text="Marks (never deletes) completed participants who break a rule; blank = no rule."
    )
    block_sizes = BlockSizesField(
        required=False,
        help_text="Random block sizes, e.g. 3, 6: each block draws one (seeded). Empty = fixed.",
    )

    class Meta:
        model = Study
        fields = [
            "comprehension_questions",
            "attention_checks",
            "exclusion_rules",
            "block_sizes",
            "stratify_by",
        ]

    def clean_stratify_by(self) -> str:
        value = self.cleaned_data["stratify_by"].strip()
        if problem := setup.stratify_problem(value):
            raise ValidationError(problem)
        return value


class ConditionForm(forms.ModelForm):
    system_prompt = forms.ChoiceField(choices=prompt_choices)
    prompt_version = forms.ChoiceField(choices=prompt_version_choices, required=False)
    generation_params = GenerationParamsField(label="Generation")

    class Meta:
        model = Condition
        fields = ["system_prompt", "prompt_version", "generation_params"]

    def clean_generation_params(self) -> dict[str, Any]:
        params = self.cleaned_data["generation_params"]
        # Settings the form does not name (e.g. "stop" set by a script) are kept, not dropped.
        known = set(self.fields["generation_params"].keys)  # type: ignore[attr-defined]
        kept = {k: v for k, v in (self.instance.generation_params or {}).items() if k not in known}
        return kept | params

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        name, version = data.get("system_prompt"), data.get("prompt_version") or None
        if name:
            try:
                load_prompt(name, version)
            except PromptNotFoundError as exc:
                self.add_error("prompt_version", f"Choose a version that exists: {exc}.")
        return data


class TaskForm(forms.ModelForm):
    intent_questions = LinesField(help_text="One question per line.")

    class Meta:
        model = Task
        fields = ["intent_questions"]


class ConditionFormSet(forms.BaseInlineFormSet):
    """Refuses arms whose weights the study's block sizes cannot hold."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        arms = [
            form.cleaned_data
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        weights = [a["weight"] for a in arms if a.get("is_active")]
        problems = setup.block_problems(self.instance, sum(weights))
        if problems:
            raise ValidationError(problems)


def prompt_preview_html(condition: Condition | None) -> str:
    """The saved arm's system prompt text, read-only, folded under its reference."""
    if condition is None or condition.pk is None:
        return "Save the arm to see its prompt text."
    try:
        prompt = load_prompt(condition.system_prompt, condition.prompt_version or None)
    except PromptNotFoundError as exc:
        return str(exc)
    if not prompt.text:
        return "No system prompt."
    return format_html(
        '<details class="setup-prompt"><summary>{}</summary><pre>{}</pre></details>',
        prompt.ref,
        prompt.text,
    )


def available_prompts_html() -> str:
    """Every prompt version that exists, each text folded under its reference."""
    prompts = [load_prompt(name, version) for name, version in list_prompts()]
    return format_html_join(
        "",
        '<details class="setup-prompt"><summary>{}</summary><pre>{}</pre></details>',
        ((p.ref, p.text) for p in prompts),
    )
