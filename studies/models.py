"""The study record: everything a participant did; constraints forbid impossible states."""

import secrets
import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from studies.validators import validate_api_key_env

MARKDOWN_HELP = "Markdown: paragraphs, lists, emphasis, headings, links. Raw HTML shows as text."


def _completion_code() -> str:
    return secrets.token_hex(4).upper()


class Study(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        LIVE = "live"
        PAUSED = "paused"
        CLOSED = "closed"

    class Design(models.TextChoices):
        PERMUTED_BLOCKS = "permuted_blocks", "Permuted blocks"
        LEAST_FILLED = "least_filled", "Least filled"

    class Source(models.TextChoices):
        LINK = "link", "Plain link"
        PROLIFIC = "prolific", "Prolific"
        MTURK = "mturk", "Amazon Mechanical Turk"

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    consent_text = models.TextField(help_text=MARKDOWN_HELP)
    instructions = models.TextField(blank=True, help_text=MARKDOWN_HELP)
    min_turns = models.PositiveSmallIntegerField(default=8, validators=[MinValueValidator(1)])
    max_turns = models.PositiveSmallIntegerField(null=True, blank=True)
    rating_every = models.PositiveSmallIntegerField(
        default=3, help_text="A blocking 1-10 rating after every k completed turns (0 = never)."
    )
    time_limit_minutes = models.PositiveSmallIntegerField(null=True, blank=True)
    target_per_arm = models.PositiveIntegerField(null=True, blank=True)
    design = models.CharField(max_length=30, choices=Design.choices, default=Design.PERMUTED_BLOCKS)
    block_size = models.PositiveSmallIntegerField(
        default=6, help_text="Assignments per block; a multiple of the summed arm weights."
    )
    block_sizes = models.JSONField(
        default=list,
        blank=True,
        help_text="Random block sizes, e.g. [3, 6]: each block draws one (seeded). Empty = fixed.",
    )
    stratify_by = models.CharField(
        max_length=60,
        blank=True,
        help_text="Blank = no strata; 'document_type'; or 'param:NAME' for a recruiting parameter.",
    )
    reuse_slots = models.BooleanField(
        default=True,
        help_text="Hand the slot of a returned, timed-out, abandoned or excluded participant to "
        "the next arrival of the same stratum.",
    )
    seed = models.BigIntegerField(default=0)
    recruiting_source = models.CharField(max_length=10, choices=Source.choices, default=Source.LINK)
    completion_code = models.CharField(max_length=40, default=_completion_code)
    screened_out_code = models.CharField(max_length=40, default=_completion_code)
    attention_failed_code = models.CharField(max_length=40, default=_completion_code)
    timed_out_code = models.CharField(max_length=40, default=_completion_code)
    declined_code = models.CharField(
        max_length=40,
        default=_completion_code,
        help_text="Shown to those who do not consent (Prolific asks for a no-consent code).",
    )
    asks_training_consent = models.BooleanField(
        default=False,
        help_text="Ask at consent, as an optional extra, whether the conversation may be used to "
        "train assistant models (a training run from this study uses only those who agreed).",
    )
    asks_sharing_consent = models.BooleanField(
        default=False,
        help_text="Ask at consent, as an optional extra, whether the de-identified conversation "
        "may be shared in a public dataset (a release export includes only those who agreed).",
    )
    linked_studies = models.ManyToManyField(
        "self",
        blank=True,
        help_text="Anyone who entered a linked study cannot enter this one (repeat workers).",
    )
    comprehension_questions = models.JSONField(
        default=list,
        blank=True,
        help_text='After the brief: [{"question": ..., "choices": [...], "answer": index}]. '
        "Two attempts, then the participant is screened out.",
    )
    attention_checks = models.JSONField(
        default=list,
        blank=True,
        help_text='In the final survey: [{"question": ..., "choices": [...], "answer": index}].',
    )
    attention_fail_threshold = models.PositiveSmallIntegerField(
        default=2,
        help_text="Wrong attention answers that count as failing (capped at the number of checks).",
    )
    min_user_message_chars = models.PositiveSmallIntegerField(default=0)
    detect_paste = models.BooleanField(
        default=False, help_text="Record pastes into the chat box as events."
    )
    time_warning_minutes = models.PositiveSmallIntegerField(
        default=5, help_text="Warn this many minutes before the time limit."
    )
    abandon_after_minutes = models.PositiveIntegerField(
        default=60, help_text="Mark a participant abandoned after this long without activity."
    )
    exclusion_rules = models.JSONField(
        default=dict,
        blank=True,
        help_text='Marks (never deletes) completed participants, e.g. {"min_active_minutes": 5, '
        '"failed_attention": true, "min_user_chars": 200}.',
    )
    completion_redirect_url = models.URLField(
        blank=True,
        help_text="Where to send finished participants; {code} is replaced by the completion code.",
    )
    config_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"
        # Researcher roles (groups made by migration 0006) are built from these and the model
        # permissions; README "Running a study" lists who gets what.
        permissions = [
            ("view_transcripts", "Can read transcripts, intent answers and final documents"),
            ("run_study", "Can run a study: go live, pause, resume, close, exclude, pilot"),
            ("export_study", "Can export a study's data and build its analysis report"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_turns__isnull=True) | Q(max_turns__gte=models.F("min_turns")),
                name="study_max_turns_gte_min",
            ),
            models.CheckConstraint(
                condition=Q(block_size__gte=1), name="study_block_size_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.title


class StudyVersion(models.Model):
    """A frozen snapshot of a study's configuration; participants are stamped with one."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    config = models.JSONField()
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "number"]
        constraints = [
            models.UniqueConstraint(fields=["study", "number"], name="version_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.study_id} v{self.number}"


class ModelEndpoint(models.Model):
    class Health(models.TextChoices):
        UNKNOWN = "unknown"
        UP = "up"
        DOWN = "down"

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(help_text="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    served_model = models.CharField(max_length=200)
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_api_key_env],
        help_text="Name of the environment variable holding the key: MODEL_API_KEY_... or one "
        "listed in MODEL_API_KEY_ENV_ALLOWED.",
    )
    connect_timeout = models.FloatField(default=5.0)
    read_timeout = models.FloatField(default=60.0)
    replica_urls = models.JSONField(
        default=list,
        blank=True,
        help_text="More base URLs serving the same model (replicas); requests go to the replica "
        "with the fewest outstanding streams, skipping unhealthy ones.",
    )
    max_concurrent_streams = models.PositiveIntegerField(
        default=64, help_text="Streams at once across all web processes (held in Redis)."
    )
    server = models.CharField(
        max_length=10,
        choices=[("external", "External (not started here)"), ("llama_cpp", "llama.cpp"),
                 ("vllm", "vLLM")],
        default="external",
        help_text="What `serve_models` starts for this endpoint.",
    )  # fmt: skip
    launch = models.JSONField(
        default=dict,
        blank=True,
        help_text='For serve_models: {"model": ..., "port": 8000, "tensor_parallel_size": 1, '
        '"gpu_memory_utilization": 0.9, "max_model_len": 4096, "lora_modules": {"name": "path"}, '
        '"extra_args": []}.',
    )
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_detail = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.name


class Condition(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="conditions")
    key = models.SlugField(max_length=40)
    label = models.CharField(max_length=100, help_text="Internal; never shown to participants.")
    endpoint = models.ForeignKey(ModelEndpoint, on_delete=models.PROTECT)
    model_name = models.CharField(
        max_length=200, blank=True, help_text="Model or adapter name; blank = endpoint's model."
    )
    system_prompt = models.CharField(
        max_length=100, default="none", help_text="Prompt under models_serving/prompts/."
    )
    prompt_version = models.CharField(max_length=20, blank=True, help_text="Blank = latest.")
    generation_params = models.JSONField(default=dict, blank=True)
    weight = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    cap = models.PositiveIntegerField(null=True, blank=True, help_text="Hard cap for the arm.")
    cap_per_stratum = models.PositiveIntegerField(
        null=True, blank=True, help_text="Hard cap for the arm within each stratum."
    )
    is_active = models.BooleanField(default=True)
    allow_continue = models.BooleanField(
        default=True,
        help_text="Participants may ask a reply cut off at the token limit to continue.",
    )

    class Meta:
        ordering = ["study", "key"]
        constraints = [
            models.UniqueConstraint(fields=["study", "key"], name="condition_key_unique_per_study"),
        ]

    def __str__(self) -> str:
        return self.key


class Task(models.Model):
    class DocumentType(models.TextChoices):
        BLOG_POST = "blog_post", "Blog post"
        CREATIVE_WRITING = "creative_writing", "Creative writing piece"
        PERSONAL_STATEMENT = "personal_statement", "Personal statement"
        OTHER = "other", "Other"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="tasks")
    document_type = models.CharField(max_length=30, choices=DocumentType.choices)
    topic = models.CharField(max_length=200)
    brief = models.TextField(blank=True, help_text=MARKDOWN_HELP)
    intent_questions = models.JSONField(default=list, help_text="A list of question strings.")

    class Meta:
        ordering = ["study", "document_type", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "document_type", "topic"], name="task_topic_unique_per_type"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_document_type_display()}: {self.topic}"


class AssignmentCounter(models.Model):
    """One row per (study, stratum): locked FOR UPDATE to hand out allocation positions."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="counters")
    stratum = models.CharField(max_length=120)
    next_position = models.PositiveIntegerField(default=0)
    state = models.JSONField(
        default=dict,
        blank=True,
        help_text="Allocator state: current block, occupied slots per arm, freed slots.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "stratum"], name="counter_unique_stratum"),
        ]

    def __str__(self) -> str:
        return f"{self.study_id}:{self.stratum} next={self.next_position}"


class ParticipantQuerySet(models.QuerySet):
    def real(self) -> "ParticipantQuerySet":
        """Participants that count as data: not pilots, not researcher previews."""
        return self.filter(is_pilot=False, is_preview=False)


class Participant(models.Model):
    class Status(models.TextChoices):
        ENTERED = "entered"
        CONSENTED = "consented"
        BRIEFED = "briefed"
        CHATTING = "chatting"
        RATING_DUE = "rating_due"
        FINAL = "final"
        COMPLETED = "completed"
        ABANDONED = "abandoned"
        EXCLUDED = "excluded"
        RETURNED = "returned"
        TIMED_OUT = "timed_out"
        DECLINED = "declined"

    class Outcome(models.TextChoices):
        COMPLETED = "completed"
        SCREENED_OUT = "screened_out"
        FAILED_ATTENTION = "failed_attention"
        TIMED_OUT = "timed_out"
        RETURNED = "returned"
        ABANDONED = "abandoned"
        DECLINED = "declined"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="participants")
    external_id = models.CharField(max_length=200)
    recruiting_source = models.CharField(max_length=10, default="link")
    recruiting_params = models.JSONField(default=dict, blank=True)
    config_version = models.PositiveIntegerField()
    version = models.ForeignKey(StudyVersion, null=True, blank=True, on_delete=models.PROTECT)
    attempts = models.JSONField(
        default=list, blank=True, help_text="One entry per arrival: recruiting session id, time."
    )
    resume_code_hash = models.CharField(
        max_length=64,
        blank=True,
        editable=False,
        help_text="Keyed hash (HMAC-SHA256) of the resume code; the code itself is not stored.",
    )
    condition = models.ForeignKey(Condition, null=True, blank=True, on_delete=models.PROTECT)
    document_type = models.CharField(max_length=30, blank=True, choices=Task.DocumentType.choices)
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.PROTECT)
    allocation = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ENTERED)
    outcome = models.CharField(max_length=20, blank=True, choices=Outcome.choices)
    is_pilot = models.BooleanField(default=False)
    is_preview = models.BooleanField(
        default=False, help_text="A researcher's test run: never in exports or analyses."
    )
    comprehension_failures = models.PositiveSmallIntegerField(default=0)
    attention_failures = models.PositiveSmallIntegerField(default=0)
    excluded_at = models.DateTimeField(null=True, blank=True)
    exclusion_reason = models.TextField(blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    entered_at = models.DateTimeField(auto_now_add=True)
    consented_at = models.DateTimeField(null=True, blank=True)
    # Optional extras asked at consent (None: the study did not ask).
    consent_training = models.BooleanField(null=True, blank=True)
    consent_sharing = models.BooleanField(null=True, blank=True)
    briefed_at = models.DateTimeField(null=True, blank=True)
    chat_started_at = models.DateTimeField(null=True, blank=True)
    chat_finished_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    last_active_at = models.DateTimeField(null=True, blank=True)
    is_visible = models.BooleanField(default=True)
    active_seconds = models.FloatField(default=0.0)

    objects = ParticipantQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "external_id"], name="participant_external_id_unique_per_study"
            ),
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "entered",
                        "declined",
                        "abandoned",
                        "excluded",
                        "returned",
                        "timed_out",
                    ]
                )
                | Q(condition__isnull=False),
                name="participant_past_consent_has_condition",
            ),
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "entered",
                        "declined",
                        "consented",
                        "abandoned",
                        "excluded",
                        "returned",
                        "timed_out",
                    ]
                )
                | Q(task__isnull=False),
                name="participant_past_brief_has_task",
            ),
            models.CheckConstraint(
                condition=Q(excluded_at__isnull=True) | ~Q(exclusion_reason=""),
                name="participant_exclusion_has_reason",
            ),
        ]
        indexes = [models.Index(fields=["study", "status"])]

    def __str__(self) -> str:
        return f"{self.study.slug}/{self.external_id}"

    @property
    def wall_seconds(self) -> float | None:
        """Seconds from consent to completion; None until the participant has completed."""
        if self.consented_at and self.completed_at:
            return (self.completed_at - self.consented_at).total_seconds()
        return None


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        INTERRUPTED = "interrupted"
        FAILED = "failed"

    participant = models.ForeignKey(Participant, on_delete=models.PROTECT, related_name="messages")
    turn_index = models.PositiveSmallIntegerField(help_text="1-based turn this message belongs to.")
    role = models.CharField(max_length=10, choices=Role.choices)
    attempt = models.PositiveSmallIntegerField(default=1)
    content = models.TextField(blank=True)
    # A complete reply's content rendered to sanitised HTML, once, when it is stored (rows
    # completed before this field existed are rendered on read: selectors.message_frame).
    html = models.TextField(blank=True, editable=False)
    status = models.CharField(max_length=12, choices=Status.choices)
    error_kind = models.CharField(max_length=30, blank=True)
    error_detail = models.TextField(blank=True)
    model = models.CharField(max_length=200, blank=True)
    endpoint_url = models.CharField(max_length=300, blank=True)
    prompt_ref = models.CharField(max_length=120, blank=True)
    generation_params = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    usage_source = models.CharField(
        max_length=10, blank=True, help_text="stream = server usage; tokenize = server tokenizer."
    )
    time_to_first_token = models.FloatField(null=True, blank=True)
    inter_token_latency = models.FloatField(
        null=True, blank=True, help_text="Mean seconds between streamed chunks after the first."
    )
    duration = models.FloatField(null=True, blank=True)
    finish_reason = models.CharField(max_length=30, blank=True)
    idempotency_key = models.UUIDField(null=True, blank=True)
    # A reply continuing one that stopped at the token limit (same turn): not a turn of its own.
    continuation_of = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="continuations",
        help_text="The reply this one continues after it was cut off at the token limit.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["participant", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["participant", "idempotency_key"], name="message_idempotency_key_unique"
            ),
            models.UniqueConstraint(
                fields=["participant", "turn_index", "role", "attempt"],
                name="message_turn_role_attempt_unique",
            ),
            models.UniqueConstraint(
                fields=["participant"],
                condition=Q(status="streaming"),
                name="message_one_stream_per_participant",
            ),
            models.UniqueConstraint(
                fields=["participant", "turn_index", "role"],
                condition=Q(status="complete", continuation_of__isnull=True),
                name="message_one_complete_per_turn_role",
            ),
            models.UniqueConstraint(
                fields=["continuation_of"],
                condition=Q(status="complete"),
                name="message_one_complete_continuation",
            ),
            models.CheckConstraint(
                condition=Q(continuation_of__isnull=True) | Q(role="assistant"),
                name="message_continuation_is_assistant",
            ),
            models.CheckConstraint(
                condition=Q(role="assistant") | Q(idempotency_key__isnull=False),
                name="message_user_has_idempotency_key",
            ),
        ]
        indexes = [models.Index(fields=["participant", "created_at"])]

    def __str__(self) -> str:
        return f"{self.participant_id}#{self.turn_index} {self.role} ({self.status})"


