"""Seed the fault-injection study on a migrated database; print what the participants need (JSON).

Run as a child with the harness's DATABASE_URL: python -m tests.faults.seed --model-url URL
"""

import argparse
import json
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-url", required=True)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--read-timeout", type=float, default=3.0)
    parser.add_argument("--rating-every", type=int, default=3)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    import django

    django.setup()
    from studies.models import Condition, Study
    from studies.services.access import access_link
    from tests.factories import ModelEndpointFactory, three_arm_study

    endpoint = ModelEndpointFactory(
        name="faults-fake",
        base_url=args.model_url,
        served_model="fake",
        connect_timeout=2.0,
        read_timeout=args.read_timeout,
    )
    study = three_arm_study(
        endpoint=endpoint,
        slug="faults",
        status=Study.Status.DRAFT,  # a pilot link works before the study goes live
        min_turns=2,
        rating_every=args.rating_every,
    )
    Condition.objects.filter(study=study).update(generation_params={"max_tokens": args.tokens})
    tasks = {
        str(t.pk): [t.get_document_type_display().lower(), t.topic, t.brief]
        for t in study.tasks.all()
    }
    plan = {"slug": study.slug, "entry_path": access_link(study, "pilot"), "tasks": tasks}
    print(json.dumps(plan))


if __name__ == "__main__":
    main()
