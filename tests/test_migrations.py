import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from studies.models import Study as StudyModel


@pytest.mark.django_db
def test_the_models_and_the_migrations_agree():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_migration_0010_gives_each_existing_study_its_own_declined_code():
    executor = MigrationExecutor(connection)
    before = [("studies", "0009_reply_continuation")]
    executor.migrate(before)
    Study = executor.loader.project_state(before).apps.get_model("studies", "Study")
    for slug in ("first", "second", "third"):
        Study.objects.create(slug=slug, title=slug, consent_text="Consent.")

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    codes = [s.declined_code for s in StudyModel.objects.order_by("slug")]
    assert all(len(code) == 8 for code in codes)
    assert len(set(codes)) == 3
