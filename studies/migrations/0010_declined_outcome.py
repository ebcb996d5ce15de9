import secrets

from django.db import migrations, models

import studies.models

MARKDOWN_HELP = "Markdown: paragraphs, lists, emphasis, headings, links. Raw HTML shows as text."


def give_each_study_its_own_code(apps, schema_editor):
    # AddField evaluates a callable default once for all existing rows; a code is per study.
    Study = apps.get_model("studies", "Study")
    for study in Study.objects.only("pk"):
        Study.objects.filter(pk=study.pk).update(declined_code=secrets.token_hex(4).upper())


class Migration(migrations.Migration):
    dependencies = [("studies", "0009_reply_continuation")]

    operations = [
        migrations.RemoveConstraint(
            model_name="participant",
            name="participant_past_consent_has_condition",
        ),
        migrations.RemoveConstraint(
            model_name="participant",
            name="participant_past_brief_has_task",
        ),
        migrations.AddField(
            model_name="study",
            name="declined_code",
            field=models.CharField(
                default=studies.models._completion_code,
                help_text="Shown to those who do not consent (Prolific asks for a no-consent code).",
                max_length=40,
            ),
        ),
        migrations.RunPython(give_each_study_its_own_code, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="participant",
            name="outcome",
            field=models.CharField(
                blank=True,
                choices=[
                    ("completed", "Completed"),
                    ("screened_out", "Screened Out"),
                    ("failed_attention", "Failed Attention"),
                    ("timed_out", "Timed Out"),
                    ("returned", "Returned"),
                    ("abandoned", "Abandoned"),
                    ("declined", "Declined"),
                ],
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="participant",
            name="status",
            field=models.CharField(
                choices=[
                    ("entered", "Entered"),
                    ("consented", "Consented"),
                    ("briefed", "Briefed"),
                    ("chatting", "Chatting"),
                    ("rating_due", "Rating Due"),
                    ("final", "Final"),
                    ("completed", "Completed"),
                    ("abandoned", "Abandoned"),
                    ("excluded", "Excluded"),
                    ("returned", "Returned"),
                    ("timed_out", "Timed Out"),
                    ("declined", "Declined"),
                ],
                default="entered",
                max_length=12,
            ),
        ),
        migrations.AddConstraint(
            model_name="participant",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    (
                        "status__in",
                        ["entered", "declined", "abandoned", "excluded", "returned", "timed_out"],
                    ),
                    ("condition__isnull", False),
                    _connector="OR",
                ),
                name="participant_past_consent_has_condition",
            ),
        ),
        migrations.AddConstraint(
            model_name="participant",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    (
                        "status__in",
                        [
                            "entered",
                            "declined",
                            "consented",
                            "abandoned",
                            "excluded",
                            "returned",
                            "timed_out",
                        ],
                    ),
                    ("task__isnull", False),
                    _connector="OR",
                ),
                name="participant_past_brief_has_task",
            ),
        ),
        migrations.AlterField(
            model_name="study",
            name="consent_text",
            field=models.TextField(help_text=MARKDOWN_HELP),
        ),
        migrations.AlterField(
            model_name="study",
            name="instructions",
            field=models.TextField(blank=True, help_text=MARKDOWN_HELP),
        ),
        migrations.AlterField(
            model_name="task",
            name="brief",
            field=models.TextField(blank=True, help_text=MARKDOWN_HELP),
        ),
    ]
