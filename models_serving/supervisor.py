"""Start, watch, restart and stop a set of model servers (plain Python, no Django).

Each server runs in its own process group, so vLLM's worker processes stop with it and a Ctrl-C
at the terminal reaches only the supervisor, which then stops the servers in order.
A crashed server is restarted after a growing delay; past max_restarts the supervisor stops the
rest and exits non-zero, leaving the next restart to systemd, compose or whoever started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from models_serving.launch import ServerProcess, wait_until_ready
from models_serving.servers import ServerSpec


class SupervisorError(RuntimeError):
    """A server could not be started or kept running."""


@dataclass
class _Managed:
    spec: ServerSpec
    proc: ServerProcess | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None


class Supervisor:
    """Keep a set of model servers running until told to stop."""

    def __init__(
        self,
        specs: Sequence[ServerSpec],
        *,
        log_dir: Path | None = None,
        ready_timeout: float = 300,
        max_restarts: int = 3,
        backoff: float = 2.0,
        backoff_max: float = 60.0,
        stable_after: float = 600.0,
        stop_timeout: float = 20.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.servers = [_Managed(spec) for spec in specs]
        self.log_dir = log_dir
        self.ready_timeout = ready_timeout
        self.max_restarts = max_restarts
        self.backoff, self.backoff_max = backoff, backoff_max
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.say = say

    def start(self) -> None:
        """Start every server, then wait until each answers GET /models; stop all on failure."""
        try:
            for server in self.servers:
                self._spawn(server)
            for server in self.servers:
                self._wait_ready(server)
        except BaseException:
            self.stop()
            raise

    def poll(self, now: float | None = None) -> None:
        """One round of watching: schedule restarts for exited servers, run those that are due."""
        now = time.monotonic() if now is None else now
        for server in self.servers:
            if server.restart_at is not None:
                if now >= server.restart_at:
                    self._restart(server)
                continue
            if server.proc is None or server.proc.poll() is None:
                continue
            if now - server.started_at >= self.stable_after:
                server.restarts = 0
            self._schedule(server, f"exited with code {server.proc.returncode}", now)

    def stop(self) -> None:
        """Terminate every server (its whole process group); kill what is left after a timeout."""
        started = [s.proc for s in self.servers if s.proc is not None]
        running = [proc for proc in started if proc.poll() is None]
        # Exited leaders may have left workers behind in their group (vLLM does); signal those too.
        for proc in started:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for server in self.servers:
            if server.proc is not None and server.proc in running:
                self.say(f"{server.spec.name}: stopped")

    def serve(self, interval: float = 1.0) -> int:
        """Start all, watch until SIGINT or SIGTERM, then stop all; the exit status to return."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.start()
            while True:
                self.poll()
                time.sleep(interval)
        except KeyboardInterrupt:
            return 0
        except SupervisorError as exc:
            self.say(f"error: {exc}")
            return 1
        finally:
            self.stop()
            signal.signal(signal.SIGTERM, previous)

    def _spawn(self, server: _Managed) -> None:
        spec = server.spec
        log_path = self.log_dir / f"{spec.name}.log" if self.log_dir else None
        if log_path is None:
            server.proc = ServerProcess(list(spec.command), start_new_session=True)
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log:
                server.proc = ServerProcess(
                    list(spec.command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            server.proc.log_path = log_path
        server.started_at = time.monotonic()
        where = f" (log {log_path})" if log_path else ""
        self.say(f"{spec.name}: starting {spec.kind} server, pid {server.proc.pid}{where}")

    def _wait_ready(self, server: _Managed) -> None:
        try:
            wait_until_ready(server.spec.base_url, timeout=self.ready_timeout, proc=server.proc)
        except RuntimeError as exc:
            raise SupervisorError(f"{server.spec.name}: {exc}") from exc
        self.say(f"{server.spec.name}: listening at {server.spec.base_url}")

    def _schedule(self, server: _Managed, why: str, now: float) -> None:
        if server.restarts >= self.max_restarts:
            raise SupervisorError(
                f"{server.spec.name}: {why}; gave up after {server.restarts} restart(s)"
            )
        delay = min(self.backoff * 2**server.restarts, self.backoff_max)
        server.restarts += 1
        server.restart_at = now + delay
        self.say(
            f"{server.spec.name}: {why}; restart {server.restarts}/{self.max_restarts}"
            f" in {delay:g}s"
        )

    def _restart(self, server: _Managed) -> None:
        server.restart_at = None
        if server.proc is not None:
            _signal_group(server.proc, signal.SIGKILL)  # orphaned workers of the crashed one
        self._spawn(server)
        try:
            self._wait_ready(server)
        except SupervisorError as exc:
            if server.proc is not None:
                _stop_one(server.proc, self.stop_timeout)
            self._schedule(server, f"not ready ({exc})", time.monotonic())


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the process group the server leads; fall back to the process alone."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        if proc.poll() is None:
            proc.send_signal(signum)


def _stop_one(proc: subprocess.Popen[bytes], timeout: float) -> None:
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
