"""The demo study: the paper's three arms, three document types, about five topics each."""

from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction

from models_serving.launch import EMBEDDED_ALIAS
from studies.models import Condition, ModelEndpoint, Study, Task
from studies.services.versions import version_publish

CONSENT = """This is a research study about how people write with AI assistants.

You will chat with an AI assistant to write a short document, rate the conversation from time to
time, and submit the final document with a short survey. It takes about 30 minutes.

We record what you write, the assistant's replies, your ratings and timings. Your recruiting id is
stored only to pay you and is replaced by a pseudonym in exported data. You may stop at any time.
"""

INSTRUCTIONS = """Work with the assistant as you would with a helpful colleague: tell it what you
want, react to its suggestions, and ask for changes until you are happy with the document."""

QUESTIONS = {
    Task.DocumentType.BLOG_POST: [
        "Who do you want to read this post?",
        "What is the one thing a reader should take away?",
        "What tone do you want (for example casual, expert, funny)?",
    ],
    Task.DocumentType.CREATIVE_WRITING: [
        "What form should it take (short story, poem, scene...)?",
        "What mood or feeling are you aiming for?",
    ],
    Task.DocumentType.PERSONAL_STATEMENT: [
        "What is the statement for (a programme, a job, a scholarship)?",
        "Which experience of yours should it centre on?",
        "What should the reader remember about you?",
    ],
}

TOPICS = {
    Task.DocumentType.BLOG_POST: [
        "Starting a habit of reading every day",
        "What a first marathon taught me",
        "Cooking on a small budget",
        "Working from home without burning out",
        "Why local libraries still matter",
    ],
    Task.DocumentType.CREATIVE_WRITING: [
        "A lighthouse keeper's last night",
        "Two strangers stuck in a lift",
        "A city where it never stops raining",
        "A letter to your future self",
        "The day the robots went on strike",
    ],
    Task.DocumentType.PERSONAL_STATEMENT: [
        "Applying for a master's programme in computer science",
        "Applying for a nursing position",
        "Applying for a community leadership scholarship",
        "Changing careers into teaching",
        "Applying for a summer research internship",
    ],
}

ARMS = [
    # key, internal label (the CollabLLM arm's says what serves it: _collabllm_label), prompt
    ("base", "Base (no system prompt)", "none"),
    ("proactive", "Proactive Base (proactive prompt)", "proactive"),
    ("collabllm", "CollabLLM (collaborative prompt)", "collabllm"),
]
GENERATION_PARAMS = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256}
COMPREHENSION = [
    {
        "question": "Who decides what goes into the final document?",
        "choices": ["The AI assistant", "You do; the assistant only helps"],
        "answer": 1,
    }
]


def _default_serving() -> dict[str, object]:
    """What serve_models starts for the default endpoint: vLLM with the adapter, or llama.cpp."""
    url = urlsplit(settings.MODEL_BASE_URL)
    port = url.port or 8000
    if settings.COLLABLLM_ADAPTER_PATH:
        lora = {settings.COLLABLLM_MODEL_NAME: settings.COLLABLLM_ADAPTER_PATH}
        return {
            "server": "vllm",
            "launch": {"model": settings.MODEL_NAME, "port": port, "lora_modules": lora},
        }
    if settings.MODEL_NAME == EMBEDDED_ALIAS and url.hostname in ("127.0.0.1", "localhost"):
        return {"server": "llama_cpp", "launch": {"port": port, "n_ctx": 2048}}
    return {"server": "external", "launch": {}}


def _endpoints() -> tuple[ModelEndpoint, ModelEndpoint]:
    base, _ = ModelEndpoint.objects.update_or_create(
        name="default",
        defaults={
            "base_url": settings.MODEL_BASE_URL,
            "served_model": settings.MODEL_NAME,
            **_default_serving(),
        },
    )
    if settings.COLLABLLM_ADAPTER_PATH or not settings.COLLABLLM_MODEL_BASE_URL:
        return base, base
    collab, _ = ModelEndpoint.objects.update_or_create(
        name="collabllm",
        defaults={
            "base_url": settings.COLLABLLM_MODEL_BASE_URL,
            "served_model": settings.COLLABLLM_MODEL_NAME,
        },
    )
    return base, collab


def _collabllm_label() -> str:
    """The CollabLLM arm as the settings configure it: an adapter, its own model, or neither."""
    if settings.COLLABLLM_ADAPTER_PATH:
        return (
            f"CollabLLM (collaborative prompt; LoRA adapter {settings.COLLABLLM_MODEL_NAME} "
            "served with the base model by vLLM)"
        )
    if settings.COLLABLLM_MODEL_BASE_URL:
        return (
            f"CollabLLM (collaborative prompt; model {settings.COLLABLLM_MODEL_NAME} "
            "on its own endpoint)"
        )
    return "CollabLLM (collaborative prompt on the base model; no adapter)"


@transaction.atomic
def seed_demo(*, slug: str = "demo", min_turns: int = 8, rating_every: int = 3) -> Study:
    """Create or update the demo study; safe to run any number of times."""
    study, _ = Study.objects.update_or_create(
        slug=slug,
        defaults={
            "title": "Writing with an AI assistant",
            "status": Study.Status.LIVE,
            "consent_text": CONSENT,
            "instructions": INSTRUCTIONS,
            "min_turns": min_turns,
            "rating_every": rating_every,
            "design": Study.Design.PERMUTED_BLOCKS,
            "block_size": 3,
            "stratify_by": "document_type",
            "seed": 20250711,
            "time_limit_minutes": 45,
            "comprehension_questions": COMPREHENSION,
            "min_user_message_chars": 5,
        },
    )
    base, collab = _endpoints()
    adapter = settings.COLLABLLM_MODEL_NAME if settings.COLLABLLM_ADAPTER_PATH else ""
    for key, label, prompt in ARMS:
        Condition.objects.update_or_create(
            study=study,
            key=key,
            defaults={
                "label": _collabllm_label() if key == "collabllm" else label,
                "endpoint": collab if key == "collabllm" else base,
                # On the adapter endpoint the arm asks vLLM for the LoRA by its served name.
                "model_name": adapter if key == "collabllm" else "",
                "system_prompt": prompt,
                "generation_params": GENERATION_PARAMS,
            },
        )
    for doc_type, topics in TOPICS.items():
        for topic in topics:
            Task.objects.update_or_create(
                study=study,
                document_type=doc_type,
                topic=topic,
                defaults={"intent_questions": QUESTIONS[doc_type]},
            )
    version_publish(study, by="seed_demo")
    return study
