from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("studies", "0007_rendered_replies")]

    operations = []
