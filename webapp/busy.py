"""The "busy, retrying" page: a request that gets no database connection in time is answered 503
with Retry-After, never 500.

Bursts queue first: a request waits up to DATABASE_POOL_TIMEOUT for a pooled connection. Past
that (psycopg_pool's PoolTimeout), or when PostgreSQL itself refuses the connection ("too many
clients", SQLSTATE 53300; "starting up", 57P03), nothing of the request has been stored: the
failure comes at its first query. The page says so; a GET reloads itself after Retry-After (plus
jitter, webapp/static/js/busy.js), and a POST (consent, say) is offered again with the same
fields and a fresh CSRF token, so the participant resubmits without losing anything.
"""

import logging
import sys

from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.deprecation import MiddlewareMixin
from django.views import defaults

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# too_many_connections ("sorry, too many clients already", a role's or database's connection
# limit) and cannot_connect_now (the server is starting up). A refused connection carries no
# SQLSTATE in psycopg (the server's FATAL comes before a session exists), so its message is
# matched too: PostgreSQL's wording, in English (lc_messages) as servers log it by default.
BUSY_SQLSTATES = frozenset({"53300", "57P03"})
BUSY_MESSAGES = (
    "too many clients already",
    "too many connections for",
    "remaining connection slots are reserved",
    "the database system is starting up",
)


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` means no database connection could be had in time (not a failed query)."""
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    try:
        from psycopg_pool import PoolTimeout, TooManyRequests
    except ImportError:  # pragma: no cover - psycopg[pool] is in requirements.txt
        pool_errors: tuple[type[BaseException], ...] = ()
    else:
        pool_errors = (PoolTimeout, TooManyRequests)
    if isinstance(cause, pool_errors):
        return True
    if getattr(cause, "sqlstate", None) in BUSY_SQLSTATES:
        return True
    return any(message in str(exc) for message in BUSY_MESSAGES)


def busy_response(request: HttpRequest) -> HttpResponse:
    """The 503 page; for a POST, a form that sends the same fields again (CSRF token renewed)."""
    fields: list[tuple[str, str]] = []
    if request.method == "POST":
        fields = [
            (name, value)
            for name, values in request.POST.lists()
            if name != "csrfmiddlewaretoken"
            for value in values
        ]
    context = {
        "retry_after": RETRY_AFTER_SECONDS,
        "resubmit": request.method == "POST",
        "fields": fields,
        "action": _same_site(request.get_full_path()),
    }
    response = render(request, "busy.html", context, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    if request.headers.get("HX-Request") == "true":
        # An htmx request (the topic choice) swaps the whole page for this one: base.html's
        # htmx-config lets a 503 swap, which htmx otherwise drops (a click that did nothing).
        response["HX-Retarget"] = "body"
        response["HX-Reswap"] = "innerHTML"
    return response


def _same_site(path: str) -> str:
    """`path` as a link that stays on this site: "//host/x" reaches the server as a path, but a
    browser reads it in href or action as another host (with the form's fields and CSRF token)."""
    return "/" + path.lstrip("/")


class DatabaseBusyMiddleware(MiddlewareMixin):
    """Turn a view's "no connection in time" error into the busy page."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_busy(exception):
            return None
        logger.warning("database busy: %s %s answered 503", request.method, request.path)
        return busy_response(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: the busy page when a middleware (not a view) found no connection in time."""
    exc = sys.exc_info()[1]
    if exc is not None and is_busy(exc):
        return busy_response(request)
    return defaults.server_error(request)
