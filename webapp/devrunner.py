"""Run the demo or the tests on embedded services, with one command and nothing installed.

    python -m webapp.devrunner demo                    # web + worker + model server; prints links
    python -m webapp.devrunner test [PYTEST ARGS...]   # the test suite
    python -m webapp.devrunner run [--model] -- CMD... # any command with the services' environment

Where DATABASE_URL, REDIS_URL or MODEL_BASE_URL are set they are used as they are; otherwise an
embedded PostgreSQL (data in .local/pgdata), Redis and llama.cpp server are started, and stopped
again on exit, Ctrl-C or SIGTERM. Plain Python: Django only runs in child processes.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from webapp.demoenv import remove_demo_env, write_demo_env
from webapp.devservices import (
    LOCAL,
    ROOT,
    Child,
    become_subreaper,
    free_port,
    log_tail,
    spawn,
    start_postgres,
    start_redis,
)

LOGS = LOCAL / "logs"
DEMO_STUDY = "demo"
# Plain http on localhost: secure cookies and HTTPS redirects would lock the browser out.
LOCAL_HTTP_ENV = {
    "DJANGO_DEBUG": "true",
    "DJANGO_SECURE_COOKIES": "false",
    "DJANGO_SECURE_SSL_REDIRECT": "false",
    "DJANGO_HSTS_SECONDS": "0",
}

# What manage.py in another terminal needs to reach the running demo (webapp/demoenv.py).
DEMO_ENV_FILE = LOCAL / "demo.env"
DEMO_ENV_NAMES = (
    "DATABASE_URL",
    "REDIS_URL",
    "MODEL_BASE_URL",
    "MODEL_NAME",
    "SITE_URL",
    "DJANGO_SECRET_KEY",
    "DJANGO_SECRET_KEY_FILE",
    *LOCAL_HTTP_ENV,
)

Env = dict[str, str]


def say(message: str) -> None:
    """Print one progress line of the runner itself."""
    print(f"devrunner | {message}", flush=True)


def start_services(stack: ExitStack, env: Env, *, model: bool = False) -> list[Child]:
    """Fill DATABASE_URL, REDIS_URL (and the model endpoint) in env, starting what is missing."""
    watched: list[Child] = []
    if env.get("DATABASE_URL"):
        say("postgres: using DATABASE_URL from the environment")
    else:
        started = time.monotonic()
        postgres = start_postgres(LOCAL / "pgdata")
        stack.callback(postgres.stop)
        env["DATABASE_URL"] = postgres.url
        took = time.monotonic() - started
        say(f"postgres: embedded, socket in {postgres.socket_dir} ({took:.1f}s)")
    if env.get("REDIS_URL"):
        say("redis: using REDIS_URL from the environment")
    else:
        redis, env["REDIS_URL"] = start_redis(LOCAL / "redis", LOGS / "redis.log")
        stack.callback(redis.stop)
        watched.append(redis)
        say(f"redis: embedded at {env['REDIS_URL']}")
    if model:
        watched += start_model_server(stack, env)
    return watched


def start_model_server(stack: ExitStack, env: Env) -> list[Child]:
    """Start the embedded llama.cpp server unless MODEL_BASE_URL points at one already."""
    if env.get("MODEL_BASE_URL"):
        say(f"model: using {env['MODEL_BASE_URL']} ({env.get('MODEL_NAME', 'default name')})")
        return []
    from models_serving.launch import EMBEDDED_ALIAS, llama_server_command, wait_until_ready

    started = time.monotonic()
    port = free_port(8081)
    # SmolLM2 takes 8192 tokens; at llama.cpp's 2048 a pilot's eight-turn chat outgrew the window
    # ("Requested tokens (2119) exceed context window") and its replies failed.
    command = llama_server_command(port=port, n_ctx=8192)
    server = spawn("model", command, log_path=LOGS / "model.log", env=env)
    stack.callback(server.stop)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_ready(base_url, timeout=180, proc=server.proc)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{server.log_path}:\n{log_tail(server.log_path)}") from exc
    env["MODEL_BASE_URL"] = base_url
    env["MODEL_NAME"] = EMBEDDED_ALIAS
    took = time.monotonic() - started
    say(f"model: embedded {EMBEDDED_ALIAS} at {base_url} ({took:.1f}s)")
    return [server]


def secret_key_file() -> Path:
    """Return .local/secret_key, generating a key the first time."""
    path = LOCAL / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as key:
        key.write(secrets.token_urlsafe(50))
    return path


def manage(env: Env, *args: str, log_name: str | None = None) -> str:
    """Run `manage.py args` to completion; return its output, raise with its tail on failure."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if log_name:
        LOGS.mkdir(parents=True, exist_ok=True)
        (LOGS / f"{log_name}.log").write_text(result.stdout)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-30:])
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{tail}")
    return result.stdout


