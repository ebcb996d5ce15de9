from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("studies", "0009_reply_continuation")]

    operations = []
