"""The export's tables and columns: the one definition behind the files, the data dictionary and
the loader.

`studies` writes exports row by row in this column order; `analysis.io` reads them back with these
types; `data_dictionary()` renders the same definitions as Markdown. A column added here appears in
all three at once. Bump SCHEMA_VERSION whenever a column is added, renamed or changes meaning.
"""

from dataclasses import dataclass

SCHEMA_VERSION = "4"
RATING_COLUMN_PREFIX = "rating_turn_"
# Spreadsheets run a cell that starts with one of these as a formula (OWASP: CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# The manifest key (and its value) of a CSV export whose text cells went through csv_guard.
CSV_GUARD_KEY, CSV_GUARD = "csv_formula_guard", "apostrophe"


def csv_guard(text: str) -> str:
    """A text cell as CSV holds it: one apostrophe before a cell a spreadsheet would run.

    Leading apostrophes are skipped when looking for the trigger, so that csv_unguard can tell an
    added apostrophe from one the text began with: the scheme is reversible for every string.
    """
    return "'" + text if text.lstrip("'").startswith(FORMULA_TRIGGERS) else text


def csv_unguard(text: str) -> str:
    """The true text of a cell that csv_guard wrote."""
    guarded = text.startswith("'") and text[1:].lstrip("'").startswith(FORMULA_TRIGGERS)
    return text[1:] if guarded else text


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "string", "int", "float", "bool", "datetime", "json"
    description: str


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(name: str, dtype: str, description: str) -> Column:
    return Column(name, dtype, description)


PARTICIPANT_ID = _c(
    "participant_id", "string", "Stable pseudonymous participant id (the platform's public UUID)."
)
ARM = _c("arm", "string", "Arm (condition) key the participant was assigned to.")

PARTICIPANTS = Table(
    "participants",
    "One row per participant (wide). Rating checkpoints are added as rating_turn_<k> columns.",
    (
        PARTICIPANT_ID,
        _c(
            "recruiting_id",
            "string",
            "Recruiting id (e.g. Prolific PID) as a keyed hash, or raw when exported with raw ids.",
        ),
        _c("recruiting_source", "string", "prolific, mturk, link, or pilot."),
        _c("is_pilot", "bool", "Simulated pilot participant (only present with --include-pilot)."),
        ARM,
        _c("task_type", "string", "Document type of the task (blog_post, creative_writing, ...)."),
        _c("topic", "string", "Topic the participant chose."),
        _c("config_version", "int", "Study configuration version the participant saw."),
        _c(
            "status",
            "string",
            "Final status (completed, declined, abandoned, returned, timed_out, ...).",
        ),
        _c("outcome", "string", "Outcome that selected the completion code, if any."),
        _c("excluded", "bool", "Marked as excluded from analyses (never deleted)."),
        _c("exclusion_reason", "string", "Why the participant was excluded (empty if not)."),
        _c("stratum", "string", "Assignment stratum of the arm allocation."),
        _c("entered_at", "datetime", "When the participant first opened the study link (UTC)."),
        _c("consented_at", "datetime", "Consent time (UTC)."),
        _c(
            "consent_training",
            "bool",
            "Agreed at consent that the conversation may be used to train assistant models; "
            "empty when the study did not ask.",
        ),
        _c(
            "consent_sharing",
            "bool",
            "Agreed at consent that the de-identified conversation may be shared in a public "
            "dataset; empty when the study did not ask.",
        ),
        _c("completed_at", "datetime", "Completion time (UTC); empty if not completed."),
        _c("wall_seconds", "float", "Seconds from consent to completion (completed only)."),
        _c("active_seconds", "float", "Active seconds (idle gaps over the threshold removed)."),
        _c("n_user_turns", "int", "User messages sent (one per turn)."),
        _c(
            "n_complete_turns",
            "int",
            "Turns whose assistant reply completed (continuations of a cut reply are not turns).",
        ),
        _c("assistant_tokens", "int", "Sum of completion tokens over the assistant's replies."),
        _c(
            "user_tokens",
            "int",
            "Tokens the participant wrote from turn 2 on, by the server's counts: per turn, the "
            "prompt's growth beyond the previous prompt and reply (a few chat-template tokens "
            "included); turn 1 is left out (its prompt is mostly the arm's system prompt); empty "
            "when a reply lacks counts.",
        ),
        _c("user_chars", "int", "Characters the participant wrote to the assistant in total."),
        _c("comprehension_failures", "int", "Wrong comprehension-check attempts."),
        _c("attention_failures", "int", "Wrong attention-check answers."),
        _c("document_quality", "float", "Final survey: document quality, 1-10."),
        _c("overall_interaction", "float", "Final survey: overall interaction, 1-10."),
    ),
)

MESSAGES = Table(
    "messages",
    "One row per message attempt (user and assistant), in order.",
    (
        _c("message_id", "int", "Message row id (stable within the export)."),
        PARTICIPANT_ID,
        ARM,
        _c("turn_index", "int", "1-based turn the message belongs to."),
        _c("role", "string", "user or assistant."),
        _c(
            "attempt",
            "int",
            "Attempt number within the turn's assistant rows: a retry of a failed reply and a "
            "continuation of a cut reply each take the next number.",
        ),
        _c("status", "string", "complete, failed, interrupted or streaming."),
        _c("content", "string", "Message text."),
        _c("model", "string", "Model or adapter that produced the reply (pinned at the turn)."),
        _c("prompt_ref", "string", "System prompt name@version#hash used for the reply."),
        _c("generation_params", "json", "Generation parameters used for the reply (JSON)."),
        _c("prompt_tokens", "int", "Prompt tokens of the request (assistant rows)."),
        _c("completion_tokens", "int", "Completion tokens of the reply (assistant rows)."),
        _c("time_to_first_token", "float", "Seconds from request to first token."),
        _c("duration", "float", "Seconds from request to the last token."),
        _c("error_kind", "string", "Why a reply failed (empty when it did not)."),
        _c(
            "finish_reason",
            "string",
            "Why the model stopped (assistant rows): stop, or length when the reply was cut at the "
            "token limit; empty while streaming or when it failed.",
        ),
        _c(
            "continuation_of",
            "int",
            "For a reply the participant asked to continue after it stopped at the token limit: "
            "the message_id of the reply it continues (same turn); empty otherwise.",
        ),
        _c("created_at", "datetime", "When the message row was created (UTC)."),
    ),
)

