"""docker/compose.yaml describes the production layout (DESIGN.md "Processes"); Docker Compose
validates it where it is installed, and the structure is checked everywhere."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_settings import settings_env_names

DOCKER = Path(__file__).resolve().parent.parent / "docker"
EXAMPLE = DOCKER / "production.env.example"


def example_values() -> dict[str, str]:
    pairs = (line.partition("=") for line in EXAMPLE.read_text().splitlines())
    return {k.strip(): v.strip() for k, sep, v in pairs if sep and not k.startswith("#")}


def interpolate(node, values: dict[str, str]):
    """Fill ${NAME}, ${NAME:-default} and ${NAME:?message} as Compose would."""
    if isinstance(node, dict):
        return {k: interpolate(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, values) for v in node]
    if not isinstance(node, str):
        return node
    pattern = r"\$\{(\w+)(?::([-?])([^}]*))?\}"
    return re.sub(
        pattern, lambda m: values.get(m[1]) or (m[3] if m[2] == "-" else ""), node
    ).replace("$$", "$")


@pytest.fixture(scope="module")
def services() -> dict:
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return interpolate(raw, example_values())["services"]


def test_every_process_of_the_design_is_a_service(services):
    assert {"web", "worker", "beat", "proxy", "postgres", "redis", "vllm", "migrate"} <= set(
        services
    )


def test_several_web_replicas_sit_behind_the_proxy(services):
    assert int(services["web"]["deploy"]["replicas"]) >= 2
    assert "ports" not in services["web"]
    assert "web" in services["proxy"]["depends_on"]
    assert "web" in (DOCKER / "Caddyfile").read_text()


def web_command(services) -> str:
    command = services["web"]["command"]
    return command[-1] if command[:2] == ["sh", "-c"] else " ".join(command)


def test_each_web_replica_runs_several_uvicorn_processes(services):
    words = web_command(services).split()
    assert "uvicorn" in words and "--proxy-headers" in words
    assert int(words[words.index("--workers") + 1]) >= 2
    assert int(example_values()["WEB_PROCESSES"]) >= 2


def test_the_web_processes_share_their_metrics_through_an_emptied_folder(services):
    folder = services["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert folder.startswith("/tmp/")
    command = web_command(services)
    assert command.index('rm -rf "$PROMETHEUS_MULTIPROC_DIR"') < command.index("exec uvicorn")


def test_the_connection_budget_fits_postgresql(services):
    values = example_values()
    web = int(values["WEB_REPLICAS"]) * int(values["WEB_PROCESSES"])
    total = web * int(values["DATABASE_POOL_MAX_SIZE"]) + int(values["DATABASE_OTHER_CONNECTIONS"])
    assert total <= int(values["DATABASE_MAX_CONNECTIONS"]) - 3
    assert values["DATABASE_POOL"] == "true"
    for name in ("beat", *WORKERS):
        assert services[name]["environment"]["DATABASE_POOL"] == "false"
    busy = sum(_concurrency(services[name]) for name in WORKERS)
    assert busy + 3 <= int(values["DATABASE_OTHER_CONNECTIONS"])  # + beat, migrate, a shell


def test_there_is_exactly_one_beat(services):
    assert int(services["beat"]["deploy"]["replicas"]) == 1


def test_vllm_reserves_a_gpu_and_mounts_the_adapters(services):
    vllm = services["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert any(v.endswith(":/adapters:ro") for v in vllm["volumes"])
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert "--enable-lora" in vllm["command"]
    assert "collabllm=/adapters/collabllm" in vllm["command"]


def test_the_app_services_read_the_production_env_file(services):
    for name in ("migrate", "web", "worker", "beat"):
        assert services[name]["env_file"] == ["production.env"], name


def test_the_long_running_services_have_healthchecks(services):
    for name in ("web", "vllm", "postgres", "redis", *WORKERS):
        assert services[name]["healthcheck"]["test"], name


WORKERS = ("worker", "worker-reports", "worker-pilots", "worker-training", "worker-gpu")


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _concurrency(service: dict) -> int:
    return int(_option(service["command"], "--concurrency"))


def test_the_gpu_worker_takes_the_gpu_queue(services):
    assert _option(services["worker-gpu"]["command"], "-Q") == "gpu"


def test_every_queue_the_settings_route_to_has_its_own_worker(services, settings):
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    routed |= {settings.CELERY_TASK_DEFAULT_QUEUE, settings.TRAINING_GPU_QUEUE}
    taken = {name: _option(services[name]["command"], "-Q").split(",") for name in WORKERS}
    assert routed == {q for queues in taken.values() for q in queues}
    assert all(len(queues) == 1 for queues in taken.values())  # one kind per worker
    names = [_option(services[name]["command"], "-n") for name in WORKERS]
    assert len(set(names)) == len(names)


def test_the_production_env_names_only_variables_something_reads():
    compose_names = set(re.findall(r"\$\{(\w+)", (DOCKER / "compose.yaml").read_text()))
    uvicorn_names = {n for n in example_values() if n.startswith("UVICORN_")}
    unknown = set(example_values()) - settings_env_names() - compose_names - uvicorn_names
    unknown -= {n + "_FILE" for n in settings_env_names()}
    assert not unknown, f"production.env.example sets unread variables: {sorted(unknown)}"


def test_the_production_env_file_is_never_committed():
    assert "production.env" in (DOCKER / ".gitignore").read_text().split()


@pytest.mark.skipif(
    not shutil.which("docker")
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="Docker Compose is not installed",
)
def test_docker_compose_accepts_the_file(tmp_path):
    folder = tmp_path / "docker"
    shutil.copytree(DOCKER, folder)
    (folder / "production.env").write_text(EXAMPLE.read_text())
    for secret in ("django_secret_key", "metrics_token"):
        (folder / "secrets" / secret).write_text("x" * 50)
    compose = ["docker", "compose", "--env-file", str(EXAMPLE), "-f", str(folder / "compose.yaml")]
    result = subprocess.run(
        [*compose, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