class DocumentVersion(models.Model):
    """One saved version of the participant's working document (the pane, then the final page)."""

    class Source(models.TextChoices):
        TYPED = "typed"
        INSERTED = "inserted"  # an assistant reply inserted into the document
        PASTED = "pasted"
        FINAL = "final"  # the text submitted on the final page

    participant = models.ForeignKey(
        Participant, on_delete=models.PROTECT, related_name="document_versions"
    )
    number = models.PositiveIntegerField(help_text="1-based, per participant.")
    text = models.TextField(blank=True)
    turn_index = models.PositiveSmallIntegerField(help_text="Completed turns when it was saved.")
    source = models.CharField(max_length=10, choices=Source.choices)
    from_message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["participant", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["participant", "number"], name="document_version_number_unique"
            ),
            models.CheckConstraint(
                condition=Q(number__gte=1), name="document_version_number_positive"
            ),
            models.CheckConstraint(
                condition=~Q(source="inserted") | Q(from_message__isnull=False),
                name="document_version_inserted_has_message",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.participant_id} v{self.number} ({self.source})"


class TurnRating(models.Model):
    participant = models.ForeignKey(Participant, on_delete=models.PROTECT, related_name="ratings")
    after_turn = models.PositiveSmallIntegerField()
    score = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(10)]
    )
    question_version = models.CharField(max_length=20, default="v1")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["participant", "after_turn"]
        constraints = [
            models.UniqueConstraint(
                fields=["participant", "after_turn"], name="rating_one_per_checkpoint"
            ),
            models.CheckConstraint(
                condition=Q(score__gte=1, score__lte=10), name="rating_score_1_10"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.participant_id} after turn {self.after_turn}: {self.score}"


class FinalSurvey(models.Model):
    participant = models.OneToOneField(
        Participant, on_delete=models.PROTECT, related_name="final_survey"
    )
    document_text = models.TextField()
    document_quality = models.PositiveSmallIntegerField()
    overall_interaction = models.PositiveSmallIntegerField()
    strengths = models.TextField()
    weaknesses = models.TextField()
    extra_answers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(document_quality__gte=1, document_quality__lte=10),
                name="final_document_quality_1_10",
            ),
            models.CheckConstraint(
                condition=Q(overall_interaction__gte=1, overall_interaction__lte=10),
                name="final_overall_interaction_1_10",
            ),
        ]

    def __str__(self) -> str:
        return f"final survey of {self.participant_id}"


