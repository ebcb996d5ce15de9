"""The benchmark's child processes: the stamped fake model and the web processes (uvicorn).

Each child runs in its own process group, gets SIGTERM if the benchmark dies (even by SIGKILL),
and is stopped group-wide at the end; its output goes to a log kept only on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.stream.config import ROOT, Config


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the benchmark dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Children:
    """Subprocesses in their own process groups, stopped (group-wide) on exit."""

    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def tail(self, name: str, lines: int = 20) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Poll until something listens on 127.0.0.1:port; fail early when proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g}s")


def start_fake(children: Children, cfg: Config, env: dict[str, str]) -> tuple[str, int]:
    """Start the stamped fake model; return its base URL (ending in /v1) and pid."""
    port = free_port()
    # Each request names its own token gap (fake_delay_ms); the server's default is unused.
    command = [sys.executable, "-m", "benchmarks.stream.stamped_model", "--port", str(port),
               "--tokens", str(cfg.tokens)]  # fmt: skip
    proc = children.start("fake", command, env)
    wait_for_port(port, proc, timeout=30)
    return f"http://127.0.0.1:{port}/v1", proc.pid


def start_web(children: Children, env: dict[str, str], name: str = "web") -> tuple[str, int]:
    """Start one uvicorn web process; return its host:port and pid once /healthz answers."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "webapp.asgi:application", "--host",
               "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = children.start(name, command, env)
    wait_for_port(port, proc, timeout=60)
    response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"/healthz answered {response.status_code}")
    return f"127.0.0.1:{port}", proc.pid
