"""`serve_models`: servers from endpoint rows or a config file; the demo's serving description."""

import json
import os
import signal
import threading
import time
from io import StringIO

import httpx
import pytest
from django.core.management import CommandError, call_command

from studies.demo import seed_demo
from studies.models import ModelEndpoint
from tests.factories import ModelEndpointFactory
from tests.ports import free_port

pytestmark = pytest.mark.django_db


def serve_models(*args: str) -> str:
    out = StringIO()
    call_command("serve_models", *args, stdout=out)
    return out.getvalue()


def test_it_prints_the_vllm_command_of_an_endpoint_with_its_adapter():
    ModelEndpointFactory(
        name="gpu",
        base_url="http://gpu-host:8000/v1",
        served_model="org/base",
        server="vllm",
        launch={"model": "org/base", "tensor_parallel_size": 2, "lora_modules": {"c": "/ckpt"}},
    )
    out = serve_models("--print-commands")
    assert out.startswith("gpu (http://127.0.0.1:8000/v1): ")
    assert "--tensor-parallel-size 2 --enable-lora --lora-modules c=/ckpt" in out


def test_external_endpoints_are_not_started():
    ModelEndpointFactory(name="hosted", server="external")
    ModelEndpointFactory(name="cpu", server="llama_cpp", base_url="http://127.0.0.1:8089/v1")
    out = serve_models("--print-commands")
    assert "cpu (http://127.0.0.1:8089/v1)" in out and "hosted" not in out


def test_naming_an_external_endpoint_is_an_error():
    ModelEndpointFactory(name="hosted", server="external")
    with pytest.raises(CommandError, match="hosted: server is external, nothing to start"):
        serve_models("--endpoint", "hosted")


def test_an_invalid_launch_setting_is_a_clear_command_error():
    ModelEndpointFactory(name="gpu", server="vllm", launch={"model": "m", "max_model_len": 0})
    with pytest.raises(CommandError, match="gpu: max_model_len must be an integer >= 1, got 0"):
        serve_models("--print-commands")


def test_a_config_file_replaces_the_endpoints(tmp_path):
    ModelEndpointFactory(name="cpu", server="llama_cpp", base_url="http://127.0.0.1:8089/v1")
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"servers": [{"name": "gpu", "server": "vllm", "model": "m"}]}))
    with pytest.raises(CommandError, match="gpu: port is required"):
        serve_models("--config", str(path), "--print-commands")


def test_without_servers_it_serves_the_embedded_model():
    out = serve_models("--print-commands", "--port", "8099")
    assert "embedded (http://127.0.0.1:8099/v1)" in out and "models_serving.llama_main" in out


def test_the_demo_without_an_adapter_describes_the_embedded_llama_server(settings):
    settings.MODEL_BASE_URL, settings.MODEL_NAME = "http://127.0.0.1:8081/v1", "smollm2-135m"
    settings.COLLABLLM_ADAPTER_PATH, settings.COLLABLLM_MODEL_BASE_URL = "", ""
    study = seed_demo()
    endpoint = ModelEndpoint.objects.get(name="default")
    assert (endpoint.server, endpoint.launch) == ("llama_cpp", {"port": 8081, "n_ctx": 2048})
    assert study.conditions.get(key="collabllm").model_name == ""
    label = study.conditions.get(key="collabllm").label
    assert "no adapter" in label and "GPU" not in label


def test_the_demo_with_an_adapter_is_one_vllm_server_with_base_and_adapter(settings):
    settings.MODEL_BASE_URL, settings.MODEL_NAME = "http://gpu:8000/v1", "Qwen/Qwen2.5-7B-Instruct"
    settings.COLLABLLM_ADAPTER_PATH, settings.COLLABLLM_MODEL_NAME = "/ckpt/collabllm", "collabllm"
    study = seed_demo()
    endpoint = ModelEndpoint.objects.get(name="default")
    assert endpoint.server == "vllm"
    assert endpoint.launch["lora_modules"] == {"collabllm": "/ckpt/collabllm"}
    arms = {c.key: (c.endpoint_id, c.model_name) for c in study.conditions.all()}
    assert set(arms.values()) == {(endpoint.pk, ""), (endpoint.pk, "collabllm")}
    assert arms["collabllm"] == (endpoint.pk, "collabllm")
    assert "LoRA adapter collabllm" in study.conditions.get(key="collabllm").label
    assert "--lora-modules collabllm=/ckpt/collabllm" in serve_models("--print-commands")


def _sigterm_once_listening(out: StringIO, seen: list[bool]) -> None:
    """From a helper thread: once serve_models says the server listens, stop it like systemd."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and "listening at" not in out.getvalue():
        time.sleep(0.2)
    seen.append("listening at" in out.getvalue())
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_it_serves_a_llama_endpoint_until_sigterm_and_stops_it(tmp_path):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    ModelEndpointFactory(name="cpu", server="llama_cpp", base_url=base_url, launch={"n_ctx": 512})
    seen: list[bool] = []
    out = StringIO()
    helper = threading.Thread(target=_sigterm_once_listening, args=(out, seen))
    helper.start()
    call_command("serve_models", "--log-dir", str(tmp_path), stdout=out)
    helper.join()
    assert seen == [True]
    assert f"cpu: listening at {base_url}" in out.getvalue() and "cpu: stopped" in out.getvalue()
    with pytest.raises(httpx.TransportError):
        httpx.get(base_url + "/models", timeout=2)
