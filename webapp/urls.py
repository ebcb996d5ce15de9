from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.i18n import JavaScriptCatalog

from webapp.cspreport import csp_report
from webapp.metrics import metrics_view


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


# A view's "no database connection in time" is handled by webapp.busy.DatabaseBusyMiddleware; this
# catches the same error raised by a middleware (the session or the user, say).
handler500 = "webapp.busy.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("metrics", metrics_view, name="metrics"),
    path("csp-report", csp_report, name="csp-report"),
    path("jsi18n/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
    path("", include("studies.urls")),
]
