from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("training", "0003_job_cancel")]

    operations = []
