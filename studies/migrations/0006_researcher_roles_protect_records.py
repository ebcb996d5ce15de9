from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0005_participant_entry_credentials'),
    ]

    operations = []
