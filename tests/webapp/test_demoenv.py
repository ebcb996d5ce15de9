"""manage.py reads the running demo's environment file, and nothing else does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from webapp import devrunner
from webapp.demoenv import DemoEnvError, read_demo_env, remove_demo_env, write_demo_env

ROOT = Path(__file__).resolve().parent.parent.parent


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_file_is_private_and_read_back_while_its_demo_runs(tmp_path: Path):
    path = tmp_path / "demo.env"
    write_demo_env(path, {"REDIS_URL": "redis://127.0.0.1:1/0"}, pid=os.getpid())
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_demo_env(path) == {"REDIS_URL": "redis://127.0.0.1:1/0"}


def test_an_older_file_open_to_others_is_made_private_when_written_again(tmp_path: Path):
    path = tmp_path / "demo.env"
    path.write_text("")
    path.chmod(0o644)
    write_demo_env(path, {"SITE_URL": "http://127.0.0.1:8000"}, pid=os.getpid())
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_file_left_by_a_demo_that_stopped_is_ignored(tmp_path: Path):
    path = tmp_path / "demo.env"
    write_demo_env(path, {"REDIS_URL": "redis://127.0.0.1:1/0"}, pid=dead_pid())
    assert read_demo_env(path) == {}


def test_a_file_others_can_read_is_refused(tmp_path: Path):
    path = tmp_path / "demo.env"
    write_demo_env(path, {"REDIS_URL": "redis://127.0.0.1:1/0"}, pid=os.getpid())
    path.chmod(0o640)
    with pytest.raises(DemoEnvError, match="chmod 600"):
        read_demo_env(path)


def test_a_value_with_a_newline_is_not_written(tmp_path: Path):
    with pytest.raises(ValueError, match="SITE_URL"):
        write_demo_env(tmp_path / "demo.env", {"SITE_URL": "a\nDJANGO_DEBUG=true"}, pid=1)


def test_a_demo_removes_only_its_own_file(tmp_path: Path):
    path = tmp_path / "demo.env"
    write_demo_env(path, {}, pid=os.getpid())
    remove_demo_env(path, pid=os.getpid() + 1)
    assert path.exists()
    remove_demo_env(path, pid=os.getpid())
    assert not path.exists()
    remove_demo_env(path, pid=os.getpid())


def test_the_demo_leaves_what_manage_py_needs_and_drops_the_file_variable(tmp_path, monkeypatch):
    monkeypatch.setattr(devrunner, "DEMO_ENV_FILE", tmp_path / "demo.env")
    monkeypatch.setattr(devrunner, "LOCAL", tmp_path)
    env = {"DATABASE_URL": "postgres://postgres@/collabllm?host=/tmp/pg", "PATH": "/bin"}
    env |= {"REDIS_URL": "redis://127.0.0.1:2/0", "DJANGO_DEMO_ENV_FILE": "x"}
    devrunner.demo_env(env)
    assert "DJANGO_DEMO_ENV_FILE" not in env
    from contextlib import ExitStack

    with ExitStack() as stack:
        devrunner.leave_demo_env(stack, env)
        values = read_demo_env(tmp_path / "demo.env")
        assert values["DATABASE_URL"] == env["DATABASE_URL"]
        assert values["DJANGO_DEBUG"] == "true"
        assert values["DJANGO_SECRET_KEY_FILE"] == str(tmp_path / "secret_key")
        assert "PATH" not in values
    assert not (tmp_path / "demo.env").exists()


def manage_py_site_url(env_file: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.pop("SITE_URL", None)
    env |= {"DJANGO_DEMO_ENV_FILE": str(env_file), **extra}
    code = "from django.conf import settings; print(settings.SITE_URL, settings.DEBUG)"
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_manage_py_uses_the_running_demos_settings(tmp_path: Path):
    path = tmp_path / "demo.env"
    values = {"SITE_URL": "http://127.0.0.1:8123", "DJANGO_DEBUG": "true"}
    write_demo_env(path, values, pid=os.getpid())
    result = manage_py_site_url(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["http://127.0.0.1:8123", "True"]


def test_the_environment_wins_and_production_never_reads_the_file(tmp_path: Path):
    path = tmp_path / "demo.env"
    values = {"SITE_URL": "http://127.0.0.1:8123", "DJANGO_SECRET_KEY": "k" * 50}
    write_demo_env(path, values, pid=os.getpid())
    result = manage_py_site_url(path, SITE_URL="http://127.0.0.1:9999", DJANGO_DEBUG="true")
    assert result.stdout.splitlines()[-1].split() == ["http://127.0.0.1:9999", "True"]
    result = manage_py_site_url(path, DJANGO_DEBUG="false")
    assert result.returncode != 0
    assert "start `make demo` first" in result.stderr
