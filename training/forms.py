"""The training run form: each stage's hyperparameters as named, range-checked fields, not JSON."""

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from studies.admin.fields import NamedValuesField
from training.models import TrainingRun

TRAINING_STAGES = ("sft", "dpo", "online_dpo")


def _number(label: str, low: float, *, whole: bool = False) -> forms.Field:
    attrs = {"class": "vSmallNumber"} if whole else {"class": "vSmallNumber", "step": "any"}
    widget = forms.NumberInput(attrs=attrs)
    field = forms.IntegerField if whole else forms.FloatField
    return field(label=label, min_value=low, widget=widget)


class StageField(NamedValuesField):
    """One training stage: {"enabled": bool, "learning_rate": ..., ...}."""

    def __init__(self, stage: str, **kwargs) -> None:
        fields: dict[str, forms.Field] = {
            "enabled": forms.BooleanField(label="Enabled"),
            "learning_rate": _number("Learning rate", 0),
            "batch_size": _number("Batch size", 1, whole=True),
            "epochs": _number("Epochs", 0),
            "max_steps": _number("Max steps (-1 = epochs)", -1, whole=True),
        }
        if stage in ("dpo", "online_dpo"):
            fields["beta"] = _number("Beta", 0)
        if stage == "dpo":
            fields["min_gap"] = _number("Min reward gap", 0)
        if stage == "online_dpo":
            fields["max_new_tokens"] = _number("Max new tokens", 1, whole=True)
        super().__init__(fields, **kwargs)

    def compress(self, data_list) -> dict[str, Any]:
        values = dict(zip(self.keys, data_list or [], strict=False))
        stage = {k: v for k, v in values.items() if v is not None and v != ""}
        stage["enabled"] = bool(values.get("enabled"))
        return stage

    def clean(self, value) -> dict[str, Any]:
        stage = super().clean(value)
        if stage.get("enabled") and not stage.get("learning_rate"):
            raise ValidationError("An enabled stage needs a learning rate above 0.")
        return stage


class TrainingRunForm(forms.ModelForm):
    """Builds TrainingRun.stages from the stage fields; keys the form does not name are kept."""

    sft = StageField("sft", label="SFT")
    dpo = StageField("dpo", label="Offline DPO")
    online_dpo = StageField("online_dpo", label="Online DPO")
    per_device_batch_size = forms.IntegerField(min_value=1, initial=1)
    max_length = forms.IntegerField(min_value=16, initial=2048, help_text="Tokens per example.")

    class Meta:
        model = TrainingRun
        fields = ["name"]  # the admin's fieldsets name the rest

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        stages = self.instance.stages or {}
        for name in (*TRAINING_STAGES, "per_device_batch_size", "max_length"):
            if name in stages:
                self.initial.setdefault(name, stages[name])

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        names = (*TRAINING_STAGES, "per_device_batch_size", "max_length")
        if not any(self.has_error(n) for n in names):
            chosen = {n: data[n] for n in names if data.get(n) is not None}
            for name in TRAINING_STAGES:
                # A key the form does not show (set by a script) survives the edit.
                chosen[name] = (self.instance.stages or {}).get(name, {}) | chosen.get(name, {})
            self.instance.stages = (self.instance.stages or {}) | chosen
        return data
