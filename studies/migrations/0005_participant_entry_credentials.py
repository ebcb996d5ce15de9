from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0004_endpoint_replicas_launch_itl'),
    ]

    operations = []
