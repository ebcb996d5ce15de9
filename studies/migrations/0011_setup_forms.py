from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("studies", "0010_declined_outcome")]

    operations = []
