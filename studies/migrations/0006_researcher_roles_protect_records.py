import studies.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0005_participant_entry_credentials'),
    ]

    operations = [
        migrations.AlterField(
            model_name='modelendpoint',
            name='api_key_env',
            field=models.CharField(blank=True, help_text='Name of the environment variable holding the key: MODEL_API_KEY_... or one listed in MODEL_API_KEY_ENV_ALLOWED.', max_length=100, validators=[studies.validators.validate_api_key_env]),
        ),
    ]
