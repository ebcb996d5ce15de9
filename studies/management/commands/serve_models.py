"""`manage.py serve_models`: start, health-check and restart the model servers, until Ctrl-C.

The servers come from ModelEndpoint rows whose server is llama_cpp or vllm (their launch
settings), or from --config FILE (YAML or JSON) on a host without the database. With neither,
the embedded SmolLM2 model is served on --port.
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_serving.servers import LaunchConfigError, ServerSpec, load_config, server_spec
from models_serving.supervisor import Supervisor
from studies.services.endpoints import endpoint_server_specs


class Command(BaseCommand):
    help = "Start the model servers described by the endpoints (or --config) and keep them up."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--config", type=Path, help="YAML or JSON file listing servers.")
        parser.add_argument(
            "--endpoint", action="append", default=[], help="Only this endpoint (repeatable)."
        )
        parser.add_argument("--log-dir", type=Path, help="One log per server; default: inherit.")
        parser.add_argument("--max-restarts", type=int, default=3)
        parser.add_argument("--ready-timeout", type=float, default=600.0)
        parser.add_argument(
            "--print-commands", action="store_true", help="Print what would run, then exit."
        )
        parser.add_argument("--port", type=int, default=8081, help="Embedded model's port.")
        parser.add_argument("--host", default="127.0.0.1", help="Embedded model's host.")
        parser.add_argument("--n-ctx", type=int, default=2048, help="Embedded model's context.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            specs = self._specs(options)
        except (LaunchConfigError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        if options["print_commands"]:
            for spec in specs:
                self.stdout.write(f"{spec.name} ({spec.base_url}): {' '.join(spec.command)}")
            return
        supervisor = Supervisor(
            specs,
            log_dir=options["log_dir"],
            ready_timeout=options["ready_timeout"],
            max_restarts=options["max_restarts"],
            say=self._say,
        )
        if supervisor.serve():
            raise CommandError("a model server could not be kept running")

    def _specs(self, options: dict[str, Any]) -> list[ServerSpec]:
        if options["config"] is not None:
            return load_config(options["config"])
        specs = endpoint_server_specs(options["endpoint"])
        if specs:
            return specs
        self._say("no endpoint names a server (llama_cpp or vllm): serving the embedded model")
        launch = {"host": options["host"], "port": options["port"], "n_ctx": options["n_ctx"]}
        return [server_spec(name="embedded", kind="llama_cpp", launch=launch)]

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
