"""manage.py score_study <study-slug> --out DIR: the multiturn-aware reward of every finished reply
of a study's completed participants (reply_rewards.csv, reply_rewards_settings.json)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from studies.models import Condition, ModelEndpoint, Study
from studies.services.endpoints import endpoint_client_spec
from training.pipeline.settings import RewardSettings, Role, Roles, SamplingSettings
from training.services.benchmarks import json_mode_for
from training.services.study_rewards import CSV_NAME, SETTINGS_NAME, score_study


class Command(BaseCommand):
    help = "Score each finished reply of a study's participants by forward sampling (MR)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--include-pilot", action="store_true")
        parser.add_argument(
            "--endpoint",
            default="",
            help="Endpoint name for the policy and every role not named below "
            "(default: the first active arm's endpoint).",
        )
        for role in ("user", "judge", "extractor"):
            parser.add_argument(f"--{role}-endpoint", default="", help=f"Endpoint for the {role}.")
        parser.add_argument("--window", type=int, default=2, help="w: turns sampled ahead.")
        parser.add_argument("--samples", type=int, default=2, help="S: rollouts per reply.")
        parser.add_argument("--max-tokens", type=int, default=256, help="Per call of every role.")
        parser.add_argument(
            "--token-lambda", type=float, default=None, help="Default: the paper's 1e-4."
        )
        parser.add_argument("--concurrency", type=int, default=4, help="Participants at once.")
        parser.add_argument(
            "--replies",
            type=int,
            default=None,
            help="Score only each participant's first N replies (a quick, cheap first look; "
            "every reply's prompt holds the chat so far, so later replies cost more).",
        )

    def handle(self, *args, slug: str, out: Path, **options) -> None:
        if options["replies"] is not None and options["replies"] < 1:
            raise CommandError("--replies must be at least 1")
        study = Study.objects.filter(slug=slug).first()
        if study is None:
            raise CommandError(f"no study {slug!r}")
        default = self._endpoint(options["endpoint"]) or self._first_arm_endpoint(study)
        params = {"max_tokens": options["max_tokens"], "temperature": 0.7}

        def role(name: str) -> Role:
            endpoint = self._endpoint(options.get(f"{name}_endpoint", "")) or default
            return Role(endpoint_client_spec(endpoint), dict(params), json_mode_for(endpoint))

        roles = Roles(
            policy=role("policy"),
            user=role("user"),
            judge=role("judge"),
            extractor=role("extractor"),
        )
        try:
            sampling = SamplingSettings(window=options["window"], samples=options["samples"])
            path = score_study(
                study,
                roles=roles,
                sampling=sampling,
                reward=RewardSettings(token_lambda=options["token_lambda"]),
                out_dir=out,
                include_pilot=options["include_pilot"],
                progress=lambda done, total: self.stdout.write(f"scored {done}/{total} replies"),
                concurrency=options["concurrency"],
                max_replies=options["replies"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Written to {path.parent}/ ({CSV_NAME}, {SETTINGS_NAME})")

    def _endpoint(self, name: str) -> ModelEndpoint | None:
        if not name:
            return None
        endpoint = ModelEndpoint.objects.filter(name=name).first()
        if endpoint is None:
            raise CommandError(f"no endpoint named {name!r}")
        return endpoint

    def _first_arm_endpoint(self, study: Study) -> ModelEndpoint:
        condition = (
            Condition.objects.filter(study=study, is_active=True)
            .select_related("endpoint")
            .order_by("id")
            .first()
        )
        if condition is None:
            raise CommandError(f"study {study.slug!r} has no active arm: name an --endpoint")
        return condition.endpoint
