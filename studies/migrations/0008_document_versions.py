import django.db.models.deletion
from django.contrib.auth.management import create_permissions
from django.db import migrations, models


def study_admins_get_document_permissions(apps, schema_editor):
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
        content_type__app_label="studies", content_type__model="documentversion"
    )
    for group in Group.objects.using(using).filter(name="Study admin"):
        group.permissions.add(*granted)


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0007_rendered_replies"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.CreateModel(
            name="DocumentVersion",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("number", models.PositiveIntegerField(help_text="1-based, per participant.")),
                ("text", models.TextField(blank=True)),
                (
                    "turn_index",
                    models.PositiveSmallIntegerField(
                        help_text="Completed turns when it was saved."
                    ),
                ),
                (
                    "source",
                    models.CharField(
                        choices=[
                            ("typed", "Typed"),
                            ("inserted", "Inserted"),
                            ("pasted", "Pasted"),
                            ("final", "Final"),
                        ],
                        max_length=10,
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "from_message",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="studies.message",
                    ),
                ),
                (
                    "participant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="document_versions",
                        to="studies.participant",
                    ),
                ),
            ],
            options={
                "ordering": ["participant", "number"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("participant", "number"), name="document_version_number_unique"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("number__gte", 1)),
                        name="document_version_number_positive",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("source", "inserted"), _negated=True),
                            ("from_message__isnull", False),
                            _connector="OR",
                        ),
                        name="document_version_inserted_has_message",
                    ),
                ],
            },
        ),
        migrations.RunPython(study_admins_get_document_permissions, migrations.RunPython.noop),
    ]
