"""Deploy checks for what Django's own `check --deploy` does not know: websockets, the ASGI
server, the channel layer, Redis and the metrics endpoint.

They run with `manage.py check --deploy` (tags `security` and `collabllm`); the few that guard a
setting the code cannot run with (errors, `collabllm.E...`) run with every `manage.py` command
that checks (`check`, `migrate`, `runserver`). A warning that does not apply to a deployment
(say, a single host with Redis on localhost) is silenced by naming its id in
SILENCED_SYSTEM_CHECKS, never by weakening the check.
"""

import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

# The ASGI server versions this project is tested with (requirements.txt; DESIGN.md "Processes").
MIN_VERSIONS = {"uvicorn": (0, 54, 0), "daphne": (4, 2, 2)}
# A chat frame is at most 2 * CHAT_MAX_MESSAGE_CHARS + 1000 characters (studies/consumers.py),
# each up to 4 bytes in UTF-8; anything much larger only lets one socket make the server buffer it.
FRAME_EXTRA_CHARS = 1000
WS_MAX_SIZE_CEILING = 1024 * 1024
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})
IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"
METRICS_TOKEN_MIN_CHARS = 32


def _w(msg: str, hint: str, n: int) -> CheckWarning:
    return CheckWarning(msg, hint=hint, id=f"collabllm.W{n:03d}")


