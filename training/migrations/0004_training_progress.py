import django.core.validators
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
        migrations.AlterField(
            model_name="trainingrun",
            name="eval_tasks",
            field=models.PositiveSmallIntegerField(
                default=4,
                help_text="Held-out tasks in the benchmark (0 skips it; it serves the adapter "
                "with vLLM).",
                validators=[django.core.validators.MaxValueValidator(1000)],
            ),
        ),
    ]
