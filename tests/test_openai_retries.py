"""How the HTTP backend retries, against the real fake server and the real `openai` client.

The first half pins the retry policy reused from the `openai` client (which replies are worth
retrying, how long the server asked to wait); then the failures that never become a reply (a
refused connection, a timeout) are retried too. The second half shows why the retry loop is the
backend's own rather than the client's: it frees its concurrency slot while it backs off, moves a
retry to another replica, and paces every attempt - none of which the client's internal loop can.
Timing is asserted only as lower bounds on the gaps the server saw, never as wall-clock limits.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time

import openai
import pytest
from support.fake_openai_server import FakeOpenAIServer, FaultPlan, message_text

from spri_sft.llm import openai_http
from spri_sft.llm.base import EndpointConfig
from spri_sft.llm.openai_http import OpenAIChat

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """The backend's own backoff takes about a millisecond, so any longer gap is the server's ask."""
    monkeypatch.setattr(openai_http, "BACKOFF_BASE", 0.001)
    monkeypatch.setattr(openai_http, "BACKOFF_CAP", 0.005)


def endpoint(urls: list[str], **overrides) -> EndpointConfig:
    settings = dict(backend="openai", model="fake-model", base_url=list(urls), timeout=5.0, max_retries=3)
    settings.update(overrides)
    return EndpointConfig(**settings)


def ask(config: EndpointConfig, *questions: str) -> list:
    """Send each question as one concurrent chat request; return the completions (or exceptions)."""

    async def main():
        backend = OpenAIChat(config)
        try:
            return await asyncio.gather(
                *(backend.chat([{"role": "user", "content": q}]) for q in questions), return_exceptions=True
            )
        finally:
            await backend.close()

    return asyncio.run(main())


def arrival_gaps(server: FakeOpenAIServer) -> list[float]:
    times = [r.received_at for r in server.received]
    return [later - earlier for earlier, later in zip(times, times[1:])]


def asked(server: FakeOpenAIServer) -> list[str]:
    return [message_text(r.body["messages"][-1]) for r in server.received]


def closed_port_url() -> str:
    """The URL of a port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def count_retries(monkeypatch) -> list[float]:
    """The backoff of every retry, as the backend waits it (at once: the retry tests need no wait)."""
    waits: list[float] = []

    async def record(seconds):
        waits.append(seconds)

    monkeypatch.setattr(openai_http, "_wait_before_retry", record)
    return waits


# -- the policy, as the openai client defines it ---------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "at_least"),
    [("retry-after-ms", "400", 0.3), ("Retry-After", "1", 0.9)],  # the backend's own backoff alone is ~1 ms
    ids=["retry-after-ms", "retry-after-seconds"],
)
def test_the_wait_a_429_asks_for_is_honoured(header, value, at_least):
    faults = FaultPlan(fail_first_n=1, error_headers=((header, value),))
    with FakeOpenAIServer(faults=faults) as server:
        [reply] = ask(endpoint([server.base_url]), "Why is the sky blue?")
        gaps = arrival_gaps(server)

    assert reply.text.startswith("Reply to:")
    assert server.stats["429"] == 1 and server.stats["requests"] == 2 and len(gaps) == 1
    assert gaps[0] >= at_least


def test_an_http_date_retry_after_is_honoured():
    # HTTP dates have whole seconds: two seconds ahead is a wait of more than one second.
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    faults = FaultPlan(fail_first_n=1, error_headers=(("Retry-After", when),))
    with FakeOpenAIServer(faults=faults) as server:
        [reply] = ask(endpoint([server.base_url]), "Why is the sky blue?")
        gaps = arrival_gaps(server)

    assert reply.text.startswith("Reply to:")
    assert server.stats["requests"] == 2
    assert gaps[0] >= 0.5


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_timeouts_conflicts_rate_limits_and_server_errors_are_retried(status):
    with FakeOpenAIServer(faults=FaultPlan(fail_first_n=2, fail_first_status=status)) as server:
        [reply] = ask(endpoint([server.base_url]), "Why is the sky blue?")

    assert reply.text.startswith("Reply to:")
    assert server.stats["requests"] == 3 and server.stats[str(status)] == 2


def test_a_bad_request_is_not_retried():
    with FakeOpenAIServer(faults=FaultPlan(fail_first_n=1, fail_first_status=400)) as server:
        [error] = ask(endpoint([server.base_url]), "Why is the sky blue?")

    assert isinstance(error, openai.BadRequestError)
    assert server.stats["requests"] == 1


def test_x_should_retry_false_stops_retries_of_a_server_error():
    faults = FaultPlan(fail_first_n=1, fail_first_status=500, error_headers=(("x-should-retry", "false"),))
    with FakeOpenAIServer(faults=faults) as server:
        [error] = ask(endpoint([server.base_url]), "Why is the sky blue?")

    assert isinstance(error, openai.InternalServerError)
    assert server.stats["requests"] == 1


