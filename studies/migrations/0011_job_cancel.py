import django.db.models.deletion
from django.contrib.auth.management import create_permissions
from django.db import migrations, models


def study_admins_get_pilot_run_permissions(apps, schema_editor):
    """Study admins hold every permission of the app (0006): add the new model's."""
    using = schema_editor.connection.alias
    config = apps.get_app_config("studies")
    # Historical app configs have no models_module, which create_permissions requires.
    stub = getattr(config, "models_module", None) is None
    if stub:
        config.models_module = True
    create_permissions(config, verbosity=0, using=using, apps=apps)
    if stub:
        config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    granted = Permission.objects.using(using).filter(
        content_type__app_label="studies", content_type__model="pilotrun"
    )
    for group in Group.objects.using(using).filter(name="Study admin"):
        group.permissions.add(*granted)


class Migration(migrations.Migration):
    dependencies = [("studies", "0010_declined_outcome")]

    operations = [
        migrations.AddField(
            model_name="reportrun",
            name="cancel_requested",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="reportrun",
            name="heartbeat_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="reportrun",
            name="task_id",
            field=models.CharField(blank=True, max_length=50),
        ),
        migrations.AddField(
            model_name="reportrun",
            name="kind",
            field=models.CharField(
                choices=[("report", "Report"), ("export", "Export")], default="report", max_length=6
            ),
        ),
        migrations.AddField(
            model_name="reportrun",
            name="export_format",
            field=models.CharField(blank=True, help_text="Exports: csv, parquet.", max_length=10),
        ),
        migrations.AlterField(
            model_name="reportrun",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("running", "Running"),
                    ("done", "Done"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                    ("interrupted", "Interrupted"),
                ],
                default="queued",
                max_length=12,
            ),
        ),
        migrations.CreateModel(
            name="PilotRun",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("queued", "Queued"),
                            ("running", "Running"),
                            ("done", "Done"),
                            ("failed", "Failed"),
                            ("cancelled", "Cancelled"),
                            ("interrupted", "Interrupted"),
                        ],
                        default="queued",
                        max_length=12,
                    ),
                ),
                ("participants", models.PositiveIntegerField()),
                ("concurrency", models.PositiveSmallIntegerField(default=2)),
                (
                    "done",
                    models.PositiveIntegerField(
                        default=0, help_text="Simulated participants finished."
                    ),
                ),
                (
                    "completed",
                    models.PositiveIntegerField(
                        default=0, help_text="Of those, completed the study."
                    ),
                ),
                (
                    "errors",
                    models.PositiveIntegerField(default=0, help_text="Errors so far, all steps."),
                ),
                ("cancel_requested", models.BooleanField(default=False)),
                ("task_id", models.CharField(blank=True, max_length=50)),
                ("heartbeat_at", models.DateTimeField(blank=True, null=True)),
                ("report", models.JSONField(blank=True, null=True)),
                ("error", models.TextField(blank=True)),
                ("created_by", models.CharField(blank=True, max_length=150)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "study",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="pilot_runs",
                        to="studies.study",
                    ),
                ),
            ],
            options={
                "ordering": ["study", "-created_at", "-id"],
            },
        ),
        migrations.RunPython(study_admins_get_pilot_run_permissions, migrations.RunPython.noop),
    ]
