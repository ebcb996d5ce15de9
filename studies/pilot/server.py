"""A web server for a pilot when none is running: uvicorn on a free loopback port, as a child."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.conf import settings

START_TIMEOUT = 30.0
# Plain http on loopback: cookies marked Secure would never be sent back to it.
LOOPBACK_ENV = {
    "DJANGO_SECURE_COOKIES": "false",
    "DJANGO_SECURE_SSL_REDIRECT": "false",
    "DJANGO_HSTS_SECONDS": "0",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
}


def site_answers(base_url: str, timeout: float = 3.0) -> bool:
    """Whether the site at `base_url` answers its health check."""
    try:
        return httpx.get(f"{base_url.rstrip('/')}/healthz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(*, env: Mapping[str, str] | None = None, log_path: Path | None = None) -> Iterator[str]:
    """Run `uvicorn webapp.asgi:application` for the block; yield its base URL.

    The child inherits this process's environment (so its database and Redis), with `env` on top.
    """
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "webapp.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
    child_env = {**os.environ, **LOOPBACK_ENV, **(env or {})}
    log = log_path.open("wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        command, cwd=settings.BASE_DIR, env=child_env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not site_answers(base_url, timeout=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the pilot's web server did not start (exit {proc.poll()})")
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if log_path:
            log.close()  # type: ignore[union-attr]
