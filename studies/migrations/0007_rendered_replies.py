from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("studies", "0006_researcher_roles_protect_records")]

    operations = [
        migrations.AddField(
            model_name="message",
            name="html",
            field=models.TextField(blank=True, editable=False),
        ),
    ]
