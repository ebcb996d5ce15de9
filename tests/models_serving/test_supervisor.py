"""Server specs from endpoint settings or a config file, and the supervisor on real processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from models_serving.launch import EMBEDDED_ALIAS
from models_serving.servers import LaunchConfigError, ServerSpec, load_config, server_spec
from models_serving.supervisor import Supervisor, SupervisorError
from tests.ports import free_port

# A tiny OpenAI-ish server: GET anything lists one model. Modes: crash (exit 1 s after it is up),
# crash-once:MARKER (crash only on the first start), ignore-term (survive SIGTERM).
FAKE_SERVER = textwrap.dedent("""
    import http.server, json, os, signal, sys, threading
    port, mode = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "")
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    if mode.startswith("crash"):
        marker = mode.partition(":")[2]
        if not marker or not os.path.exists(marker):
            if marker:
                open(marker, "w").close()
            threading.Timer(1.0, lambda: os._exit(3)).start()
    server.serve_forever()
""")


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)

    def make(name: str, mode: str = "") -> ServerSpec:
        port = free_port()
        command = (sys.executable, str(script), str(port), mode)
        return ServerSpec(name, "fake", command, f"http://127.0.0.1:{port}/v1")

    return make


def supervisor(specs, tmp_path, lines, **kw) -> Supervisor:
    options = {"ready_timeout": 15, "backoff": 0.1, "stop_timeout": 5} | kw
    return Supervisor(specs, log_dir=tmp_path / "logs", say=lines.append, **options)


def answers(spec: ServerSpec) -> bool:
    try:
        return httpx.get(spec.health_url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_exit(sup: Supervisor, timeout: float = 10) -> None:
    proc = sup.servers[0].proc
    assert proc is not None
    proc.wait(timeout=timeout)


# --- specs -----------------------------------------------------------------------------------


def test_a_vllm_spec_carries_model_parallelism_memory_length_and_adapters():
    spec = server_spec(
        name="gpu",
        kind="vllm",
        served_model="qwen",
        launch={
            "model": "Qwen/Qwen2.5-7B-Instruct", "host": "0.0.0.0", "port": 8000,
            "tensor_parallel_size": 2, "gpu_memory_utilization": 0.85, "max_model_len": 8192,
            "lora_modules": {"collabllm": "/ckpt/collabllm"}, "extra_args": ["--enforce-eager"],
        },
    )  # fmt: skip
    assert spec.command[:3] == (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
    flags = " ".join(spec.command[3:])
    assert flags == (
        "--model Qwen/Qwen2.5-7B-Instruct --served-model-name qwen --host 0.0.0.0 --port 8000"
        " --tensor-parallel-size 2 --gpu-memory-utilization 0.85 --max-model-len 8192"
        " --enable-lora --lora-modules collabllm=/ckpt/collabllm --enforce-eager"
    )
    assert spec.health_url == "http://127.0.0.1:8000/v1/models"


def test_a_vllm_spec_may_run_another_python_such_as_a_vllm_virtualenv():
    launch = {"model": "m", "port": 8000, "python": "/opt/vllm/bin/python"}
    spec = server_spec(name="gpu", kind="vllm", launch=launch)
    assert spec.command[0] == "/opt/vllm/bin/python"
    assert spec.command[spec.command.index("--served-model-name") + 1] == "m"


def test_a_llama_spec_serves_the_embedded_model_on_the_port_of_its_base_url():
    spec = server_spec(
        name="cpu", kind="llama_cpp", launch={"n_ctx": 1024}, base_url="http://localhost:8089/v1"
    )
    assert spec.command[1:3] == ("-m", "models_serving.llama_main")
    options = dict(zip(spec.command[3::2], spec.command[4::2], strict=False))
    assert options["--port"] == "8089" and options["--n_ctx"] == "1024"
    assert options["--model_alias"] == EMBEDDED_ALIAS and options["--model"].endswith(".gguf")


@pytest.mark.parametrize(
    ("kind", "launch", "message"),
    [
        ("vllm", {"port": 8000}, "gpu: model is required for vllm"),
        ("vllm", {"model": "m", "port": 8000, "gpu_memory_utilization": 1.5}, "in (0, 1]"),
        ("vllm", {"model": "m", "port": 8000, "tensor_parallel_size": "2"}, "an integer >= 1"),
        ("vllm", {"model": "m", "port": 8000, "lora_modules": ["a"]}, "mapping of names to paths"),
        ("vllm", {"model": "m", "port": 8000, "n_ctx": 4}, "unknown vllm setting(s) n_ctx"),
        ("llama_cpp", {}, "port is required"),
        ("external", {}, "server must be one of llama_cpp, vllm"),
    ],
)
def test_invalid_launch_settings_fail_naming_the_server_and_the_key(kind, launch, message):
    with pytest.raises(LaunchConfigError, match=re.escape(message)):
        server_spec(name="gpu", kind=kind, launch=launch)


def test_a_json_config_file_lists_servers(tmp_path):
    path = tmp_path / "servers.json"
    servers = [
        {"name": "cpu", "server": "llama_cpp", "port": 8081},
        {"name": "gpu", "server": "vllm", "model": "m", "port": 8000, "served_model": "base"},
    ]
    path.write_text(json.dumps({"servers": servers}))
    cpu, gpu = load_config(path)
    assert (cpu.name, cpu.kind, cpu.base_url) == ("cpu", "llama_cpp", "http://127.0.0.1:8081/v1")
    assert gpu.command[gpu.command.index("--served-model-name") + 1] == "base"


def test_a_yaml_config_file_lists_servers(tmp_path):
    path = tmp_path / "servers.yaml"
    path.write_text(
        "servers:\n  - name: gpu\n    server: vllm\n    model: m\n    port: 8000\n"
        "    lora_modules: {collabllm: /ckpt}\n"
    )
    (gpu,) = load_config(path)
    assert "collabllm=/ckpt" in gpu.command


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "expected a non-empty list under 'servers'"),
        ("{not json", "not valid JSON"),
        ('{"servers": [{"server": "vllm"}]}', "server #1 needs a name"),
        (
            '{"servers": [{"name": "a", "server": "llama_cpp", "port": 1},'
            ' {"name": "a", "server": "llama_cpp", "port": 2}]}',
            "name used twice: a",
        ),
    ],
)
def test_config_file_errors_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "servers.json"
    path.write_text(content)
    with pytest.raises(LaunchConfigError, match=message):
        load_config(path)


# --- supervisor ------------------------------------------------------------------------------


def test_it_starts_each_server_says_where_it_listens_and_stops_them(fake, tmp_path):
    lines: list[str] = []
    specs = [fake("a"), fake("b")]
    sup = supervisor(specs, tmp_path, lines)
    sup.start()
    try:
        assert all(answers(spec) for spec in specs)
        assert f"a: listening at {specs[0].base_url}" in lines
        assert f"b: listening at {specs[1].base_url}" in lines
    finally:
        sup.stop()
    assert not any(answers(spec) for spec in specs)
    assert {"a: stopped", "b: stopped"} <= set(lines)


def test_a_crashed_server_is_restarted_after_a_backoff(fake, tmp_path):
    lines: list[str] = []
    spec = fake("a", f"crash-once:{tmp_path / 'crashed'}")
    sup = supervisor([spec], tmp_path, lines)
    sup.start()
    try:
        wait_exit(sup)
        sup.poll()
        assert "a: exited with code 3; restart 1/3 in 0.1s" in lines
        sup.poll(now=sup.servers[0].restart_at)
        assert answers(spec) and sup.servers[0].restarts == 1
    finally:
        sup.stop()


def test_it_gives_up_on_a_server_that_keeps_crashing(fake, tmp_path):
    sup = supervisor([fake("a", "crash")], tmp_path, [], max_restarts=0)
    sup.start()
    try:
        wait_exit(sup)
        with pytest.raises(SupervisorError, match="a: exited with code 3; gave up after 0"):
            sup.poll()
    finally:
        sup.stop()


def test_a_server_that_never_answers_fails_the_start_and_is_stopped(tmp_path):
    port = free_port()
    command = (sys.executable, "-c", "import time; time.sleep(60)")
    spec = ServerSpec("mute", "fake", command, f"http://127.0.0.1:{port}/v1")
    sup = supervisor([spec], tmp_path, [], ready_timeout=1)
    with pytest.raises(SupervisorError, match=r"mute: model server at .* not ready after 1s"):
        sup.start()
    proc = sup.servers[0].proc
    assert proc is not None and proc.poll() is not None


def test_a_server_that_ignores_sigterm_is_killed_after_the_timeout(fake, tmp_path):
    sup = supervisor([fake("stubborn", "ignore-term")], tmp_path, [], stop_timeout=0.5)
    sup.start()
    sup.stop()
    proc = sup.servers[0].proc
    assert proc is not None and proc.returncode == -signal.SIGKILL


def test_serving_stops_every_server_on_sigterm(fake, tmp_path):
    spec = fake("a")
    program = textwrap.dedent(f"""
        from models_serving.servers import ServerSpec
        from models_serving.supervisor import Supervisor
        spec = ServerSpec(*{(spec.name, spec.kind, spec.command, spec.base_url)!r})
        say = lambda line: print(line, flush=True)
        raise SystemExit(Supervisor([spec], ready_timeout=15, say=say).serve(interval=0.1))
    """)
    with subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listening at" in line:
                break
        assert answers(spec)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "a: stopped" in rest
    assert not answers(spec)