class IntentAnswer(models.Model):
    participant = models.ForeignKey(
        Participant, on_delete=models.PROTECT, related_name="intent_answers"
    )
    question_index = models.PositiveSmallIntegerField()
    question = models.TextField()
    answer = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["participant", "question_index"]
        constraints = [
            models.UniqueConstraint(
                fields=["participant", "question_index"], name="intent_answer_one_per_question"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.participant_id} q{self.question_index}"


class Event(models.Model):
    """Append-only audit log; `kind` is dotted (`study.turn.completed`)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="events")
    participant = models.ForeignKey(
        Participant, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    kind = models.CharField(max_length=60)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["participant", "kind"])]

    def __str__(self) -> str:
        return f"{self.kind} ({self.participant_id})"


class JobStatus(models.TextChoices):
    """Where a background job (a report, an export, a pilot) is; studies.services.jobs marks a
    queued or running one interrupted when no worker holds it any more."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


class ReportRun(models.Model):
    """One export-and-analysis run of a study (or, kind "export", a background export into a
    zip), done by a Celery task; the admin shows the last of each."""

    class Kind(models.TextChoices):
        REPORT = "report"
        EXPORT = "export"

    Status = JobStatus

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="report_runs")
    kind = models.CharField(max_length=6, choices=Kind.choices, default=Kind.REPORT)
    export_format = models.CharField(max_length=10, blank=True, help_text="Exports: csv, parquet.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    task_id = models.CharField(max_length=50, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress = models.FloatField(default=0.0, help_text="0 to 1.")
    step = models.CharField(max_length=200, blank=True)
    include_pilot = models.BooleanField(default=False)
    reference_arm = models.CharField(max_length=40, blank=True)
    out_dir = models.CharField(max_length=500, blank=True)
    summary = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0, progress__lte=1), name="report_run_progress_0_1"
            ),
        ]

    def __str__(self) -> str:
        return f"report {self.pk} of {self.study_id} ({self.status})"


