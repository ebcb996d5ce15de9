"""Which environment variables a model endpoint may name as its API key."""

from django.conf import settings
from django.core.exceptions import ValidationError

API_KEY_ENV_PREFIX = "MODEL_API_KEY_"
# Never sent to a model endpoint, whatever MODEL_API_KEY_ENV_ALLOWED says: these unlock the site.
NEVER_SENT = frozenset(
    {"DJANGO_SECRET_KEY", "EXPORT_PSEUDONYM_KEY", "METRICS_TOKEN", "DATABASE_URL", "REDIS_URL",
     "CELERY_BROKER_URL"}
)  # fmt: skip


def api_key_env_allowed(name: str) -> bool:
    """True when the deployment lets an endpoint send this variable's value as its key."""
    if not name or name in NEVER_SENT:
        return False
    return name.startswith(API_KEY_ENV_PREFIX) or name in settings.MODEL_API_KEY_ENV_ALLOWED


def validate_api_key_env(name: str) -> None:
    """Field validator for ModelEndpoint.api_key_env (blank = no key)."""
    if name and not api_key_env_allowed(name):
        raise ValidationError(
            "%(name)s may not be sent to a model endpoint: name a variable starting with "
            f"{API_KEY_ENV_PREFIX} or one listed in MODEL_API_KEY_ENV_ALLOWED.",
            code="api_key_env_not_allowed",
            params={"name": name},
        )
