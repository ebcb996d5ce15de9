"""Token counts from llama.cpp's tokenizer endpoint when a stream carries no usage."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from models_serving import client
from models_serving.client import EndpointSpec, GenerationResult


class _Handler(BaseHTTPRequestHandler):
    mode = "count"  # "count" answers, "missing" is a server without the endpoint, "error" 500s

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        text = json.loads(self.rfile.read(length))["input"]
        status = {"count": 200, "missing": 404, "error": 500}[self.mode]
        body = json.dumps({"count": len(text.split())}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def tokenizer_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def result() -> GenerationResult:
    return GenerationResult(
        text="three word reply", model="m", finish_reason="stop", prompt_tokens=None,
        completion_tokens=None, time_to_first_token=0.1, duration=0.5, usage_source="none",
    )  # fmt: skip


async def count(server, mode):
    _Handler.mode = mode
    spec = EndpointSpec(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="m")
    return await client.count_tokens(spec, [{"role": "user", "content": "a b"}], result())


async def test_counts_come_from_the_servers_tokenizer(tokenizer_server):
    counted = await count(tokenizer_server, "count")
    assert (counted.prompt_tokens, counted.completion_tokens) == (2, 3)
    assert counted.usage_source == "tokenize"


async def test_a_passing_error_does_not_stop_counting_for_good(tokenizer_server):
    assert (await count(tokenizer_server, "error")).usage_source == "none"
    assert (await count(tokenizer_server, "count")).usage_source == "tokenize"


async def test_a_server_without_the_endpoint_is_remembered(tokenizer_server):
    assert (await count(tokenizer_server, "missing")).usage_source == "none"
    assert (await count(tokenizer_server, "count")).usage_source == "none"  # not asked again
