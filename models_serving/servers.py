"""Model servers from configuration: a ServerSpec per server, from a ModelEndpoint's launch
settings or from a YAML/JSON file for headless hosts, checked with errors that name the setting."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from models_serving.launch import EMBEDDED_ALIAS, llama_server_command, vllm_command

SERVER_KINDS = ("llama_cpp", "vllm")
LAUNCH_KEYS = {
    "llama_cpp": {"model", "host", "port", "n_ctx", "n_threads", "extra_args"},
    "vllm": {
        "model", "host", "port", "python", "tensor_parallel_size", "gpu_memory_utilization",
        "max_model_len", "lora_modules", "extra_args",
    },
}  # fmt: skip


class LaunchConfigError(ValueError):
    """A server description that cannot be launched; the message names the server and the key."""


@dataclass(frozen=True)
class ServerSpec:
    """One model server to start: what runs, and the base URL it answers on once ready."""

    name: str
    kind: str
    command: tuple[str, ...]
    base_url: str

    @property
    def health_url(self) -> str:
        return self.base_url + "/models"


class _Launch:
    """Typed reads of one server's launch settings, failing with the server and key named."""

    def __init__(self, name: str, kind: str, launch: Mapping[str, Any]) -> None:
        if not isinstance(launch, Mapping):
            raise LaunchConfigError(f"{name}: launch settings must be a mapping, got {launch!r}")
        unknown = sorted(set(launch) - LAUNCH_KEYS[kind])
        if unknown:
            allowed = ", ".join(sorted(LAUNCH_KEYS[kind]))
            raise LaunchConfigError(
                f"{name}: unknown {kind} setting(s) {', '.join(unknown)} (allowed: {allowed})"
            )
        self.name, self.launch = name, launch

    def fail(self, key: str, wanted: str) -> LaunchConfigError:
        return LaunchConfigError(f"{self.name}: {key} must be {wanted}, got {self.launch[key]!r}")

    def integer(self, key: str, default: int | None = None, minimum: int = 1) -> int | None:
        value = self.launch.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"an integer >= {minimum}")
        return value

    def fraction(self, key: str) -> float | None:
        value = self.launch.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise self.fail(key, "a number in (0, 1]")
        return float(value)

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.launch.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.fail(key, "a non-empty string")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.launch.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a list of strings")
        return value

    def string_map(self, key: str) -> dict[str, str]:
        value = self.launch.get(key, {})
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
        ):
            raise self.fail(key, "a mapping of names to paths")
        return dict(value)


def server_spec(
    *, name: str, kind: str, launch: Mapping[str, Any], served_model: str = "", base_url: str = ""
) -> ServerSpec:
    """Describe how to start one server; the port defaults to the one in base_url."""
    if kind not in SERVER_KINDS:
        raise LaunchConfigError(f"{name}: server must be one of {', '.join(SERVER_KINDS)}")
    read = _Launch(name, kind, launch)
    port = read.integer("port", urlsplit(base_url).port if base_url else None)
    if port is None:
        raise LaunchConfigError(f"{name}: port is required (or a base_url with a port)")
    host = read.text("host", "127.0.0.1") or "127.0.0.1"
    if kind == "llama_cpp":
        model = read.text("model")
        command = llama_server_command(
            port=port,
            host=host,
            model_path=Path(model) if model else None,
            n_ctx=read.integer("n_ctx", 2048) or 2048,
            n_threads=read.integer("n_threads"),
            model_alias=served_model or EMBEDDED_ALIAS,
            extra_args=read.strings("extra_args"),
        )
    else:
        model = read.text("model")
        if model is None:
            raise LaunchConfigError(f"{name}: model is required for vllm")
        command = vllm_command(
            model=model,
            port=port,
            host=host,
            served_model_name=served_model or model,
            tensor_parallel_size=read.integer("tensor_parallel_size", 1) or 1,
            gpu_memory_utilization=read.fraction("gpu_memory_utilization"),
            max_model_len=read.integer("max_model_len"),
            lora_modules=read.string_map("lora_modules"),
            extra_args=read.strings("extra_args"),
            python=read.text("python"),
        )
    # A server bound to every interface is still reached on loopback from here.
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return ServerSpec(name, kind, tuple(command), f"http://{local}:{port}/v1")


def load_config(path: Path) -> list[ServerSpec]:
    """Read servers from a YAML or JSON file: {servers: [{name, server, served_model?, ...}]}."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - PyYAML ships with the dev tools
            raise LaunchConfigError(f"{path}: PyYAML is not installed; use a .json file") from exc
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LaunchConfigError(f"{path}: not valid JSON ({exc})") from exc
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, list) or not servers:
        raise LaunchConfigError(f"{path}: expected a non-empty list under 'servers'")
    specs = []
    for i, entry in enumerate(servers, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise LaunchConfigError(f"{path}: server #{i} needs a name")
        settings = dict(entry)
        name, kind = settings.pop("name"), settings.pop("server", None)
        served_model = settings.pop("served_model", "")
        if not isinstance(served_model, str):
            raise LaunchConfigError(f"{path}: {name}: served_model must be a string")
        specs.append(server_spec(name=name, kind=kind, launch=settings, served_model=served_model))
    check_unique(specs, path)
    return specs


def check_unique(specs: Sequence[ServerSpec], source: object) -> None:
    """Fail when two servers share a name or a base URL."""
    for attribute in ("name", "base_url"):
        values = [getattr(spec, attribute) for spec in specs]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise LaunchConfigError(f"{source}: {attribute} used twice: {', '.join(twice)}")
