import django.db.models.deletion
import studies.validators
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

# The researcher roles. Viewers see studies, participants' progress, the monitor and training
# runs, but not what participants wrote (no view_transcripts): a viewer can watch recruitment
# without reading personal data. Operators also read transcripts, run studies and export.
# Study admins get every permission of the studies and training apps (configuration, endpoints,
# training). User and group management stays with superusers.
VIEWER = [
    ('studies', 'view_study'), ('studies', 'view_participant'), ('studies', 'view_studyversion'),
    ('studies', 'view_modelendpoint'), ('training', 'view_trainingrun'),
    ('training', 'view_checkpoint'),
]
OPERATOR = VIEWER + [
    ('studies', 'view_transcripts'), ('studies', 'run_study'), ('studies', 'export_study'),
]
ROLES = ('Study viewer', 'Study operator', 'Study admin')


def researcher_groups_create(apps, schema_editor):
    """Create the three groups; permissions first, since post_migrate has not run yet."""
    using = schema_editor.connection.alias
    for config in apps.get_app_configs():
        # Historical app configs have no models_module, which create_permissions requires.
        stub = getattr(config, 'models_module', None) is None
        if stub:
            config.models_module = True
        create_permissions(config, verbosity=0, using=using, apps=apps)
        if stub:
            config.models_module = None
    Group = apps.get_model('auth', 'Group')
    Permission = apps.get_model('auth', 'Permission')

    def perms(pairs):
        return [Permission.objects.using(using).get(content_type__app_label=app, codename=code)
                for app, code in pairs]

    admin = Permission.objects.using(using).filter(
        content_type__app_label__in=['studies', 'training']
    )
    for name, granted in zip(ROLES, [perms(VIEWER), perms(OPERATOR), list(admin)]):
        group, _ = Group.objects.using(using).get_or_create(name=name)
        group.permissions.set(granted)


def researcher_groups_remove(apps, schema_editor):
    Group = apps.get_model('auth', 'Group')
    Group.objects.using(schema_editor.connection.alias).filter(name__in=ROLES).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('studies', '0005_participant_entry_credentials'),
        ('training', '0002_protect_records'),
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
        migrations.AlterModelOptions(
            name='study',
            options={'permissions': [('view_transcripts', 'Can read transcripts, intent answers and final documents'), ('run_study', 'Can run a study: go live, pause, resume, close, exclude, pilot'), ('export_study', "Can export a study's data and build its analysis report")], 'verbose_name_plural': 'studies'},
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
        migrations.RunPython(researcher_groups_create, researcher_groups_remove),
    ]
