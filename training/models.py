"""Training runs: what a researcher configured, each stage's progress, and the checkpoints made."""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

STAGE_ORDER = ("collect", "build_data", "sft", "dpo", "online_dpo", "register", "evaluate")


def _default_stages() -> dict:
    """Enabled stages and their hyperparameters (the paper's, §4); edit per run in the admin."""
    return {
        "sft": {
            "enabled": True,
            "learning_rate": 1e-5,
            "batch_size": 64,
            "epochs": 3,
            "max_steps": -1,
        },
        "dpo": {
            "enabled": True,
            "learning_rate": 5e-6,
            "batch_size": 64,
            "epochs": 8,
            "beta": 0.1,
            "max_steps": -1,
            "min_gap": 0.0,
        },
        "online_dpo": {
            "enabled": False,
            "learning_rate": 5e-6,
            "batch_size": 32,
            "epochs": 1,
            "beta": 0.1,
            "max_steps": -1,
            "max_new_tokens": 256,
        },
        "per_device_batch_size": 1,
        "max_length": 2048,
    }


class TrainingRun(models.Model):
    """One CollabLLM training run, carried out by Celery stage by stage."""

    class Status(models.TextChoices):
        DRAFT = "draft"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"

    class TaskSet(models.TextChoices):
        DOCUMENT = "document", "Documents (BLEU)"
        CODE = "code", "Code (unit tests)"
        MATH = "math", "Math (accuracy)"

    name = models.CharField(max_length=100, unique=True)
    base_model = models.CharField(
        max_length=500, help_text="Local folder of the base policy (Hugging Face format)."
    )
    policy_endpoint = models.ForeignKey(
        "studies.ModelEndpoint",
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Serves the base policy: candidates and the policy's turns in forward samples.",
    )
    user_endpoint = models.ForeignKey(
        "studies.ModelEndpoint",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="User simulator; blank = the policy endpoint.",
    )
    judge_endpoint = models.ForeignKey(
        "studies.ModelEndpoint",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Interactivity judge; blank = the policy endpoint.",
    )
    extractor_endpoint = models.ForeignKey(
        "studies.ModelEndpoint",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Artefact extractor; blank = the policy endpoint.",
    )
    json_mode = models.CharField(
        max_length=12,
        default="json_schema",
        choices=[
            ("json_schema", "json_schema (vLLM, hosted APIs)"),
            ("json_object", "json_object + schema (llama.cpp server)"),
            ("none", "none"),
        ],
        help_text="How the servers are asked for the simulator's, judge's and extractor's JSON.",
    )
    task_set = models.CharField(max_length=10, choices=TaskSet.choices, default=TaskSet.DOCUMENT)
    task_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Use only the first N training tasks (blank = all)."
    )
    window = models.PositiveSmallIntegerField(
        default=2,
        validators=[MinValueValidator(1)],
        help_text="w: future turns per forward sample.",
    )
    samples = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1)], help_text="S: forward samples per candidate."
    )
    candidates = models.PositiveSmallIntegerField(
        default=2, validators=[MinValueValidator(2)], help_text="Candidates scored per turn."
    )
    max_turns = models.PositiveSmallIntegerField(default=5, validators=[MinValueValidator(1)])
    max_tokens = models.PositiveIntegerField(default=256, help_text="Per model reply.")
    token_lambda = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Token penalty λ; blank = the paper's (1e-4 documents, 5e-4 code and math).",
    )
    token_clamp = models.BooleanField(default=True, help_text="min(λ·tokens, 1) as in the paper.")
    token_scope = models.CharField(
        max_length=16,
        default="assistant+user",
        choices=[
            ("assistant+user", "Read and written (paper)"),
            ("assistant", "Assistant's only (reference code)"),
        ],
    )
    # PROTECT: a run's data came from this study's participants; the study is its provenance
    # (and a study with participants cannot be deleted anyway).
    source_study = models.ForeignKey(
        "studies.Study",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="training_runs",
        help_text="Collect from this study's real conversations (participants who agreed to "
        "training use) instead of simulating the task set.",
    )
    source_include_pilot = models.BooleanField(
        default=False,
        help_text="With a source study: take its pilot participants too (demos and tests only).",
    )
    stages = models.JSONField(default=_default_stages)
    eval_tasks = models.PositiveSmallIntegerField(
        default=4,
        validators=[MaxValueValidator(1000)],
        help_text="Held-out tasks in the benchmark (0 skips it; it serves the adapter with vLLM).",
    )
    output_dir = models.CharField(
        max_length=500, blank=True, help_text="Blank = under REPORTS_DIR."
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("run_training", "Can start runs, retry stages and add a checkpoint to a study"),
        ]

    def __str__(self) -> str:
        return self.name


class TrainingStage(models.Model):
    """One step of a run; a worker takes it under a lease and records progress as it goes."""

    class Status(models.TextChoices):
        PENDING = "pending"
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"

    run = models.ForeignKey(TrainingRun, on_delete=models.PROTECT, related_name="stage_rows")
    name = models.CharField(max_length=20, choices=[(s, s) for s in STAGE_ORDER])
    position = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    task_id = models.CharField(max_length=50, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    log = models.TextField(blank=True, help_text="The latest lines of this stage's log.")
    curve = models.JSONField(
        default=list,
        blank=True,
        help_text="Per training step: {step, loss, and for DPO rewards/margins, ...}.",
    )

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="training_stage_once_per_run"),
            models.CheckConstraint(
                condition=Q(done__lte=models.F("total")) | Q(total=0),
                name="training_stage_done_le_total",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run} / {self.name}"


class Checkpoint(models.Model):
    """A trained adapter, servable as a LoRA module next to its base model."""

    run = models.ForeignKey(TrainingRun, on_delete=models.PROTECT, related_name="checkpoints")
    stage = models.CharField(max_length=20)
    adapter_path = models.CharField(max_length=500)
    adapter_name = models.SlugField(max_length=60, unique=True)
    endpoint = models.ForeignKey(
        "studies.ModelEndpoint",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="checkpoints",
        help_text="The endpoint that serves this adapter.",
    )
    benchmark = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.adapter_name
