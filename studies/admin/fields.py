"""Form fields for the study setup: each JSON setting a researcher edits as named inputs.

Server-rendered (no JavaScript, nothing inline), so the admin keeps its strict CSP; every field
cleans to exactly the JSON the services read, and reports each problem on the field itself.
"""

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from studies.services import exclusions

CHOICE_SLOTS = 5
BLANK_CHECKS = 2
MAX_CHECKS = 100
MAX_CHOICES = 50


def _count(value: Any, most: int) -> int:
    """A posted row or slot count, bounded: the browser sends what the form rendered."""
    text = str(value or "")
    return min(int(text), most) if text.isdigit() else 0


def _slots(choices: list[str], n: int) -> list[str]:
    return list(choices) + [""] * max(0, n - len(choices))


class ChecksWidget(forms.Widget):
    """Rows of question, option inputs and a radio for the correct option (blank rows to add)."""

    template_name = "admin/studies/widgets/checks.html"

    def value_from_datadict(self, data, files, name) -> list[dict[str, Any]]:
        rows = _count(data.get(f"{name}-rows"), MAX_CHECKS)
        return [
            {
                "question": data.get(f"{name}-{i}-question", ""),
                "choices": [
                    data.get(f"{name}-{i}-choice-{j}", "")
                    for j in range(_count(data.get(f"{name}-{i}-slots"), MAX_CHOICES))
                ],
                "answer": data.get(f"{name}-{i}-answer"),
            }
            for i in range(rows)
        ]

    def value_omitted_from_data(self, data, files, name) -> bool:
        return f"{name}-rows" not in data

    def get_context(self, name, value, attrs) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        rows = [r for r in (value or []) if isinstance(r, dict)]
        rows += [{"question": "", "choices": [], "answer": None}] * BLANK_CHECKS
        shown = []
        for i, row in enumerate(rows):
            choices = [str(c) for c in row.get("choices") or []]
            n = max(CHOICE_SLOTS, len(choices))
            answer = row.get("answer")
            shown.append(
                {
                    "index": i,
                    "number": i + 1,
                    "question": row.get("question") or "",
                    "slots": n,
                    "choices": [
                        {"j": j, "text": text, "checked": str(answer) == str(j)}
                        for j, text in enumerate(_slots(choices, n))
                    ],
                }
            )
        context["widget"]["rows"] = shown
        context["widget"]["count"] = len(shown)
        return context

    def format_value(self, value):
        return value


class ChecksField(forms.Field):
    """Multiple-choice checks: [{"question": str, "choices": [str, ...], "answer": index}]."""

    widget = ChecksWidget

    def __init__(self, *, noun: str = "Check", **kwargs) -> None:
        self.noun = noun
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value) -> list[dict[str, Any]]:
        checks, problems = [], []
        for number, row in enumerate(value or [], start=1):
            check, errors = self._row(number, row)
            problems += errors
            if check is not None:
                checks.append(check)
        if problems:
            raise ValidationError(problems)
        return checks

    def _row(self, number: int, row: dict) -> tuple[dict | None, list[ValidationError]]:
        question = str(row.get("question") or "").strip()
        slots = [str(c or "").strip() for c in row.get("choices") or []]
        if not question and not any(slots):
            return None, []
        label = f"{self.noun} {number}"
        errors = []
        if not question:
            errors.append(ValidationError(f"{label}: write the question.", code="question"))
        filled = [j for j, text in enumerate(slots) if text]
        if len(filled) < 2:
            errors.append(ValidationError(f"{label}: give at least two options.", code="choices"))
        answer = row.get("answer")
        if answer in (None, ""):
            errors.append(ValidationError(f"{label}: choose the correct answer.", code="answer"))
        elif not str(answer).isdigit() or int(answer) not in filled:
            errors.append(
                ValidationError(
                    f"{label}: the correct answer must be one of its filled-in options.",
                    code="answer",
                )
            )
        if errors:
            return None, errors
        check = {
            "question": question,
            "choices": [slots[j] for j in filled],
            "answer": filled.index(int(answer)),
        }
        return check, []

    def prepare_value(self, value):
        return value

    def has_changed(self, initial, data) -> bool:
        try:
            return self.to_python(data) != (initial or [])
        except ValidationError:
            return True


