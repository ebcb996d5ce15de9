"""Model endpoints: where each arm's replies come from, their health and their recent traffic."""

from django.contrib import admin
from django.db import models
from django.utils.html import format_html, format_html_join

from studies.models import (
    ModelEndpoint,
)
from studies.numbers import duration_text, percent_text, thousands_text
from studies.services.endpoints import TrafficSummary, endpoint_traffic, endpoints_with_traffic


def _traffic_cells(summary: TrafficSummary | None) -> tuple[str, ...]:
    if summary is None or not summary.replies:
        return ("0", "-", "-", "-", "-")
    tps = "-" if summary.tokens_per_second is None else f"{summary.tokens_per_second:.1f}"
    return (
        thousands_text(summary.replies),
        percent_text(summary.failed_share or 0.0),
        duration_text(summary.median_ttft),
        duration_text(summary.median_itl),
        tps,
    )


SERVING_FIELDS = [
    "server", "launch", "replica_urls", "max_concurrent_streams", "connect_timeout", "read_timeout",
]  # fmt: skip


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(admin.ModelAdmin):
    list_display = [
        "name", "server", "base_url", "served_model", "health", "health_checked_at",
        "last_hour",
    ]  # fmt: skip
    list_filter = ["server", "health"]
    readonly_fields = ["health", "health_checked_at", "health_detail_text", "traffic"]
    fieldsets = [
        (None, {"fields": ["name", "base_url", "served_model", "api_key_env"]}),
        ("Serving", {"fields": SERVING_FIELDS}),
        ("Health and traffic", {"fields": readonly_fields}),
    ]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request):
        return endpoints_with_traffic(super().get_queryset(request))

    @admin.display(description="Last hour: replies, failed, TTFT, ITL, tok/s")
    def last_hour(self, obj: ModelEndpoint) -> str:
        return " · ".join(_traffic_cells(endpoint_traffic(obj, "hour")))

    @admin.display(description="Health detail")
    def health_detail_text(self, obj: ModelEndpoint) -> str:
        lines = obj.health_detail.splitlines() or ["not checked yet"]
        return format_html("<pre>{}</pre>", "\n".join(lines))

    @admin.display(description="Replies (finished)")
    def traffic(self, obj: ModelEndpoint) -> str:
        head = ("window", "replies", "failed or interrupted", "median TTFT", "median ITL", "tok/s")
        rows = [
            (label, *_traffic_cells(endpoint_traffic(obj, window)))
            for window, label in (("hour", "last hour"), ("all", "all time"))
        ]
        return format_html(
            '<table class="endpoint-traffic"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
            format_html_join("", "<th>{}</th>", ((h,) for h in head)),
            format_html_join(
                "",
                "<tr>{}</tr>",
                ((format_html_join("", "<td>{}</td>", ((c,) for c in row)),) for row in rows),
            ),
        )
