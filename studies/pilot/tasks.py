"""Celery entry points for pilot runs (filled in by the pilot runner)."""
