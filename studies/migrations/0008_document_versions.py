import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("studies", "0007_rendered_replies")]

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
                    models.PositiveSmallIntegerField(help_text="Completed turns when it was saved."),
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
    ]
