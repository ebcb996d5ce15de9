"""Every command README.md shows runs as written against a running `make demo`.

The demo starts as the README says (`DJANGO_DEBUG=true python manage.py demo`) on embedded
services, in an environment that names none of the settings' variables (a fresh terminal with the
virtualenv activated). Then each `python` line of the README's `sh` blocks runs in a shell in the
checkout, as a researcher would paste it, and must succeed. The commands are parsed from the
README, so the two cannot drift apart.
"""

import http.cookiejar
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.test_settings import settings_env_names
from webapp.demoenv import read_demo_env

ROOT = Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.md"
DEMO_ENV_FILE = ROOT / ".local" / "demo.env"
DEMO_COMMAND = "DJANGO_DEBUG=true python manage.py demo"
# The participant of the README's sample link, whom its erase_participant line erases.
README_PARTICIPANT = "demo-a913df"
# Commands the README names that no `sh` line runs against the demo, and why.
NOT_RUN = {
    "demo": "started by this test, as the README writes it",
    "train": "needs a training run made in the admin (tests/training run it)",
    "check": "`check --deploy` runs with production values (tests/test_settings.py)",
}


def readme_commands(text: str) -> list[str]:
    """The `python ...` lines of the README's ```sh blocks, in order."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("python ")]


def named_subcommands(text: str) -> set[str]:
    """Every `manage.py <command>` the README mentions, in code blocks or in prose."""
    return set(re.findall(r"manage\.py\s+([a-z_]+)", text))


def test_every_command_the_readme_names_has_a_line_that_runs():
    text = README.read_text()
    run = {line.split()[2] for line in readme_commands(text) if line.startswith("python manage.py")}
    assert {"export_study", "analyze_study", "pilot_study"} <= run
    assert not named_subcommands(text) - run - NOT_RUN.keys()
    assert f"`{DEMO_COMMAND}`" in text
    assert f"?pid={README_PARTICIPANT}" in text
    assert f"erase_participant demo {README_PARTICIPANT} " in text


def fresh_terminal_env() -> dict[str, str]:
    """This environment without any variable settings read, the virtualenv first on PATH."""
    dropped = settings_env_names() | {"DJANGO_SETTINGS_MODULE", "DJANGO_DEMO_ENV_FILE"}
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(ROOT / ".venv")
    return env


def wait_until_ready(demo: subprocess.Popen[bytes], output: Path, timeout: float) -> str:
    """The participant link the demo prints once it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace")
        link = re.search(r"^\s+(http://\S+/s/demo/\?pid=\S+)$", text, re.MULTILINE)
        if link and "Ctrl-C stops everything." in text:
            return link.group(1)
        if demo.poll() is not None:
            pytest.fail(f"the demo exited with {demo.returncode}:\n{text[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"the demo was not ready within {timeout:g}s:\n{output.read_text()[-4000:]}")


def open_page(url: str) -> str:
    """GET url as a browser would (cookies kept across redirects); return the final page."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(url, timeout=60) as response:
        assert response.status == 200
        return response.read().decode()


def stop(demo: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a researcher stops it; SIGKILL for the whole group if it hangs."""
    try:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(timeout=120)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_readme_command_runs_as_written_against_the_running_demo(tmp_path: Path):
    if read_demo_env(DEMO_ENV_FILE):
        pytest.skip(f"a demo already runs in this checkout ({DEMO_ENV_FILE})")
    env = fresh_terminal_env()
    output = tmp_path / "demo.out"
    started = time.monotonic()
    with output.open("wb") as out:
        demo = subprocess.Popen(
            ["bash", "-c", DEMO_COMMAND],
            cwd=ROOT, env={**env, "DEMO_PORT": str(free_port())},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        link = wait_until_ready(demo, output, timeout=600)
        print(f"demo ready in {time.monotonic() - started:.1f}s at {link}")
        assert "<form" in open_page(link)
        open_page(link.split("?pid=")[0] + f"?pid={README_PARTICIPANT}")
        for command in readme_commands(README.read_text()):
            began = time.monotonic()
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=1200,
            )  # fmt: skip
            print(f"rc {result.returncode} in {time.monotonic() - began:.1f}s: {command}")
            assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}{result.stderr}"
    finally:
        stop(demo)
    assert demo.returncode == 0, output.read_text()[-4000:]
    assert not DEMO_ENV_FILE.exists()
