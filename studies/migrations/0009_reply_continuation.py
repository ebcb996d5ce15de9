import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("studies", "0008_document_versions")]

    operations = [
        migrations.RemoveConstraint(
            model_name="message",
            name="message_one_complete_per_turn_role",
        ),
        migrations.AddField(
            model_name="condition",
            name="allow_continue",
            field=models.BooleanField(
                default=True,
                help_text="Participants may ask a reply cut off at the token limit to continue.",
            ),
        ),
        migrations.AddField(
            model_name="message",
            name="continuation_of",
            field=models.ForeignKey(
                blank=True,
                help_text="The reply this one continues after it was cut off at the token limit.",
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="continuations",
                to="studies.message",
            ),
        ),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(
                condition=models.Q(("continuation_of__isnull", True), ("status", "complete")),
                fields=("participant", "turn_index", "role"),
                name="message_one_complete_per_turn_role",
            ),
        ),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status", "complete")),
                fields=("continuation_of",),
                name="message_one_complete_continuation",
            ),
        ),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("continuation_of__isnull", True), ("role", "assistant"), _connector="OR"
                ),
                name="message_continuation_is_assistant",
            ),
        ),
    ]
