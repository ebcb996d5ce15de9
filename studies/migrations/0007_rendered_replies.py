from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("studies", "0006_researcher_roles_protect_records")]

    operations = []
