from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("studies", "0008_document_versions")]

    operations = []
