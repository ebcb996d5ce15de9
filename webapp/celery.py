"""Celery application: `celery -A webapp worker`."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(["studies.pilot"])

# Recovery at worker start: rows left running or queued by a worker that is gone are marked
# interrupted now rather than at the next beat (the tasks ask every worker, this one included).
RECOVERY_TASKS = ("studies.tasks.recover_interrupted_jobs", "training.tasks.recover_stale_stages")


@worker_ready.connect
def recover_at_start(sender, **kwargs) -> None:
    for name in RECOVERY_TASKS:
        sender.app.send_task(name, queue="housekeeping")