@register("collabllm")
def check_alive_seconds(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The liveness key's TTL must be a positive number of seconds: it is renewed four times
    within it, so 0 would have every running reply renew its key without pause."""
    from studies.services.inflight import MIN_ALIVE_SECONDS

    value = settings.CHAT_ALIVE_SECONDS
    if isinstance(value, int | float) and math.isfinite(value) and value >= MIN_ALIVE_SECONDS:
        return []
    return [
        Error(
            f"CHAT_ALIVE_SECONDS is {value}: a reply's liveness key needs a TTL of at least "
            f"{MIN_ALIVE_SECONDS:g} s (it is renewed four times within it).",
            hint="Set CHAT_ALIVE_SECONDS to a few seconds (default 4.0; see .env.example).",
            id="collabllm.E001",
        )
    ]


@register(Tags.security, "collabllm", deploy=True)
def check_websocket_origin(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The websocket route must sit behind the site's origin check (cross-site websocket
    hijacking); channels' own validators compare host names only, not scheme and port."""
    from webapp.origins import SiteOriginValidator

    application = import_string(settings.ASGI_APPLICATION)
    mapping = getattr(application, "application_mapping", {})
    websocket = mapping.get("websocket")
    if websocket is None or isinstance(websocket, SiteOriginValidator):
        return []
    return [
        _w(
            f"The websocket route of {settings.ASGI_APPLICATION} does not check the Origin header "
            "against the site's own origins (scheme, host and port).",
            "Wrap it in webapp.origins.SiteOriginValidator (webapp/asgi.py).",
            1,
        )
    ]


@register(Tags.security, "collabllm", deploy=True)
def check_allowed_hosts(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A wildcard host also lets every origin open a chat socket."""
    if "*" not in settings.ALLOWED_HOSTS:
        return []
    return [
        _w(
            "ALLOWED_HOSTS contains '*': any Host header and any websocket Origin is accepted.",
            "Set DJANGO_ALLOWED_HOSTS to the site's host names.",
            2,
        )
    ]


@register(Tags.security, "collabllm", deploy=True)
def check_csrf_trusted_origins(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Behind HTTPS, trusted origins must be https and name an allowed host."""
    if not settings.SECURE_SSL_REDIRECT:
        return []
    problems = []
    for origin in settings.CSRF_TRUSTED_ORIGINS:
        parts = urlsplit(origin)
        host = (parts.hostname or "").removeprefix("*.")
        allowed = any(
            host == h or (h.startswith(".") and host.endswith(h)) for h in settings.ALLOWED_HOSTS
        )
        if parts.scheme != "https" or not allowed:
            problems.append(origin)
    if not problems:
        return []
    return [
        _w(
            f"CSRF_TRUSTED_ORIGINS has origins not https or not an allowed host: {problems}.",
            "List https://<host> for hosts in DJANGO_ALLOWED_HOSTS (DJANGO_CSRF_TRUSTED_ORIGINS).",
            3,
        )
    ]


def _layer() -> dict[str, Any]:
    return getattr(settings, "CHANNEL_LAYERS", {}).get("default", {})


@register("collabllm", deploy=True)
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Replies stream through the channel layer, so it must reach every web process."""
    layer = _layer()
    backend = layer.get("BACKEND", "")
    if not backend or backend == IN_MEMORY_LAYER:
        return [
            _w(
                f"The channel layer is {backend or 'not configured'}: a reply generated in one "
                "web process never reaches a socket in another.",
                "Use channels_redis (CHANNEL_LAYERS in webapp/settings.py) with REDIS_URL.",
                4,
            )
        ]
    config = layer.get("CONFIG", {})
    problems = []
    if backend == "channels_redis.pubsub.RedisPubSubChannelLayer":
        for host in config.get("hosts", []):
            if not isinstance(host, dict) or host.get("socket_timeout", 0) is not None:
                problems.append("a host without socket_timeout=None (idle sockets crash)")
    elif backend == "channels_redis.core.RedisChannelLayer":
        if config.get("capacity", 100) < 100:
            problems.append("capacity under 100 (frames are dropped under load)")
        if not 10 <= config.get("expiry", 60) <= 120:
            problems.append("expiry outside 10-120 s")
    if not problems:
        return []
    return [
        _w(
            f"Channel layer settings: {'; '.join(problems)}.",
            "See CHANNEL_LAYERS in webapp/settings.py and benchmarks/README.md.",
            5,
        )
    ]


@register("collabllm", deploy=True)
def check_redis_is_shared(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Several web replicas, worker and beat must share one Redis, not each a local one."""
    local = [
        name
        for name, url in (("REDIS_URL", settings.REDIS_URL), ("broker", settings.CELERY_BROKER_URL))
        if urlsplit(url).scheme == "unix" or urlsplit(url).hostname in LOCAL_HOSTS
    ]
    if not local:
        return []
    return [
        _w(
            f"{' and '.join(local)} point at this machine; other hosts and containers cannot "
            "share the channel layer or the queue.",
            "Point REDIS_URL at the shared Redis (compose: redis://redis:6379/0). On a single "
            "host without containers, silence collabllm.W006.",
            6,
        )
    ]


def _installed(package: str) -> tuple[int, ...] | None:
    try:
        raw = version(package)
    except PackageNotFoundError:
        return None
    return tuple(int(p) for p in raw.split(".")[:3] if p.isdigit())


@register("collabllm", deploy=True)
def check_asgi_server(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """An ASGI server at least as new as the tested one must be installed."""
    found = {name: _installed(name) for name in MIN_VERSIONS}
    if any(v is not None and v >= MIN_VERSIONS[name] for name, v in found.items()):
        return []
    wanted = " or ".join(f"{n} >= {'.'.join(map(str, v))}" for n, v in MIN_VERSIONS.items())
    have = ", ".join(f"{n} {'.'.join(map(str, v))}" for n, v in found.items() if v) or "none"
    return [
        _w(
            f"No tested ASGI server is installed (found: {have}).",
            f"Install {wanted} (requirements.txt pins uvicorn).",
            7,
        )
    ]


@register(Tags.security, "collabllm", deploy=True)
def check_ws_max_size(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The server's websocket frame limit must fit a chat frame and not much more."""
    size = settings.UVICORN_WS_MAX_SIZE
    needed = 4 * (2 * settings.CHAT_MAX_MESSAGE_CHARS + FRAME_EXTRA_CHARS)
    if needed <= size <= max(WS_MAX_SIZE_CEILING, needed):
        return []
    what = "is unset (16 MiB)" if not size else f"is {size} bytes"
    return [
        _w(
            f"UVICORN_WS_MAX_SIZE {what}; a chat frame needs up to {needed} bytes.",
            f"Set UVICORN_WS_MAX_SIZE between {needed} and {max(WS_MAX_SIZE_CEILING, needed)} "
            "(uvicorn reads it as --ws-max-size).",
            8,
        )
    ]


@register(Tags.security, "collabllm", deploy=True)
def check_proxy_ssl_header(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Behind a TLS-ending proxy, SSL redirects need the proxy's forwarded-proto header."""
    if not settings.SECURE_SSL_REDIRECT or settings.SECURE_PROXY_SSL_HEADER:
        return []
    return [
        _w(
            "SECURE_SSL_REDIRECT is on but SECURE_PROXY_SSL_HEADER is unset: behind the proxy "
            "every request looks like http and is redirected forever.",
            "Set SECURE_PROXY_SSL_HEADER = ('HTTP_X_FORWARDED_PROTO', 'https') and make the "
            "proxy overwrite X-Forwarded-Proto (docker/Caddyfile does).",
            9,
        )
    ]


@register(Tags.security, "collabllm", deploy=True)
def check_metrics_token(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A metrics token, when set, must be hard to guess."""
    token = settings.METRICS_TOKEN
    if not token or len(token) >= METRICS_TOKEN_MIN_CHARS:
        return []
    return [
        _w(
            f"METRICS_TOKEN is shorter than {METRICS_TOKEN_MIN_CHARS} characters.",
            'Use e.g. python -c "import secrets; print(secrets.token_urlsafe(32))".',
            10,
        )
    ]


@register("collabllm", deploy=True)
def check_celery_not_eager(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Eager tasks would run exports, reports and training inside a web request."""
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        return []
    return [
        _w(
            "CELERY_TASK_ALWAYS_EAGER is on: background tasks run inside web requests.",
            "Set CELERY_TASK_ALWAYS_EAGER=false and run a worker.",
            11,
        )
    ]


@register("collabllm", deploy=True)
def check_database_connections(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Connections are pooled and health-checked (webapp/settings.py, "Database connections")."""
    database = settings.DATABASES["default"]
    pooled = bool(database.get("OPTIONS", {}).get("pool"))
    problems = []
    if database.get("CONN_MAX_AGE") != 0:
        problems.append(
            _w(
                "DATABASE_CONN_MAX_AGE is not 0: under ASGI every HTTP request opens a connection "
                "anyway and leaves it open until garbage collection"
                + (", and Django refuses persistent connections with a pool." if pooled else "."),
                "Set DATABASE_CONN_MAX_AGE=0 and DATABASE_POOL=true.",
                20,
            )
        )
    elif not pooled:
        problems.append(
            _w(
                "DATABASE_POOL is off: every request and every stream checkpoint opens a new "
                "PostgreSQL connection.",
                "Set DATABASE_POOL=true (and size DATABASE_POOL_MAX_SIZE to max_connections).",
                20,
            )
        )
    if not database.get("CONN_HEALTH_CHECKS"):
        problems.append(
            _w(
                "DATABASE_CONN_HEALTH_CHECKS is off: after a PostgreSQL restart, the first query "
                "on each kept connection fails.",
                "Set DATABASE_CONN_HEALTH_CHECKS=true.",
                21,
            )
        )
    return problems


# PostgreSQL keeps superuser_reserved_connections (default 3) for superusers only.
RESERVED_CONNECTIONS = 3


@register("collabllm", deploy=True)
def check_connection_budget(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every process's pool together must fit PostgreSQL's max_connections."""
    limit = settings.DATABASE_MAX_CONNECTIONS
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if not limit or not pool:
        return []
    # psycopg_pool's own defaults: max_size = min_size = 4 (`"pool": True`).
    options = pool if isinstance(pool, dict) else {}
    size = options.get("max_size") or options.get("min_size") or 4
    web = settings.WEB_REPLICAS * settings.WEB_PROCESSES * size
    total = web + settings.DATABASE_OTHER_CONNECTIONS
    if total <= limit - RESERVED_CONNECTIONS:
        return []
    return [
        _w(
            f"The processes may open {total} PostgreSQL connections ({settings.WEB_REPLICAS} "
            f"replicas x {settings.WEB_PROCESSES} web processes x DATABASE_POOL_MAX_SIZE "
            f"{size} + DATABASE_OTHER_CONNECTIONS "
            f"{settings.DATABASE_OTHER_CONNECTIONS}), more than max_connections {limit} minus "
            f"{RESERVED_CONNECTIONS} reserved: a burst gets 'too many clients' , not a queue.",
            "Lower DATABASE_POOL_MAX_SIZE or WEB_PROCESSES, or raise PostgreSQL's max_connections "
            '(and DATABASE_MAX_CONNECTIONS); docker/README.md "Database connections".',
            22,
        )
    ]
