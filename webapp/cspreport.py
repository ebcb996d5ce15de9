"""The endpoint browsers send Content-Security-Policy violation reports to (`report-uri`).

Each well-formed report is counted in `collabllm_csp_violations_total` (webapp/metrics.py) and
logged as one short line; anything else is refused with 400 and not counted. Reports come from
anyone's browser, so the body is size-bounded and only a known directive name becomes a label.
"""

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from webapp.metrics import csp_violations_total

logger = logging.getLogger(__name__)

# A browser's report is well under 2 KiB; the cap keeps a hostile sender from making us parse more.
MAX_REPORT_BYTES = 16 * 1024
# Fetch directives and the document/navigation ones a report may name; anything else is "other".
DIRECTIVES = frozenset(
    """default-src script-src script-src-elem script-src-attr style-src style-src-elem
    style-src-attr img-src font-src connect-src media-src object-src frame-src child-src
    worker-src manifest-src prefetch-src base-uri form-action frame-ancestors navigate-to
    sandbox trusted-types require-trusted-types-for""".split()
)


class MalformedReport(ValueError):
    """The body is not a CSP report in either of the formats browsers send."""


def _reports(body: bytes) -> list[dict[str, Any]]:
    """The violation bodies in a `report-uri` or Reporting API (`report-to`) payload."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedReport("not JSON") from exc
    if isinstance(data, dict) and isinstance(data.get("csp-report"), dict):
        return [data["csp-report"]]
    if isinstance(data, list) and data:
        bodies = [r.get("body") for r in data if isinstance(r, dict)]
        if len(bodies) == len(data) and all(isinstance(b, dict) for b in bodies):
            return bodies  # type: ignore[return-value]
    raise MalformedReport("no csp-report object")


def _directive(report: dict[str, Any]) -> str:
    name = report.get("effective-directive") or report.get("effectiveDirective")
    if not isinstance(name, str):
        name = report.get("violated-directive") or report.get("violatedDirective")
    if not isinstance(name, str) or not name.strip():
        raise MalformedReport("no directive")
    name = name.split()[0].lower()
    return name if name in DIRECTIVES else "other"


def _where(value: Any) -> str:
    """A URL cut to scheme, host and path (no query: it may carry ids), at most 200 characters."""
    if not isinstance(value, str):
        return "-"
    parts = urlsplit(value)
    short = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else value
    return short[:200]


@csrf_exempt
@require_POST
def csp_report(request: HttpRequest) -> HttpResponse:
    """Count and log the violation reports in one POST; 400 for a malformed or oversized body."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit() or int(declared) > MAX_REPORT_BYTES:
        return HttpResponse("report too large", status=413, content_type="text/plain")
    body = request.read(MAX_REPORT_BYTES + 1)
    if len(body) > MAX_REPORT_BYTES:
        return HttpResponse("report too large", status=413, content_type="text/plain")
    try:
        reports = [(r, _directive(r)) for r in _reports(body)]
    except MalformedReport as exc:
        return HttpResponse(f"malformed report: {exc}", status=400, content_type="text/plain")
    for report, directive in reports:
        csp_violations_total.labels(directive).inc()
        blocked = report.get("blocked-uri") or report.get("blockedURL")
        page = report.get("document-uri") or report.get("documentURL")
        logger.warning(
            "CSP violation: %s blocked %s on %s", directive, _where(blocked), _where(page)
        )
    return HttpResponse(status=204)
