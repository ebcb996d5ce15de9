"""Prometheus metrics for the web process and the model client, and the /metrics view.

Several uvicorn worker processes share a port, so a scrape reaches any one of them: with
PROMETHEUS_MULTIPROC_DIR set (`make demo` and docker/compose.yaml set it, and empty the folder
before uvicorn starts), every process writes its figures there and /metrics adds them up
(prometheus_client's multiprocess mode). Prometheus scrapes every replica (container) directly,
never through the proxy, which answers /metrics with 404 (docker/README.md). The view is off
(404) unless METRICS_TOKEN is set; then it answers a bearer token or a staff session.

Label values stay few: `endpoint` is the served model name of an arm's endpoint, `outcome` a
fixed word (`completed`, `interrupted` or a ModelCallError kind), `view` a URL pattern name,
`directive` a CSP directive name or `other` (webapp/cspreport.py).
"""

import hmac
import time
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

# The model client's figures live beside the client (studies may not import webapp); importing
# them here registers them before the first scrape.
import models_serving.metrics  # noqa: F401

http_requests_total = Counter(
    "collabllm_http_requests_total",
    "HTTP responses by method, view and status class.",
    ["method", "view", "status"],
)
http_request_seconds = Histogram(
    "collabllm_http_request_seconds",
    "Seconds to produce an HTTP response (streamed bodies excluded).",
    ["view"],
)
csp_violations_total = Counter(
    "collabllm_csp_violations_total",
    "Content-Security-Policy violation reports received, by effective directive.",
    ["directive"],
)


def _view_label(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return match.view_name if match else "unmatched"


def _record(request: HttpRequest, response: HttpResponse, started: float) -> None:
    view = _view_label(request)
    status = f"{response.status_code // 100}xx"
    http_requests_total.labels(request.method or "", view, status).inc()
    http_request_seconds.labels(view).observe(time.perf_counter() - started)


class MetricsMiddleware:
    """Count responses and time them; works on both the sync and the async path."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        scrape = _direct_scrape(request)
        if scrape is not None:
            return _as_awaitable(scrape) if iscoroutinefunction(self) else scrape
        if iscoroutinefunction(self):
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        _record(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self.get_response(request)
        _record(request, response, started)
        return response


async def _as_awaitable(response: HttpResponse) -> HttpResponse:
    return response


def _direct_scrape(request: HttpRequest) -> HttpResponse | None:
    """A Prometheus scrape with the bearer token, answered before any other middleware.

    Prometheus scrapes each web replica by its own address (never through the proxy), which is
    neither an allowed host nor https; answering here, ahead of the host check and the SSL
    redirect, keeps both strict for everything else. Without the token the request goes the
    normal way (the /metrics view, which also accepts a staff session).
    """
    token = settings.METRICS_TOKEN
    if request.path != "/metrics" or not token or not _bearer_ok(request, token):
        return None
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def exposition() -> bytes:
    """The text exposition: this process's figures, or every process's in multiprocess mode."""
    if not settings.PROMETHEUS_MULTIPROC_DIR:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    return generate_latest(registry)


def _bearer_ok(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def _authorised(request: HttpRequest, token: str) -> bool:
    if _bearer_ok(request, token):
        return True
    user = getattr(request, "user", None)
    return bool(user and user.is_active and user.is_staff)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition; 404 while METRICS_TOKEN is unset, 403 without access."""
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404
    if not _authorised(request, token):
        return HttpResponse("forbidden", status=403, content_type="text/plain")
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
