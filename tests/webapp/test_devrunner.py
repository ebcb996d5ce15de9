"""The dev runner's embedded services start, answer, and stop without leaving a process behind.

These use neither DATABASE_URL nor REDIS_URL: they start their own servers in temporary folders.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import environ
import psutil
import psycopg
import pytest

from webapp import devrunner
from webapp.devrunner import secret_key_file
from webapp.devservices import (
    free_port,
    port_is_free,
    postgres_url,
    redis_ping,
    spawn,
    start_postgres,
    start_redis,
)


def group_is_gone(pgid: int) -> bool:
    """True when no process of group pgid is left (zombies waiting for init to reap them aside)."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return False
        except ProcessLookupError:
            continue
    return True


def process_is_gone(pid: int, timeout: float = 5) -> bool:
    """True once pid has exited (a zombie waiting for init to reap it counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_stopping_a_child_stops_its_whole_process_group(tmp_path: Path):
    child = spawn("sh", ["sh", "-c", "sleep 60 & sleep 60"], log_path=tmp_path / "sh.log")
    time.sleep(0.2)
    child.stop(timeout=5)
    assert child.proc.returncode == -signal.SIGTERM
    assert group_is_gone(child.proc.pid)


def test_a_child_that_ignores_sigterm_is_killed(tmp_path: Path):
    script = "trap '' TERM; sleep 60 & wait"
    child = spawn("stubborn", ["sh", "-c", script], log_path=tmp_path / "stubborn.log")
    time.sleep(0.2)
    child.stop(timeout=0.5)
    assert group_is_gone(child.proc.pid)


def test_the_postgres_url_reaches_django_as_a_socket_host():
    config = environ.Env.db_url_config(postgres_url(Path("/tmp/some dir/pgdata"), "collabllm"))
    assert config["NAME"] == "collabllm"
    assert config["USER"] == "postgres"
    assert config["OPTIONS"] == {"host": "/tmp/some dir/pgdata"}


def test_the_secret_key_is_generated_once_and_kept(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("webapp.devrunner.LOCAL", tmp_path)
    first = secret_key_file().read_text()
    assert len(first) >= 50
    assert secret_key_file().read_text() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


@pytest.mark.slow
def test_embedded_redis_answers_ping_and_stops_cleanly(tmp_path: Path):
    child, url = start_redis(tmp_path / "redis", tmp_path / "redis.log")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert url == f"redis://127.0.0.1:{port}/0"
    assert redis_ping(port)
    child.stop()
    assert not redis_ping(port)
    assert group_is_gone(child.proc.pid)


@pytest.mark.slow
def test_embedded_postgres_accepts_connections_at_its_url_and_stops(tmp_path: Path):
    postgres = start_postgres(tmp_path / "pgdata", database="devrunner_check")
    pid = postgres.server.get_pid()
    try:
        with psycopg.connect(postgres.url) as conn:
            row = conn.execute("SELECT current_database(), inet_server_addr()").fetchone()
            limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        assert row == ("devrunner_check", None)  # no address: a unix socket
        # The demo's pools (2 web processes x 10) and worker, or the test suite's, fit.
        assert limit >= devrunner.web_processes({}) * 10 + 10 + 3
        config = environ.Env.db_url_config(postgres.url)
        with psycopg.connect(dbname=config["NAME"], user=config["USER"], **config["OPTIONS"]):
            pass
    finally:
        postgres.stop()
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()
    assert process_is_gone(pid)


@pytest.mark.slow
def test_embedded_postgres_keeps_its_data_and_database_across_restarts(tmp_path: Path):
    first = start_postgres(tmp_path / "pgdata", database="devrunner_check")
    try:
        with psycopg.connect(first.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (value int)")
    finally:
        first.stop()
    second = start_postgres(tmp_path / "pgdata", database="devrunner_check")
    try:
        with psycopg.connect(second.url) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        second.stop()


def test_devrunner_without_a_command_prints_its_usage():
    result = subprocess.run(
        [sys.executable, "-m", "webapp.devrunner"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "python -m webapp.devrunner demo" in result.stderr


def test_a_port_with_a_listener_is_not_free():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)
        assert free_port(port) != port


def test_the_demo_runs_two_web_processes_unless_told_otherwise():
    assert devrunner.web_processes({}) == 2
    assert devrunner.web_processes({"WEB_PROCESSES": "3"}) == 3
    with pytest.raises(RuntimeError, match="WEB_PROCESSES"):
        devrunner.web_processes({"WEB_PROCESSES": "0"})


def test_the_demo_empties_its_metrics_folder_and_names_it(tmp_path: Path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"stale")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    devrunner.metrics_dir(env)
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(folder)
    assert folder.is_dir() and not any(folder.iterdir())


def test_the_demo_removes_only_metrics_files_from_a_folder_it_is_given(tmp_path: Path):
    # PROMETHEUS_MULTIPROC_DIR may name a folder that holds other things (/tmp, say).
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("keep")
    (tmp_path / "sub").mkdir()
    devrunner.metrics_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "sub"]
