"""Model endpoints: what serve_models starts for them, their health, and their traffic summary."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.db.models import Count, ExpressionWrapper, F, FloatField, Q, QuerySet
from django.db.models.functions import Cast
from django.utils import timezone

from models_serving.client import EndpointSpec
from models_serving.servers import LaunchConfigError, ServerSpec, check_unique, server_spec
from studies.models import Condition, Message, ModelEndpoint, Study
from studies.monitor import Median
from studies.validators import api_key_env_allowed

HEALTH_READ_TIMEOUT = 10.0
LISTED_MODELS = 20  # hosted APIs list hundreds of models; the admin needs only the first few
WINDOWS = {"hour": timedelta(hours=1), "all": None}
_M = "condition__participant__messages"
logger = logging.getLogger(__name__)


def endpoint_api_key(endpoint: ModelEndpoint) -> str:
    """The endpoint's key, "" when it names none or a variable the deployment does not allow."""
    name = endpoint.api_key_env
    if not name:
        return ""
    if not api_key_env_allowed(name):
        # Rows saved before the allow-list existed are not trusted: the value is never read.
        logger.warning("endpoint %s names %s, which is not an allowed key variable", endpoint, name)
        return ""
    return os.environ.get(name, "")


def endpoint_client_spec(endpoint: ModelEndpoint, model: str = "") -> EndpointSpec:
    """How the client reaches this endpoint (model: an adapter's name; blank = served_model)."""
    key = endpoint_api_key(endpoint) or "none"
    return EndpointSpec(
        base_url=endpoint.base_url,
        model=model or endpoint.served_model,
        api_key=key,
        connect_timeout=endpoint.connect_timeout,
        read_timeout=endpoint.read_timeout,
    )


def endpoint_server_spec(endpoint: ModelEndpoint) -> ServerSpec:
    """How serve_models starts this endpoint's server (llama_cpp or vllm)."""
    return server_spec(
        name=endpoint.name,
        kind=endpoint.server,
        launch=endpoint.launch or {},
        served_model=endpoint.served_model,
        base_url=endpoint.base_url,
    )


def endpoint_server_specs(names: Sequence[str] = ()) -> list[ServerSpec]:
    """Specs for the endpoints that name a server, all of them or those in names."""
    endpoints = ModelEndpoint.objects.exclude(server="external").order_by("name")
    if names:
        endpoints = ModelEndpoint.objects.filter(name__in=names).order_by("name")
        missing = sorted(set(names) - {e.name for e in endpoints})
        if missing:
            raise LaunchConfigError(f"no endpoint named {', '.join(missing)}")
        external = [e.name for e in endpoints if e.server == "external"]
        if external:
            raise LaunchConfigError(f"{', '.join(external)}: server is external, nothing to start")
    specs = [endpoint_server_spec(e) for e in endpoints]
    check_unique(specs, "endpoints")
    return specs


def _list_models(client: httpx.Client, url: str) -> list[str]:
    response = client.get(url.rstrip("/") + "/models")
    response.raise_for_status()
    return [str(model["id"]) for model in response.json()["data"]]


def _expected_models(endpoint: ModelEndpoint) -> set[str]:
    """The served model plus every model or adapter name a condition asks this endpoint for."""
    named = Condition.objects.filter(endpoint=endpoint).exclude(model_name="")
    return {endpoint.served_model, *named.values_list("model_name", flat=True)} - {""}


def endpoint_health_check(endpoint: ModelEndpoint) -> tuple[str, str]:
    """GET /models on the base URL and each replica: (health, one line per URL with its models)."""
    urls = [endpoint.base_url, *(endpoint.replica_urls or [])]
    key = endpoint_api_key(endpoint)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx.Timeout(HEALTH_READ_TIMEOUT, connect=endpoint.connect_timeout)
    expected = _expected_models(endpoint)
    lines = []
    with httpx.Client(timeout=timeout, headers=headers) as client:
        for url in urls:
            try:
                served = _list_models(client, url)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                lines.append(f"{url}: down ({type(exc).__name__}: {exc})"[:300])
                continue
            shown = ", ".join(served[:LISTED_MODELS])
            more = f" (+{len(served) - LISTED_MODELS} more)" if len(served) > LISTED_MODELS else ""
            missing = sorted(expected - set(served))
            lack = f"; missing {', '.join(missing)}" if missing else ""
            lines.append(f"{url}: up, serves {shown}{more}{lack}")
    up = sum(": up," in line for line in lines)
    health = ModelEndpoint.Health.UP if up else ModelEndpoint.Health.DOWN
    return health, f"{up}/{len(urls)} up\n" + "\n".join(lines)


