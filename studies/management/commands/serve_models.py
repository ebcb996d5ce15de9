"""`manage.py serve_models`: serve the embedded model (llama.cpp, CPU) in the foreground."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_serving import launch


class Command(BaseCommand):
    help = "Serve the embedded SmolLM2 GGUF with llama_cpp.server until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8081)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--n-ctx", type=int, default=2048)
        parser.add_argument("--n-threads", type=int, default=None)
        parser.add_argument("--model-path", type=Path, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        argv = ["--port", str(options["port"]), "--host", options["host"]]
        argv += ["--n-ctx", str(options["n_ctx"])]
        if options["n_threads"] is not None:
            argv += ["--n-threads", str(options["n_threads"])]
        if options["model_path"] is not None:
            argv += ["--model-path", str(options["model_path"])]
        code = launch.main(argv)
        if code:
            raise CommandError(f"the model server exited with code {code}")