TURN_RATINGS = Table(
    "turn_ratings",
    "One row per blocking 1-10 rating during the chat.",
    (
        PARTICIPANT_ID,
        ARM,
        _c("after_turn", "int", "The rating was given after this many completed turns."),
        _c("score", "int", "Rating 1-10."),
        _c("question_version", "string", "Version of the rating question."),
        _c("created_at", "datetime", "When the rating was given (UTC)."),
    ),
)

FINAL_SURVEYS = Table(
    "final_surveys",
    "One row per completed final survey.",
    (
        PARTICIPANT_ID,
        ARM,
        _c("document_text", "string", "The final document the participant submitted."),
        _c("document_quality", "int", "Document quality, 1-10."),
        _c("overall_interaction", "int", "Overall interaction with the assistant, 1-10."),
        _c("strengths", "string", "What the assistant did well."),
        _c("weaknesses", "string", "What the assistant could do better."),
        _c("extra_answers", "json", "Further answers (attention checks), JSON."),
        _c("created_at", "datetime", "Submission time (UTC)."),
    ),
)

EVENTS = Table(
    "events",
    "The append-only audit log: one row per event of the participant (presence, steps, errors).",
    (
        _c("event_id", "int", "Event row id."),
        PARTICIPANT_ID,
        _c("kind", "string", "Dotted event kind, e.g. study.turn.completed."),
        _c("payload", "json", "Event details (JSON; platform tokens such as SESSION_ID left out)."),
        _c("created_at", "datetime", "When it happened (UTC)."),
    ),
)

INTENT_ANSWERS = Table(
    "intent_answers",
    "One row per answer to the task's intent questions, asked before the chat.",
    (
        PARTICIPANT_ID,
        _c("question_index", "int", "0-based question number."),
        _c("question", "string", "The question as shown."),
        _c("answer", "string", "The participant's answer."),
    ),
)

DOCUMENT_VERSIONS = Table(
    "document_versions",
    "One row per saved version of the participant's working document (the pane beside the chat, "
    "then the final page), in order; the last one is the submitted document.",
    (
        PARTICIPANT_ID,
        ARM,
        _c("version", "int", "1-based version number within the participant."),
        _c(
            "source",
            "string",
            "What made this version: typed, inserted (from an assistant reply), pasted, or final "
            "(the text submitted on the final page).",
        ),
        _c(
            "from_message_id",
            "int",
            "For an inserted version: the message_id of the assistant reply inserted; else empty.",
        ),
        _c(
            "turn_index",
            "int",
            "Completed turns (assistant replies) when the version was saved; 0 before the first.",
        ),
        _c("chars", "int", "Length of the text in characters."),
        _c("text", "string", "The whole document as saved."),
        _c(
            "seconds_from_chat_start",
            "float",
            "Seconds from the start of the chat to this save (empty if the chat start is unknown).",
        ),
        _c("created_at", "datetime", "When the version was saved (UTC)."),
    ),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        PARTICIPANTS,
        MESSAGES,
        TURN_RATINGS,
        FINAL_SURVEYS,
        EVENTS,
        INTENT_ANSWERS,
        DOCUMENT_VERSIONS,
    )
}


def rating_column(after_turn: int) -> str:
    return f"{RATING_COLUMN_PREFIX}{after_turn}"


def rating_columns(checkpoints: list[int]) -> list[Column]:
    """The participants table's rating columns for these checkpoints (sorted)."""
    return [
        Column(rating_column(k), "float", f"Rating (1-10) given after turn {k}.")
        for k in sorted(set(checkpoints))
    ]


def data_dictionary(checkpoints: list[int] | None = None) -> str:
    """The Markdown data dictionary for an export with these rating checkpoints."""
    lines = [
        "# Data dictionary",
        "",
        f"Schema version {SCHEMA_VERSION}. Times are UTC (ISO 8601); `json` columns hold JSON",
        "text; empty cells are missing values. Preview participants are never exported; pilot",
        "participants only when asked for (`is_pilot`).",
        "",
        "In CSV files only, a `string` or `json` cell that begins with `=`, `+`, `-`, `@`, a tab",
        "or a carriage return (after any apostrophes it already begins with) has one apostrophe",
        "`'` put in front, so that spreadsheets show it as text rather than run it as a formula.",
        "`analysis.io.load_export` removes that apostrophe again (the manifest says",
        f"`{CSV_GUARD_KEY}: {CSV_GUARD}`); Parquet files hold the true values; numeric columns",
        "are never changed.",
    ]
    for table in TABLES.values():
        columns = list(table.columns)
        if table is PARTICIPANTS:
            columns += rating_columns(checkpoints or [])
        lines += ["", f"## {table.name}", "", table.description, ""]
        lines += ["| column | type | description |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.dtype} | {c.description} |" for c in columns]
    return "\n".join(lines) + "\n"
