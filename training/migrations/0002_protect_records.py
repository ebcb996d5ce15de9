import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0004_endpoint_replicas_launch_itl'),
        ('training', '0001_initial'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='trainingrun',
            options={'ordering': ['-created_at', '-id'], 'permissions': [('run_training', 'Can start runs, retry stages and add a checkpoint to a study')]},
        ),
        migrations.AlterField(
            model_name='checkpoint',
            name='endpoint',
            field=models.ForeignKey(blank=True, help_text='The endpoint that serves this adapter.', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='checkpoints', to='studies.modelendpoint'),
        ),
        migrations.AlterField(
            model_name='checkpoint',
            name='run',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='checkpoints', to='training.trainingrun'),
        ),
        migrations.AlterField(
            model_name='trainingstage',
            name='run',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='stage_rows', to='training.trainingrun'),
        ),
    ]
