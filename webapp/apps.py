"""The project package as an app, so that its deploy checks register when Django starts."""

from django.apps import AppConfig


class WebappConfig(AppConfig):
    name = "webapp"
    label = "webapp"
    verbose_name = "Web"

    def ready(self) -> None:
        from webapp import checks  # noqa: F401  (registers the deploy checks)