class LinesField(forms.CharField):
    """A list of strings, typed one per line."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}))
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value) -> list[str]:  # type: ignore[override]
        text = super().to_python(value)
        return [line.strip() for line in text.splitlines() if line.strip()]

    def has_changed(self, initial, data) -> bool:
        return self.to_python(data) != (initial or [])


class BlockSizesField(forms.CharField):
    """Random block sizes typed as "3, 6"; empty means the fixed block size."""

    def prepare_value(self, value):
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return value

    def to_python(self, value) -> list[int]:  # type: ignore[override]
        text = super().to_python(value)
        parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
        bad = [p for p in parts if not p.isdigit() or int(p) < 1]
        if bad:
            raise ValidationError(
                f"Block sizes are whole numbers above zero separated by commas (not {bad[0]!r}).",
                code="invalid",
            )
        return [int(p) for p in parts]

    def has_changed(self, initial, data) -> bool:
        try:
            return self.to_python(data) != (initial or [])
        except ValidationError:
            return True


class NamedValuesWidget(forms.MultiWidget):
    """One labelled input per key of a dict-valued setting."""

    template_name = "admin/studies/widgets/named_values.html"

    def __init__(self, fields: dict[str, forms.Field], attrs=None) -> None:
        self.keys = list(fields)
        self.labels = {k: f.label or k for k, f in fields.items()}
        self.helps = {k: f.help_text for k, f in fields.items()}
        super().__init__({k: f.widget for k, f in fields.items()}, attrs)

    def decompress(self, value) -> list[Any]:
        value = value if isinstance(value, dict) else {}
        return [value.get(k) for k in self.keys]

    def get_context(self, name, value, attrs) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        base = context["widget"]["attrs"].get("id")
        for key, sub in zip(self.keys, context["widget"]["subwidgets"], strict=True):
            if base:
                # Named after the setting (MultiWidget numbers them), like the input's name.
                sub["attrs"]["id"] = f"{base}_{key}"
            sub["key"] = key
            sub["label"] = self.labels[key]
            sub["help"] = self.helps[key]
        return context


class NamedValuesField(forms.MultiValueField):
    """A dict of optional named values; blank inputs are left out of the dict."""

    def __init__(self, fields: dict[str, forms.Field], **kwargs) -> None:
        for field in fields.values():
            field.required = False
        self.keys = list(fields)
        kwargs.setdefault("required", False)
        super().__init__(
            list(fields.values()),
            widget=NamedValuesWidget(fields),
            require_all_fields=False,
            **kwargs,
        )

    def compress(self, data_list) -> dict[str, Any]:
        values = dict(zip(self.keys, data_list or [], strict=False))
        return {k: v for k, v in values.items() if v not in (None, "", False)}

    def has_changed(self, initial, data) -> bool:
        try:
            return self.clean(data) != (initial or {})
        except ValidationError:
            return True


def _number(label: str, low: float, high: float, help_text: str = "") -> forms.FloatField:
    return forms.FloatField(
        label=label,
        min_value=low,
        max_value=high,
        help_text=help_text,
        widget=forms.NumberInput(attrs={"step": "any", "class": "vSmallNumber"}),
    )


def _whole(
    label: str, low: int, high: int | None = None, help_text: str = ""
) -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        min_value=low,
        max_value=high,
        help_text=help_text,
        widget=forms.NumberInput(attrs={"class": "vSmallNumber"}),
    )


class ExclusionRulesField(NamedValuesField):
    """Study.exclusion_rules: the rules studies/services/exclusions.py applies."""

    def __init__(self, **kwargs) -> None:
        fields: dict[str, forms.Field] = {
            "min_active_minutes": _number("Min active minutes", 0, 24 * 60),
            "failed_attention": forms.BooleanField(label="Exclude failed attention"),
            "min_user_chars": _whole("Min characters written", 0),
            "min_turns": _whole("Min completed turns", 0),
        }
        assert set(fields) == exclusions.KNOWN_RULES
        super().__init__(fields, **kwargs)

    def compress(self, data_list) -> dict[str, Any]:
        rules = super().compress(data_list)
        for key in ("min_user_chars", "min_turns"):
            if key in rules:
                rules[key] = int(rules[key])
        return rules


class GenerationParamsField(NamedValuesField):
    """Condition.generation_params: the sampling settings the model client passes on."""

    def __init__(self, **kwargs) -> None:
        fields: dict[str, forms.Field] = {
            "temperature": _number("Temperature", 0, 2, "0 to 2"),
            "top_p": _number("Top p", 0, 1, "0 to 1"),
            "max_tokens": _whole("Max tokens", 1, 32768, "per reply"),
            "presence_penalty": _number("Presence penalty", -2, 2, "-2 to 2"),
            "frequency_penalty": _number("Frequency penalty", -2, 2, "-2 to 2"),
            "seed": _whole("Seed", 0),
        }
        super().__init__(fields, **kwargs)

    def compress(self, data_list) -> dict[str, Any]:
        values = dict(zip(self.keys, data_list or [], strict=False))
        return {k: v for k, v in values.items() if v is not None and v != ""}
