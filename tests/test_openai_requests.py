"""What the HTTP backend puts on the wire, as a real HTTP server receives it: the key, the JSON body
on the role's route, the proxy the environment names; and that closing the backend closes its
connections.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from support.canned_http_server import CannedHTTPServer

from spri_sft.errors import UserError
from spri_sft.llm.base import EndpointConfig
from spri_sft.llm.openai_http import OpenAIChat

pytestmark = pytest.mark.timeout(60)

REPLY = {"choices": [{"message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}]}


def chat_server() -> CannedHTTPServer:
    """Answers every POST with one chat completion and keeps each request's target, headers and body."""
    return CannedHTTPServer(json.dumps(REPLY))


def endpoint(base_url: str, **overrides) -> EndpointConfig:
    settings = dict(backend="openai", model="m", base_url=[base_url], max_retries=0)
    settings.update(overrides)
    return EndpointConfig(**settings)


def chat_once(config: EndpointConfig) -> tuple[str, OpenAIChat]:
    """One chat request's reply text, and the closed backend that sent it."""

    async def go():
        backend = OpenAIChat(config)
        try:
            return (await backend.chat([{"role": "user", "content": "Hi"}])).text, backend
        finally:
            await backend.close()

    return asyncio.run(go())


def test_the_api_key_is_sent_as_a_bearer_token(monkeypatch):
    monkeypatch.setenv("SPRI_TEST_API_KEY", "sk-test-123")
    with chat_server() as server:
        chat_once(endpoint(f"{server.address}/v1", api_key_env="SPRI_TEST_API_KEY"))

    [(_, headers, _)] = server.requests
    assert headers["Authorization"] == "Bearer sk-test-123"


def test_a_chat_request_is_a_json_body_posted_to_chat_completions():
    with chat_server() as server:
        text, _ = chat_once(endpoint(f"{server.address}/v1/"))  # a trailing slash is not doubled

    [(target, headers, body)] = server.requests
    assert text == "Hello."
    assert target == "/v1/chat/completions"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["messages"] == [{"role": "user", "content": "Hi"}]


def test_the_proxy_the_environment_names_carries_the_request(monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with chat_server() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.address)
        text, _ = chat_once(endpoint("http://model-server.invalid/v1"))  # only the proxy can reach it

    [(target, _, _)] = proxy.requests
    assert text == "Hello."
    assert target == "http://model-server.invalid/v1/chat/completions"


def test_a_host_in_no_proxy_is_reached_directly(monkeypatch):
    for name in ("no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the discard port: a proxy that is not there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with chat_server() as server:
        text, _ = chat_once(endpoint(f"{server.address}/v1"))

    assert text == "Hello." and len(server.requests) == 1


def test_closing_the_backend_closes_its_connections():
    with chat_server() as server:
        _, backend = chat_once(endpoint(f"{server.address}/v1"))

    [replica] = backend.pool.replicas
    assert replica.session is not None and replica.session.closed


def test_a_proxy_the_http_client_cannot_use_is_refused_in_one_line(monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.invalid:3128")  # aiohttp would ignore it and go direct

    with pytest.raises(UserError, match=r"proxy 'https://proxy.invalid:3128'.*only http:// proxies"):
        OpenAIChat(endpoint("http://model-server.invalid/v1"))


def test_a_backend_closed_after_one_event_loop_serves_the_next():
    with chat_server() as server:
        backend = OpenAIChat(endpoint(f"{server.address}/v1"))

        async def one_request():
            try:
                return (await backend.chat([{"role": "user", "content": "Hi"}])).text
            finally:
                await backend.close()

        assert [asyncio.run(one_request()), asyncio.run(one_request())] == ["Hello.", "Hello."]
    assert len(server.requests) == 2