def wait_for_http(url: str, child: Child, timeout: float = 60) -> None:
    """Poll url until it answers 200, failing early when child exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            code = child.proc.returncode
            raise RuntimeError(f"{child.name} exited with code {code}:\n{log_tail(child.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s:\n{log_tail(child.log_path)}")


def watch(children: Sequence[Child]) -> int:
    """Block until a child exits; report it and return 1 (Ctrl-C raises KeyboardInterrupt)."""
    while True:
        for child in children:
            code = child.proc.poll()
            if code is not None:
                say(f"{child.name} exited with code {code}; stopping everything.")
                print(f"last lines of {child.log_path}:\n{log_tail(child.log_path)}", flush=True)
                return 1
        time.sleep(0.5)


def demo_env(env: Env) -> None:
    """Local-http settings, a persistent secret key and unbuffered child output, unless set."""
    for name, value in LOCAL_HTTP_ENV.items():
        env.setdefault(name, value)
    if not env.get("DJANGO_SECRET_KEY") and not env.get("DJANGO_SECRET_KEY_FILE"):
        env["DJANGO_SECRET_KEY_FILE"] = str(secret_key_file())
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Set when started as `manage.py demo`; the demo's own processes get everything directly.
    env.pop("DJANGO_DEMO_ENV_FILE", None)


def leave_demo_env(stack: ExitStack, env: Env) -> None:
    """Write DEMO_ENV_FILE for manage.py in other terminals; remove it when the demo stops."""
    values = {name: env[name] for name in DEMO_ENV_NAMES if env.get(name)}
    write_demo_env(DEMO_ENV_FILE, values, pid=os.getpid())
    stack.callback(remove_demo_env, DEMO_ENV_FILE, pid=os.getpid())


def prepare_database(env: Env) -> str:
    """Migrate, seed the demo study, and (re)create the admin; return the admin's password."""
    manage(env, "migrate", "--noinput", log_name="migrate")
    say(f"database migrated (output in {LOGS.relative_to(ROOT)}/migrate.log)")
    for line in manage(env, "seed_demo").splitlines():
        say(f"seed_demo: {line}")
    admin = manage(env, "ensure_admin").splitlines()
    return next(line.split(":", 1)[1].strip() for line in admin if line.startswith("password:"))


def web_processes(env: Env) -> int:
    """uvicorn worker processes (WEB_PROCESSES, default 2), as in production (docker/compose.yaml).

    Each holds a connection pool of up to DATABASE_POOL_MAX_SIZE (10): 2 x 10 plus the Celery
    worker's few fit the embedded PostgreSQL's max_connections (initdb's default, 100).
    """
    processes = int(env.get("WEB_PROCESSES") or 2)
    if processes < 1:
        raise RuntimeError(f"WEB_PROCESSES must be at least 1, not {processes}")
    return processes


METRICS_FILE = re.compile(r"(counter|gauge_[a-z]+|histogram|summary)_\d+\.db")


def metrics_dir(env: Env) -> None:
    """A prometheus_client multiprocess folder without stale figures; /metrics adds up the web
    processes."""
    folder = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or LOCAL / "prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's own files (counter_<pid>.db, gauge_livesum_<pid>.db, ...): the
    # folder may be one the developer named, with other things in it.
    for stale in folder.iterdir():
        if stale.is_file() and METRICS_FILE.fullmatch(stale.name):
            stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def start_web_and_worker(stack: ExitStack, env: Env) -> tuple[str, list[Child]]:
    """Start uvicorn and the Celery workers; return the site's base URL once it answers."""
    wanted = int(env.get("DEMO_PORT") or 8000)
    port = free_port(wanted)
    if port != wanted:
        say(f"port {wanted} is busy; the web server uses {port}")
    web_command = ["-m", "uvicorn", "webapp.asgi:application", "--host", "127.0.0.1"]
    web_command += ["--workers", str(web_processes(env))]
    metrics_dir(env)
    web = spawn(
        "web", [sys.executable, *web_command, "--port", str(port)],
        log_path=LOGS / "web.log", env=env, echo=True,
    )  # fmt: skip
    stack.callback(web.stop)
    env["SITE_URL"] = f"http://127.0.0.1:{port}"
    workers = [start_worker(stack, env, name, queues) for name, queues in WORKER_QUEUES]
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", web)
    return base, [web, *workers]


