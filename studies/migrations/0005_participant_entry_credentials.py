from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0004_endpoint_replicas_launch_itl'),
    ]

    operations = [
        migrations.AddField(
            model_name='participant',
            name='resume_code_hash',
            field=models.CharField(blank=True, editable=False, help_text='Keyed hash (HMAC-SHA256) of the resume code; the code itself is not stored.', max_length=64),
        ),
    ]