class PilotRun(models.Model):
    """One pilot of simulated participants, run by a Celery task; counters grow as they finish."""

    Status = JobStatus

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="pilot_runs")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    participants = models.PositiveIntegerField()
    concurrency = models.PositiveSmallIntegerField(default=2)
    done = models.PositiveIntegerField(default=0, help_text="Simulated participants finished.")
    completed = models.PositiveIntegerField(default=0, help_text="Of those, completed the study.")
    errors = models.PositiveIntegerField(default=0, help_text="Errors so far, all steps.")
    cancel_requested = models.BooleanField(default=False)
    task_id = models.CharField(max_length=50, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    report = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "-created_at", "-id"]

    def __str__(self) -> str:
        return f"pilot {self.pk} of {self.study_id} ({self.status})"


class ErasureRecord(models.Model):
    """Who erased a participant, when and why (a data-subject request); outlives study and rows."""

    study_slug = models.SlugField()
    participant_pseudonym = models.CharField(
        max_length=40, help_text="Keyed hash of the recruiting id, as in exports."
    )
    requested_by = models.CharField(max_length=150)
    reason = models.TextField()
    erased_rows = models.JSONField(default=dict, help_text="Rows deleted, by table.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(requested_by="") & ~Q(reason=""), name="erasure_says_who_and_why"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.study_slug}/{self.participant_pseudonym} erased by {self.requested_by}"