# One worker per kind of work (settings.CELERY_TASK_ROUTES), each running one task at a time, so
# a pilot, a report and a training stage run side by side and none holds up the housekeeping
# worker, which also runs beat. Most of the time they wait on the model server or the database;
# on two cores the pilot's and training's model calls share the CPU with the web processes.
WORKER_QUEUES = (
    ("housekeeping", "housekeeping"),
    ("reports", "reports"),
    ("pilots", "pilots"),
    ("training", "training,gpu"),
)


def worker_command(name: str, queues: str) -> list[str]:
    """`celery worker` for one queue group, with beat in the housekeeping worker."""
    command = [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-l", "info"]
    command += ["-Q", queues, "-n", f"{name}@%h"]
    if name == "housekeeping":
        # Two at once: the recovery tasks wait up to a second or two for the workers' replies.
        command += [
            "--concurrency",
            "2",
            "--beat",
            "--schedule",
            str(LOCAL / "celerybeat-schedule"),
        ]
    else:
        command += ["--concurrency", "1"]
    return command


def start_worker(stack: ExitStack, env: Env, name: str, queues: str) -> Child:
    """Start one Celery worker; its output goes to .local/logs/worker-NAME.log and here."""
    # As in docker/compose.yaml: Celery closes connections around every task, so a pool in the
    # worker would only open DATABASE_POOL_MIN_SIZE connections per task.
    worker = spawn(
        f"worker-{name}", worker_command(name, queues),
        log_path=LOGS / f"worker-{name}.log", env={**env, "DATABASE_POOL": "false"}, echo=True,
    )  # fmt: skip
    stack.callback(worker.stop)
    return worker


def run_demo(stack: ExitStack, env: Env, args: Sequence[str]) -> int:
    """Start services, migrate, seed, create the admin, then web + worker until Ctrl-C."""
    started = time.monotonic()
    demo_env(env)
    children = start_services(stack, env, model=True)
    password = prepare_database(env)
    base, web_and_worker = start_web_and_worker(stack, env)
    leave_demo_env(stack, env)
    say(f"ready in {time.monotonic() - started:.1f}s")
    print(
        "\n"
        f"  Participant link (a new participant each run):\n"
        f"    {base}/s/{DEMO_STUDY}/?pid=demo-{secrets.token_hex(3)}\n"
        f"  Admin: {base}/admin/  username: admin  password: {password}\n"
        f"  Web and worker output is shown here, prefixed; all logs are in {LOGS}/\n"
        f"  In another terminal, `python manage.py ...` uses this demo (.venv/bin/activate first)\n"
        f"  Ctrl-C stops everything.\n",
        flush=True,
    )
    return watch([*children, *web_and_worker])


def run_foreground(stack: ExitStack, env: Env, command: Sequence[str]) -> int:
    """Run command in its own process group with our terminal; return its exit status."""
    proc = subprocess.Popen(list(command), cwd=ROOT, env=env, start_new_session=True)
    child = Child(Path(command[0]).name, proc)
    # Registered so that anything it leaves behind in its group is stopped with the services.
    stack.callback(child.stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        child.stop(signal.SIGINT, timeout=30)
        return proc.returncode if proc.returncode is not None else 130


def run_tests(stack: ExitStack, env: Env, args: Sequence[str]) -> int:
    """Start the services (tests start their own model servers) and run pytest with args."""
    start_services(stack, env)
    return run_foreground(stack, env, [sys.executable, "-m", "pytest", *args])


def run_command(stack: ExitStack, env: Env, args: Sequence[str]) -> int:
    """Start the services (and, with --model, the model server) and run any command."""
    args = list(args)
    with_model = "--model" in args[:1]
    args = args[1:] if with_model else args
    args = args[1:] if args[:1] == ["--"] else args
    if not args:
        raise SystemExit("usage: python -m webapp.devrunner run [--model] -- COMMAND [ARGS...]")
    start_services(stack, env, model=with_model)
    return run_foreground(stack, env, args)


COMMANDS: dict[str, Callable[[ExitStack, Env, Sequence[str]], int]] = {
    "demo": run_demo,
    "test": run_tests,
    "run": run_command,
}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def reap_orphans() -> None:
    """Reap exited descendants we adopted as a subreaper (postmasters that tests stopped)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; stop everything it started however it ends."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[0]
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    # Also SIGINT: a shell starts background jobs with it ignored, and then Python keeps it so.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    become_subreaper()
    stack = ExitStack()
    try:
        return COMMANDS[command](stack, dict(os.environ), argv[1:])
    except KeyboardInterrupt:
        print(flush=True)
        say("interrupted")
        return 0 if command == "demo" else 130
    except (RuntimeError, OSError) as exc:
        say(f"error: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave servers behind.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        say("stopping what it started")
        stack.close()
        reap_orphans()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    raise SystemExit(main())
