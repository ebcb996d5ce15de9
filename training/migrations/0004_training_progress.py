from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("training", "0003_job_cancel")]

    operations = [
        migrations.AddField(
            model_name="trainingstage",
            name="curve",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="Per training step: {step, loss, and for DPO rewards/margins, ...}.",
            ),
        ),
    ]
