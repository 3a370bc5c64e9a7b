"""An OpenAI-compatible server: OpenAI, vLLM, TGI, llama.cpp server, Ollama.

A role with `prompt_format: chat` posts its messages to `/chat/completions` (the server applies
the model's chat template); one with `prompt_format: raw` posts `render_raw(messages)` as the
`prompt` of a plain text completion to `/completions` (no template at all, as the SPRI authors
prompted Prometheus).

Requests are bounded (`max_concurrency` in flight per server URL), spread over replica URLs
by load (the least busy URL gets the next request), optionally paced to requests and tokens
per minute, and retried with exponential backoff and jitter.

Who retries, and why here rather than inside the `openai` client: the client's own retry loop
(`max_retries` on `AsyncOpenAI`) sleeps between attempts *inside* the request, so it would keep
this pool's concurrency slot while it backs off, resend to the same URL however many replicas
are idle, and skip the requests- and tokens-per-minute pacers. So the client is built with
`max_retries=0` and `_ServerPool.send` is the one retry loop: it releases the slot while it backs
off, sends each retry to another replica when there is one, and paces every attempt
(tests/test_openai_retries.py shows each of the three). What the client does well is reused, not
rewritten: which replies are worth retrying (408, 409, 429, 5xx, and `x-should-retry: true/false`
overriding that) and how long the server asked to wait (`retry-after-ms`, `Retry-After` in
seconds or as an HTTP date) come from the client's own `_should_retry` and
`_parse_retry_after_header`. On top of that this loop retries what the client cannot see as
failures: timeouts and connection errors, bodies that are not JSON, and replies without choices.
Other 4xx replies (bad request, auth) are not retried: sending the same request again cannot fix them.

How a completion is posted, and why not through the SDK's request path: each replica URL has one
`aiohttp.ClientSession` (the SDK's headers and the key as a bearer token, a JSON body, the role's
`timeout` for the whole request, the environment's proxy), and a 2xx reply's JSON is read as dicts,
whatever its content-type. The SDK's path, even its lightest form (`AsyncOpenAI.post(...,
cast_to=object)` over its aiohttp transport), builds per request its pydantic request options,
httpx Request, URL and Headers models around the aiohttp call, and an APIResponse: at C=256
requests in flight that CPU bounded throughput (docs/benchmarks.md, "Generation": the client's CPU per call and
the scheduling ratio before and after). What
stays the SDK's: a non-2xx reply becomes its own exception (`_make_status_error_from_response`:
BadRequestError, RateLimitError, InternalServerError, ..., with the reply's headers, which the retry
rule above reads), a failure to connect is its APIConnectionError and a timeout its APITimeoutError,
and `start()`'s check lists the models with the SDK's client.

Critiques of a role with `score: constrained | expected` (`critique()`, formats in
`spri_sft.llm.critic_format`) send `"structured_outputs": {"regex": CRITIC_REGEX}` (vLLM's field
since it removed `guided_regex` in 0.12), so the reply ends "[RESULT] n". A reply cut by max_tokens
before its marker, and every `expected` critique, is continued from its text up to "[RESULT] " with
one more request of one token: a chat role sends the text as the final assistant message with
`continue_final_message: true, add_generation_prompt: false` and `logprobs: true, top_logprobs: 20`;
a raw role appends it to the prompt and sends `logprobs: 20`; the digit is constrained by
DIGIT_REGEX and `expected` reads the digits' probabilities from the top log-probabilities (vLLM
reports them before any processing: temperature 1, unconstrained). `start()` probes the server
once: a server that refuses these fields, or ignores them (vLLM accepts unknown fields and only
logs them), is said in one line and the role falls back to `score: parse`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field, replace

import aiohttp
import openai
import yarl
from aiohttp.helpers import get_env_proxy_for_url

try:  # the HTTP models the SDK's errors carry: httpx2 since openai 3, httpx before
    import httpx2 as sdk_http
except ImportError:  # pragma: no cover - an openai older than 3
    import httpx as sdk_http

from spri_sft.errors import UserError
from spri_sft.llm.base import Completion, EndpointConfig, render_raw
from spri_sft.llm.critic_format import (
    CRITIC_REGEX,
    DIGIT_REGEX,
    digit_distribution,
    likeliest,
    score_prefix,
    scored_digit,
)

logger = logging.getLogger(__name__)

# Backoff: BACKOFF_BASE * 2**attempt, capped, times a random factor in [0.5, 1] so that many
# clients hit by the same 429 do not all come back at the same moment. A server's own
# Retry-After / retry-after-ms is honoured when it asks for longer.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0

# Body fields a server may not know. One it refuses (a 400 or 422 naming the field as unknown:
# OpenAI's "Unrecognized request argument", pydantic's "Extra inputs are not permitted", serde's
# "unknown field") is logged once and left out of every later request to that server, instead of
# failing every request. A 400 about the field's value (vLLM: min_tokens above max_tokens) stays an error.
OPTIONAL_FIELDS = ("min_tokens",)
# vLLM's cap on top log-probabilities per position (--max-logprobs, default 20).
TOP_LOGPROBS = 20
# The probe's regex: a short reply in the critic format that no model writes unasked.
PROBE_REGEX = r"Feedback: [a-z ]{1,24}\[RESULT\] [1-5]"
PROBE_MESSAGES = [{"role": "user", "content": "Say hello."}]
_UNKNOWN_FIELD = re.compile(r"unrecognized|unknown|extra|not permitted|unexpected|unsupported|not supported", re.I)


class MalformedReply(Exception):
    """The server answered 200 but the body is not a usable completion."""


@dataclass(frozen=True)
class _Route:
    """One of the two completion endpoints: where to post, and where a choice of its reply holds the text."""

    path: str
    chat: bool

    def text_of(self, choice: dict) -> str | None:
        if self.chat:
            message = choice.get("message")
            return (message.get("content") or "") if isinstance(message, dict) else None
        text = choice.get("text")
        return text if isinstance(text, str) else None


CHAT = _Route("/chat/completions", chat=True)
TEXT = _Route("/completions", chat=False)


@dataclass
class _Replica:
    url: str
    client: openai.AsyncOpenAI  # lists models, and turns error replies into the SDK's exceptions
    session: aiohttp.ClientSession | None = None  # posts completions; opened by the first one (it needs the loop)
    session_loop: asyncio.AbstractEventLoop | None = None  # the loop it belongs to: another run opens its own
    proxy: yarl.URL | None = None  # the environment's, read when the session opens
    proxy_auth: aiohttp.BasicAuth | None = None
    in_flight: int = 0
    served: int = 0
    refused_fields: set[str] = field(default_factory=set)


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
        self.score_setting = config.score
        self.score_mode = config.score  # "parse" after a failed probe (`start`)

    def with_sampling(self, config: EndpointConfig) -> OpenAIChat:
        """Another role served by the same URLs: it shares the connection pool, concurrency and pacing,
        and keeps its own decoding settings and prompt_format."""
        return OpenAIChat(config, pool=self.pool)

    async def start(self) -> None:
        await self.pool.check(self.model)
        if self.score_mode != "parse":
            missing = await self._probe_scoring()
            if missing:
                logger.warning(
                    "%s: critic score %r needs %s; scoring %s's critiques by parsing their text instead (score: parse)",
                    ", ".join(self.config.base_url),
                    self.score_mode,
                    missing,
                    self.model,
                )
                self.score_mode = "parse"

    async def chat(self, messages: list[dict[str, str]]) -> Completion:
        route, body, prompt_chars = self._request(messages)
        return await self.pool.send(route, body, estimated_tokens=prompt_chars / 4 + self.config.max_new_tokens)

    async def critique(self, messages: list[dict[str, str]]) -> Completion:
        """One critique in the critic format (module docstring), its score set; `expected` adds the
        digits' distribution, whose likeliest digit is then the score."""
        route, body, prompt_chars = self._request(messages)
        body["structured_outputs"] = {"regex": CRITIC_REGEX}
        reply = await self.pool.send(route, body, estimated_tokens=prompt_chars / 4 + self.config.max_new_tokens)
        score = scored_digit(reply.text)
        if score is not None and self.score_mode == "constrained":
            return replace(reply, score=score)
        prefix = score_prefix(reply.text)
        digit = await self._continue_with_digit(messages, prefix, logprobs=self.score_mode == "expected")
        distribution = digit_distribution(digit.top_logprobs or {}) if self.score_mode == "expected" else None
        chosen = scored_digit(prefix + digit.text)
        if distribution is not None:
            chosen = likeliest(distribution)
        return Completion(
            text=prefix + (str(chosen) if chosen is not None else digit.text),
            prompt_tokens=reply.prompt_tokens + digit.prompt_tokens,
            completion_tokens=reply.completion_tokens + digit.completion_tokens,
            finish_reason=reply.finish_reason,
            score=chosen,
            score_distribution=distribution,
        )

    async def _continue_with_digit(self, messages: list[dict[str, str]], prefix: str, logprobs: bool) -> Completion:
        """The one token after `prefix` (a critique up to "[RESULT] "), constrained to a digit."""
        route, body, prompt_chars = self._request(messages, continue_from=prefix)
        body.pop("min_tokens", None)  # one token: a min_tokens above it is a 400
        body.update(max_tokens=1, structured_outputs={"regex": DIGIT_REGEX})
        if logprobs:
            body.update(_logprobs_fields(route))
        return await self.pool.send(route, body, estimated_tokens=prompt_chars / 4 + 1)

    async def _probe_scoring(self) -> str | None:
        """What the servers lack for this role's score mode (a phrase for the notice), or None."""
        route, body, _ = self._request(PROBE_MESSAGES)
        body.pop("min_tokens", None)
        body.update(temperature=0.0, max_tokens=48, structured_outputs={"regex": PROBE_REGEX})
        try:
            reply = await self.pool.send(route, body, estimated_tokens=60)
        except openai.APIStatusError as err:
            return f"structured_outputs, which the server refused (HTTP {err.status_code})"
        if not re.fullmatch(PROBE_REGEX, reply.text):
            return "structured_outputs, which the server ignored (its reply did not follow the regex)"
        if self.score_mode != "expected":
            return None
        try:
            digit = await self._continue_with_digit(PROBE_MESSAGES, "Feedback: fine [RESULT] ", logprobs=True)
        except openai.APIStatusError as err:
            return f"logprobs of a continued reply, which the server refused (HTTP {err.status_code})"
        if not digit.top_logprobs:
            return "logprobs of a continued reply, which the server did not send"
        return None

    def _request(self, messages: list[dict[str, str]], continue_from: str | None = None) -> tuple[_Route, dict, int]:
        """The route, body and prompt length of one request; `continue_from` is the start of the reply,
        which the model continues (a chat role's final assistant message, a raw role's prompt tail)."""
        config = self.config
        # A plain JSON body: vLLM and TGI read top_k and min_tokens from it; OpenAI itself rejects unknown fields.
        body = {
            "model": config.model,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_new_tokens,
        }
        if config.prompt_format == "raw":
            route, body["prompt"] = TEXT, render_raw(messages) + (continue_from or "")
            prompt_chars = len(body["prompt"])
        else:
            route = CHAT
            if continue_from is None:
                body["messages"] = messages
            else:
                body["messages"] = messages + [{"role": "assistant", "content": continue_from}]
                body.update(continue_final_message=True, add_generation_prompt=False)
            prompt_chars = sum(len(m["content"]) for m in body["messages"])
        if config.top_k is not None:
            body["top_k"] = config.top_k
        if config.min_new_tokens is not None:
            body["min_tokens"] = config.min_new_tokens
        return route, body, prompt_chars

    async def close(self) -> None:
        await self.pool.close()


