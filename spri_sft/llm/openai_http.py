"""An OpenAI-compatible chat-completions server: OpenAI, vLLM, TGI, llama.cpp server, Ollama.

Requests are bounded (`max_concurrency` in flight per server URL), spread over replica URLs
by load (the least busy URL gets the next request), optionally paced to requests and tokens
per minute, and retried with exponential backoff and jitter on 429s, 5xx replies, timeouts,
connection errors and malformed reply bodies. Other 4xx replies (bad request, auth) are not
retried: sending the same request again cannot fix them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletion

from spri_sft.errors import UserError
from spri_sft.llm.base import Completion, EndpointConfig

# Backoff: BACKOFF_BASE * 2**attempt, capped, times a random factor in [0.5, 1] so that many
# clients hit by the same 429 do not all come back at the same moment.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


class MalformedReply(Exception):
    """The server answered 200 but the body is not a usable chat completion."""


@dataclass
class _Replica:
    url: str
    client: openai.AsyncOpenAI
    in_flight: int = 0
    served: int = 0


@dataclass
class _Pacer:
    """A token bucket refilled at `per_minute / 60` units per second."""

    per_minute: float
    _level: float = field(init=False)
    _stamp: float = field(init=False, default_factory=lambda: time.monotonic())
    _lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)

    def __post_init__(self):
        self._level = self.per_minute  # a full bucket: the first minute may burst

    async def take(self, amount: float) -> None:
        amount = min(amount, self.per_minute)
        async with self._lock:
            while True:
                now = time.monotonic()
                self._level = min(self.per_minute, self._level + (now - self._stamp) * self.per_minute / 60)
                self._stamp = now
                if self._level >= amount:
                    self._level -= amount
                    return
                await asyncio.sleep((amount - self._level) * 60 / self.per_minute)


class OpenAIChat:
    """One model role on a pool of servers; roles on the same servers share the pool and its limits."""

    def __init__(self, config: EndpointConfig, pool: _ServerPool | None = None):
        if not config.base_url:
            raise UserError(f"model {config.model!r}: backend 'openai' needs base_url (e.g. http://localhost:8000/v1)")
        self.config = config
        self.model = config.model
        self.pool = pool or _ServerPool(config)

    def with_sampling(self, config: EndpointConfig) -> OpenAIChat:
        """Another role served by the same URLs: it shares the connection pool, concurrency and pacing."""
        return OpenAIChat(config, pool=self.pool)

    async def start(self) -> None:
        await self.pool.check(self.model)

    async def chat(self, messages: list[dict[str, str]]) -> Completion:
        config = self.config
        # A plain JSON body: vLLM and TGI read top_k from it; OpenAI itself rejects unknown fields.
        body = {
            "model": config.model,
            "messages": messages,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_new_tokens,
        }
        if config.top_k is not None:
            body["top_k"] = config.top_k
        estimated_tokens = sum(len(m["content"]) for m in messages) / 4 + config.max_new_tokens
        return await self.pool.send(body, estimated_tokens)

    async def close(self) -> None:
        await self.pool.close()


class _ServerPool:
    def __init__(self, config: EndpointConfig):
        self.config = config
        # A local server needs no key, but the client insists on one.
        api_key = os.environ.get(config.api_key_env) or "EMPTY"
        self.replicas = [
            _Replica(
                url,
                openai.AsyncOpenAI(
                    base_url=url,
                    api_key=api_key,
                    max_retries=0,  # retried here, with backoff shared by all requests
                    timeout=config.timeout,
                    # aiohttp's transport costs a fraction of httpx's CPU per request at high concurrency.
                    http_client=openai.DefaultAioHttpClient(timeout=config.timeout),
                ),
            )
            for url in config.base_url
        ]
        self._slots = asyncio.Semaphore(max(1, config.max_concurrency) * len(self.replicas))
        self._requests = _Pacer(config.requests_per_minute) if config.requests_per_minute else None
        self._tokens = _Pacer(config.tokens_per_minute) if config.tokens_per_minute else None
        self._checked: set[str] = set()
        self._closed = False

    async def check(self, model: str) -> None:
        """Fail fast, with the URL, when a server does not answer or does not serve the model."""
        if model in self._checked:
            return
        for replica in self.replicas:
            try:
                models = await replica.client.models.list(timeout=min(self.config.timeout, 15.0))
            except (openai.APIConnectionError, openai.APITimeoutError) as err:
                raise UserError(f"cannot reach {replica.url} ({type(err).__name__}): is the server running?") from None
            except openai.AuthenticationError:
                raise UserError(f"{replica.url} refused the API key (set ${self.config.api_key_env})") from None
            except openai.APIStatusError:
                continue  # some servers do not implement /models; chat requests will tell
            served = [m.id for m in models.data]
            if served and model not in served:
                raise UserError(f"{replica.url} does not serve model {model!r} (it serves: {', '.join(served)})")
        self._checked.add(model)

    async def send(self, body: dict, estimated_tokens: float) -> Completion:
        attempt = 0
        while True:
            if self._requests:
                await self._requests.take(1)
            if self._tokens:
                await self._tokens.take(estimated_tokens)
            try:
                async with self._slots:
                    return await self._send_once(body)
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APITimeoutError,
                openai.APIConnectionError,
                openai.APIResponseValidationError,
                MalformedReply,
            ) as err:
                if attempt >= self.config.max_retries:
                    raise
                await asyncio.sleep(_backoff(attempt, err))
                attempt += 1

    async def _send_once(self, body: dict) -> Completion:
        replica = min(self.replicas, key=lambda r: (r.in_flight, r.served))
        replica.in_flight += 1
        replica.served += 1
        try:
            # `post` with a plain dict skips the SDK's per-request walk of typed params (milliseconds of
            # CPU for a few-shot prompt), which bounds throughput at high concurrency.
            reply = await replica.client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        except json.JSONDecodeError as err:
            raise MalformedReply(f"{replica.url} sent a body that is not JSON ({err})") from None
        finally:
            replica.in_flight -= 1
        if not getattr(reply, "choices", None) or reply.choices[0].message is None:
            raise MalformedReply(f"{replica.url} sent a reply without choices")
        choice = reply.choices[0]
        usage = reply.usage
        return Completion(
            text=(choice.message.content or "").strip(),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "stop",
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for replica in self.replicas:
            await replica.client.close()


def _backoff(attempt: int, err: Exception) -> float:
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
    response = getattr(err, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    try:
        return max(delay, float(retry_after)) if retry_after else delay
    except ValueError:
        return delay
