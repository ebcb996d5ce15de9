from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("training", "0002_protect_records")]

    operations = []