def endpoint_health_record(endpoint: ModelEndpoint) -> str:
    """Check one endpoint and store its health, detail and check time; return the health."""
    endpoint.health, endpoint.health_detail = endpoint_health_check(endpoint)
    endpoint.health_checked_at = timezone.now()
    endpoint.save(update_fields=["health", "health_detail", "health_checked_at"])
    return endpoint.health


def endpoints_check_live() -> dict[str, str]:
    """Check every endpoint a live study's conditions use; return health by endpoint name."""
    endpoints = ModelEndpoint.objects.filter(condition__study__status=Study.Status.LIVE).distinct()
    return {e.name: endpoint_health_record(e) for e in endpoints.order_by("name")}


@dataclass(frozen=True)
class TrafficSummary:
    """Finished replies of one endpoint over one window."""

    replies: int
    failed: int
    interrupted: int
    median_ttft: float | None
    median_itl: float | None
    tokens_per_second: float | None

    @property
    def failed_share(self) -> float | None:
        """Failed or interrupted replies over all finished ones."""
        return (self.failed + self.interrupted) / self.replies if self.replies else None


def _window_annotations(window: str, since: datetime | None) -> dict[str, object]:
    finished = Q(**{f"{_M}__role": Message.Role.ASSISTANT}) & ~Q(
        **{f"{_M}__status": Message.Status.STREAMING}
    )
    if since is not None:
        finished &= Q(**{f"{_M}__created_at__gte": since})
    decoding = F(f"{_M}__duration") - F(f"{_M}__time_to_first_token")
    rate = ExpressionWrapper(
        Cast(f"{_M}__completion_tokens", FloatField()) / decoding, output_field=FloatField()
    )
    timed = finished & Q(
        **{f"{_M}__status": Message.Status.COMPLETE, f"{_M}__completion_tokens__gt": 0}
    )
    timed &= Q(**{f"{_M}__duration__gt": F(f"{_M}__time_to_first_token")})
    status = f"{_M}__status"
    return {
        f"replies_{window}": Count(_M, filter=finished),
        f"failed_{window}": Count(_M, filter=finished & Q(**{status: Message.Status.FAILED})),
        f"interrupted_{window}": Count(
            _M, filter=finished & Q(**{status: Message.Status.INTERRUPTED})
        ),
        f"ttft_{window}": Median(f"{_M}__time_to_first_token", filter=finished),
        f"itl_{window}": Median(f"{_M}__inter_token_latency", filter=finished),
        f"tps_{window}": Median(rate, filter=timed),
    }


def endpoints_with_traffic(
    endpoints: QuerySet[ModelEndpoint], *, now: datetime | None = None
) -> QuerySet[ModelEndpoint]:
    """Annotate endpoints with reply counts and medians for the last hour and all time (1 query)."""
    now = now or timezone.now()
    annotations: dict[str, object] = {}
    for window, length in WINDOWS.items():
        annotations |= _window_annotations(window, now - length if length else None)
    return endpoints.annotate(**annotations)  # type: ignore[arg-type]


def endpoint_traffic(endpoint: ModelEndpoint, window: str) -> TrafficSummary | None:
    """The summary for one window of an endpoint from endpoints_with_traffic; None if missing."""
    if not hasattr(endpoint, f"replies_{window}"):
        return None
    return TrafficSummary(
        *(
            getattr(endpoint, f"{name}_{window}")
            for name in ("replies", "failed", "interrupted", "ttft", "itl", "tps")
        )
    )