def test_x_should_retry_true_retries_even_a_bad_request():
    faults = FaultPlan(fail_first_n=1, fail_first_status=400, error_headers=(("x-should-retry", "true"),))
    with FakeOpenAIServer(faults=faults) as server:
        [reply] = ask(endpoint([server.base_url]), "Why is the sky blue?")

    assert reply.text.startswith("Reply to:")
    assert server.stats["requests"] == 2


def test_a_retry_after_beyond_two_minutes_is_not_waited_for():
    faults = FaultPlan(fail_first_n=1, error_headers=(("Retry-After", "600"),))
    with FakeOpenAIServer(faults=faults) as server:
        [error] = ask(endpoint([server.base_url]), "Why is the sky blue?")

    assert isinstance(error, openai.RateLimitError)
    assert server.stats["requests"] == 1


def test_retries_stop_after_max_retries():
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as server:
        [error] = ask(endpoint([server.base_url], max_retries=2), "Why is the sky blue?")

    assert isinstance(error, openai.InternalServerError)
    assert server.stats["requests"] == 3


# -- failures below HTTP: no server, no reply in time ----------------------------------------


def test_a_refused_connection_is_an_api_connection_error():
    [error] = ask(endpoint([closed_port_url()], max_retries=0), "Why is the sky blue?")

    assert isinstance(error, openai.APIConnectionError) and not isinstance(error, openai.APITimeoutError)


def test_a_refused_connection_is_retried(monkeypatch):
    # The first attempt goes to the first replica (both idle), which refuses; the retry to the other.
    waits = count_retries(monkeypatch)
    with FakeOpenAIServer() as up:
        [reply] = ask(endpoint([closed_port_url(), up.base_url], max_retries=1), "Why is the sky blue?")
        served = up.stats["requests"]

    assert reply.text.startswith("Reply to:")
    assert len(waits) == 1 and served == 1


def test_a_request_unanswered_within_the_timeout_is_an_api_timeout_error():
    with FakeOpenAIServer(faults=FaultPlan(rate_slow=1.0, slow_seconds=30)) as slow:
        [error] = ask(endpoint([slow.base_url], timeout=0.3, max_retries=0), "Why is the sky blue?")

    assert isinstance(error, openai.APITimeoutError)


def test_a_timed_out_request_is_retried(monkeypatch):
    waits = count_retries(monkeypatch)
    with FakeOpenAIServer(faults=FaultPlan(rate_slow=1.0, slow_seconds=30)) as slow, FakeOpenAIServer() as up:
        config = endpoint([slow.base_url, up.base_url], timeout=0.3, max_retries=1)
        [reply] = ask(config, "Why is the sky blue?")
        timed_out, served = slow.stats["slow"], up.stats["requests"]

    assert reply.text.startswith("Reply to:")
    assert len(waits) == 1 and timed_out == 1 and served == 1


# -- why the loop is the backend's own ---------------------------------------------------------


def test_a_request_backing_off_frees_its_slot_for_another(monkeypatch):
    # One slot. A is rate-limited; its wait before retrying ends only once the server has received
    # B, which was queued behind A. Had A kept the slot while waiting (as the client's internal
    # retries would), B could not be sent and the wait would give up.
    server = FakeOpenAIServer(faults=FaultPlan(fail_first_n=1))
    sent_during_wait = []

    async def wait_for_b(seconds):
        for _ in range(1000):  # ten seconds at most, spent only when the behaviour is broken
            if server.stats["requests"] >= 2:
                break
            await asyncio.sleep(0.01)
        sent_during_wait.append(asked(server)[1:2] == ["question B"])

    monkeypatch.setattr(openai_http, "_wait_before_retry", wait_for_b)
    with server:
        replies = ask(endpoint([server.base_url], max_concurrency=1), "question A", "question B")
        order = asked(server)

    assert all(r.text.startswith("Reply to:") for r in replies)
    assert sent_during_wait == [True]
    assert order == ["question A", "question B", "question A"]


def test_a_retry_goes_to_another_replica():
    # Replica `down` fails every request; one retry is enough because it is sent to `up`.
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as down, FakeOpenAIServer() as up:
        config = endpoint([down.base_url, up.base_url], max_retries=1, max_concurrency=1)
        replies = ask(config, *(f"question {i}" for i in range(6)))
        failed, served = down.stats["requests"], up.stats["requests"]

    assert all(not isinstance(r, Exception) for r in replies), replies
    assert served == 6
    assert failed >= 1  # the least-busy choice did send some first attempts to `down`


def test_every_attempt_is_paced(monkeypatch):
    taken = []
    original = openai_http._Pacer.take

    async def counting_take(self, amount):
        taken.append(amount)
        await original(self, amount)

    monkeypatch.setattr(openai_http._Pacer, "take", counting_take)
    with FakeOpenAIServer(faults=FaultPlan(fail_first_n=2)) as server:
        [reply] = ask(endpoint([server.base_url], requests_per_minute=600), "Why is the sky blue?")

    assert reply.text.startswith("Reply to:")
    assert len(taken) == server.stats["requests"] == 3