class _ServerPool:
    def __init__(self, config: EndpointConfig):
        self.config = config
        # A local server needs no key, but the client insists on one.
        self._api_key = os.environ.get(config.api_key_env) or "EMPTY"
        self.replicas = [
            _Replica(
                url,
                openai.AsyncOpenAI(
                    base_url=url,
                    api_key=self._api_key,
                    max_retries=0,  # retried by `send`, which frees the slot while it waits (module docstring)
                    timeout=config.timeout,
                ),
            )
            for url in config.base_url
        ]
        for replica in self.replicas:
            replica.proxy, replica.proxy_auth = _env_proxy(replica.url)
        self._slot_count = max(1, config.max_concurrency) * len(self.replicas)
        self._slots = asyncio.Semaphore(self._slot_count)
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
            except openai.APIStatusError as err:
                if err.status_code == 404 and await _serves_under_v1(replica):
                    raise UserError(_without_v1_message(replica.url, "/models")) from None
                continue  # some servers do not implement /models; chat requests will tell
            served = [m.id for m in models.data]
            if served and model not in served:
                raise UserError(f"{replica.url} does not serve model {model!r} (it serves: {', '.join(served)})")
        self._checked.add(model)

    async def send(self, route: _Route, body: dict, estimated_tokens: float) -> Completion:
        """Send one request, retrying as the module docstring says: each attempt is paced, holds a slot
        only while its request is open, and goes to the least busy replica other than the one that just
        failed (when there are several)."""
        attempt = 0
        failed_on: _Replica | None = None
        while True:
            if self._requests:
                await self._requests.take(1)
            if self._tokens:
                await self._tokens.take(estimated_tokens)
            async with self._slots:
                replica = self._pick(avoid=failed_on)
                try:
                    return await self._send_once(replica, route, body)
                except Exception as err:
                    if attempt >= self.config.max_retries or not _retryable(replica.client, err):
                        raise
                    delay = _backoff(attempt, replica.client, err)
            await _wait_before_retry(delay)  # outside the slot: other requests use it meanwhile
            failed_on = replica if len(self.replicas) > 1 else None
            attempt += 1

    def _pick(self, avoid: _Replica | None) -> _Replica:
        candidates = [r for r in self.replicas if r is not avoid] or self.replicas
        return min(candidates, key=lambda r: (r.in_flight, r.served))

    async def _send_once(self, replica: _Replica, route: _Route, body: dict) -> Completion:
        replica.in_flight += 1
        replica.served += 1
        try:
            reply = await self._post(replica, route, body)
        finally:
            replica.in_flight -= 1
        choices = reply.get("choices") if isinstance(reply, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        text = route.text_of(choice) if choice else None
        if text is None:
            raise MalformedReply(f"{replica.url} sent a reply without choices")
        usage = reply.get("usage") or {}
        completion = Completion(
            text=text.strip(),
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            finish_reason=choice.get("finish_reason") or "stop",
        )
        if "logprobs" in body:
            completion.top_logprobs = _first_top_logprobs(choice)
        return completion

    async def _post(self, replica: _Replica, route: _Route, body: dict):
        """The reply to `body` without the fields this replica refused; a newly refused optional field
        is dropped (and said once) and the request sent again at once, which costs no retry."""
        while True:
            sent = {k: v for k, v in body.items() if k not in replica.refused_fields}
            try:
                return await self._post_json(replica, route.path, sent)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as err:
                said = str(err)
                refused = next((f for f in OPTIONAL_FIELDS if f in sent and f in said), None)
                if refused is None or not _UNKNOWN_FIELD.search(said):
                    raise
                if refused not in replica.refused_fields:  # concurrent requests may learn it together
                    replica.refused_fields.add(refused)
                    logger.warning(
                        "%s refused the request field %r (HTTP %s); sending requests to it without %r from now on",
                        replica.url,
                        refused,
                        err.status_code,
                        refused,
                    )

    async def _post_json(self, replica: _Replica, path: str, body: dict) -> object:
        """The parsed JSON of a 2xx reply to `body` posted to the replica's `path`; any other reply is the
        exception the SDK raises for it, a failure to connect or to be answered in time its
        APIConnectionError or APITimeoutError (module docstring: why not the SDK's own request path)."""
        url = replica.url.rstrip("/") + path  # what the SDK makes of base_url and path
        data = json.dumps(body).encode()
        try:
            posted = self._session(replica).post(url, data=data, proxy=replica.proxy, proxy_auth=replica.proxy_auth)
            async with posted as response:
                status, headers, content = response.status, response.raw_headers, await response.read()
        except TimeoutError as err:  # aiohttp's timeouts are TimeoutErrors (some also ClientErrors)
            raise openai.APITimeoutError(request=sdk_http.Request("POST", url)) from err
        except aiohttp.ClientError as err:
            cause = f"Connection error: {type(err).__name__}: {err}"
            raise openai.APIConnectionError(message=cause, request=sdk_http.Request("POST", url)) from err
        if not 200 <= status < 300:
            # aiohttp has already decoded a compressed body; the SDK's response must not decode it again.
            headers = [(name, value) for name, value in headers if name.lower() != b"content-encoding"]
            request = sdk_http.Request("POST", url)
            error_reply = sdk_http.Response(status, headers=headers, content=content, request=request)
            error = replica.client._make_status_error_from_response(error_reply)
            if status == 404 and not _under_v1(replica.url):
                error = type(error)(_without_v1_message(replica.url, path), response=error.response, body=error.body)
            raise error
        try:  # whatever its content-type says: some proxies label JSON text/plain
            return json.loads(content)
        except ValueError as err:  # not JSON, or not UTF-8
            raise MalformedReply(f"{replica.url} sent a body that is not JSON ({err})") from None

    def _session(self, replica: _Replica) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if replica.session is None or replica.session.closed or replica.session_loop is not loop:
            # The SDK's own headers (JSON in and out, its User-Agent, OpenAI-Organization and -Project when
            # set), less those it leaves out (Omit), and the key as a bearer token.
            headers = {name: value for name, value in replica.client.default_headers.items() if isinstance(value, str)}
            replica.session = aiohttp.ClientSession(
                headers={**headers, "Authorization": f"Bearer {self._api_key}"},
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                # The pool's slots bound the requests in flight; one replica may hold all of them.
                connector=aiohttp.TCPConnector(limit=self._slot_count),
            )
            replica.session_loop = loop
        return replica.session

    async def close(self) -> None:
        for replica in self.replicas:  # a session of an earlier run's loop went with that loop
            if replica.session is not None and replica.session_loop is asyncio.get_running_loop():
                await replica.session.close()  # a later run opens a new one (`_session`)
        if self._closed:
            return
        self._closed = True
        for replica in self.replicas:
            await replica.client.close()


def _env_proxy(url: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
    """The proxy HTTP_PROXY / HTTPS_PROXY name for `url` (NO_PROXY respected), read once, as the SDK's client does.

    aiohttp's `trust_env=True` would read them, and ~/.netrc, on a worker thread for every request
    (two thread hand-offs per call). aiohttp speaks only to http:// proxies: one the environment
    names that it would ignore (an https:// or socks proxy, or ALL_PROXY) is refused in one line
    rather than bypassed.
    """
    from urllib.request import getproxies, proxy_bypass

    target = yarl.URL(url)
    if target.host is not None and proxy_bypass(target.host):
        return None, None
    with contextlib.suppress(LookupError):  # no usable proxy for this URL
        return get_env_proxy_for_url(target)
    named = getproxies()
    unusable = named.get(target.scheme) or named.get("all")
    if unusable:
        raise UserError(
            f"{url}: the environment names the proxy {unusable!r} (HTTP(S)_PROXY / ALL_PROXY), which spri-sft's "
            "HTTP client cannot use (only http:// proxies): set an http:// proxy or add the host to NO_PROXY"
        )
    return None, None


def _under_v1(url: str) -> bool:
    """Whether a base URL ends in /v1, where OpenAI-compatible servers (vLLM, TGI, llama.cpp, Ollama) serve."""
    return yarl.URL(url).path.rstrip("/").endswith("/v1")


def _without_v1_message(url: str, path: str) -> str:
    """What a 404 at a base URL without /v1 says: the likeliest cause (`http://host:8000` for vLLM's
    `http://host:8000/v1`), and the base_url to set."""
    return (
        f"404 Not Found at {url.rstrip('/')}{path}: OpenAI-compatible servers serve under /v1 — "
        f"set base_url to {url.rstrip('/')}/v1"
    )


async def _serves_under_v1(replica: _Replica) -> bool:
    """Whether a replica whose base URL lacks /v1 (and 404s there) lists models at base URL + /v1."""
    if _under_v1(replica.url):
        return False
    try:
        await replica.client.with_options(base_url=replica.url.rstrip("/") + "/v1").models.list(timeout=15.0)
    except openai.OpenAIError:
        return False
    return True


def _logprobs_fields(route: _Route) -> dict:
    """Ask for the top log-probabilities of each generated token (the two endpoints spell it differently)."""
    if route is CHAT:
        return {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
    return {"logprobs": TOP_LOGPROBS}


def _first_top_logprobs(choice: dict) -> dict[str, float] | None:
    """{token: logprob} of the first generated token's alternatives, as either endpoint sends them."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if content:  # chat: content[i].top_logprobs[j] = {token, logprob, ...}
        return {alt["token"]: alt["logprob"] for alt in (content[0].get("top_logprobs") or [])} or None
    top = logprobs.get("top_logprobs")
    if top:  # completions: top_logprobs[i] is {token: logprob}
        return dict(top[0] or {}) or None
    return None


async def _wait_before_retry(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _retryable(client: openai.AsyncOpenAI, err: Exception) -> bool:
    if isinstance(err, openai.APIStatusError):
        # The SDK's own rule (private but unchanged since openai 1.0; the retry tests pin it): 408, 409,
        # 429 and 5xx, unless `x-should-retry` says otherwise or Retry-After asks for over two minutes.
        return client._should_retry(err.response)
    return isinstance(err, (openai.APIConnectionError, openai.APIResponseValidationError, MalformedReply))


def _backoff(attempt: int, client: openai.AsyncOpenAI, err: Exception) -> float:
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
    response = getattr(err, "response", None)
    if response is None:
        return delay
    # retry-after-ms, then Retry-After as seconds or as an HTTP date, parsed by the SDK.
    asked = client._parse_retry_after_header(response.headers)
    return max(delay, asked) if asked is not None and math.isfinite(asked) else delay
