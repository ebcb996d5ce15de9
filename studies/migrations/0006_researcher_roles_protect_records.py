import django.db.models.deletion
import studies.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0005_participant_entry_credentials'),
    ]

    operations = [
        migrations.CreateModel(
            name='ErasureRecord',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('study_slug', models.SlugField()),
                ('participant_pseudonym', models.CharField(help_text='Keyed hash of the recruiting id, as in exports.', max_length=40)),
                ('requested_by', models.CharField(max_length=150)),
                ('reason', models.TextField()),
                ('erased_rows', models.JSONField(default=dict, help_text='Rows deleted, by table.')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['-created_at', '-id'],
                'constraints': [models.CheckConstraint(condition=models.Q(models.Q(('requested_by', ''), _negated=True), models.Q(('reason', ''), _negated=True)), name='erasure_says_who_and_why')],
            },
        ),
        migrations.AlterField(
            model_name='event',
            name='participant',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='studies.participant'),
        ),
        migrations.AlterField(
            model_name='finalsurvey',
            name='participant',
            field=models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='final_survey', to='studies.participant'),
        ),
        migrations.AlterField(
            model_name='intentanswer',
            name='participant',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='intent_answers', to='studies.participant'),
        ),
        migrations.AlterField(
            model_name='message',
            name='participant',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='messages', to='studies.participant'),
        ),
        migrations.AlterField(
            model_name='modelendpoint',
            name='api_key_env',
            field=models.CharField(blank=True, help_text='Name of the environment variable holding the key: MODEL_API_KEY_... or one listed in MODEL_API_KEY_ENV_ALLOWED.', max_length=100, validators=[studies.validators.validate_api_key_env]),
        ),
        migrations.AlterField(
            model_name='turnrating',
            name='participant',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='ratings', to='studies.participant'),
        ),
    ]
