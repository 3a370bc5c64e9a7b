"""A local OpenAI-compatible completions server that injects faults on purpose.

The integration tests, the resume test and the benchmark talk to this server instead
of a real provider: it runs offline, answers instantly or after a fixed latency, and
can be told to fail in the ways real providers fail (429 rate limits, 500 errors,
replies too slow for the client's timeout, bodies that are not JSON, completions with
no choices). Faults are drawn from a seeded RNG, so a run can be repeated exactly,
and ``fail_first_n`` makes retry tests fully deterministic.

It serves ``POST /v1/chat/completions`` (messages) and ``POST /v1/completions`` (a plain
text ``prompt``) with the same faults, and records every request it received (path, body,
arrival time: `FakeOpenAIServer.received`), so tests can assert the exact prompt sent, the
fields of the body, or the gap a client left between two attempts.

Critic scoring (`score: constrained | expected`): a request's ``structured_outputs.regex`` is
honoured (the reply is made to match it: the reply function's text if it does, else its
feedback rewritten as "Feedback: ... [RESULT] n") unless the server is built with
``structured_outputs="ignore"`` (as a server that accepts unknown fields and drops them does;
``unknown_fields=("structured_outputs",)`` refuses it instead). A continuation of a text ending
"[RESULT] " (chat: a final assistant message with ``continue_final_message``; completions: the
prompt's end) is answered with the likeliest digit of ``digit_logprobs``, and a request asking for
``logprobs`` gets those as the first token's ``top_logprobs`` (unless ``logprobs=False``).

Critiques that improve (``critic_scores=(2, 5)``): the critic scores by round instead of always 5,
so a revision scores higher than the version before it and records hold preference pairs. A
critique's round is how many times this server has been asked the same critique: its prompt
with every text this server wrote as a reply left out (the version under critique, and the
principles it is judged by), so the first version of each stage of each record gets
``critic_scores[0]``, its revision ``critic_scores[1]``, and later rounds the last score.
It sets the score a reply's text carries (``score: parse`` and ``constrained``); under ``score:
expected`` the digit still follows ``digit_logprobs``.

It speaks real HTTP, so the code under test uses its ordinary client (the official
``openai`` package included) and its retry, timeout and parsing paths are exercised
for real.

In-process, as a context manager (the server runs in a background thread)::

    with FakeOpenAIServer(latency=0.05, faults=FaultPlan(rate_429=0.1), seed=0) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        ...
        print(server.stats, server.max_in_flight)

As a separate process, serving until SIGTERM/SIGINT; the first line on stdout tells
the port, which matters with ``--port 0``::

    $ PYTHONPATH=tests python -m support.fake_openai_server --port 0 --latency 0.05 --rate-429 0.1
    listening on http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from support.threaded_server import ThreadedServer

logger = logging.getLogger(__name__)

ReplyFn = Callable[[list[dict[str, Any]], dict[str, Any]], str]
"""Computes the assistant's reply text from the request's messages and its whole JSON body.
A ``/v1/completions`` request passes its prompt as one user message (the body keeps ``prompt``)."""

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

DEFAULT_MODEL_NAME = "fake-model"

# The critic prompts of this package ask for a reply ending "[RESULT] <score>"; the
# default reply function recognises them by this marker and answers with a parseable score.
CRITIC_MARKER = "[RESULT]"
CRITIC_REPLY = "Feedback: The text follows the guidance well. [RESULT] 5"

# The log-probabilities of the token after "[RESULT] ": mostly 5, some 4 and 3, and a non-digit the
# client must leave out (probabilities over the digits: 0.74, 0.16, 0.10 after renormalising).
DEFAULT_DIGIT_LOGPROBS = {"5": math.log(0.666), "4": math.log(0.144), "3": math.log(0.09), "\n": math.log(0.1)}
SCORE_CONTINUATION = "[RESULT] "

# Cut off mid-array so that no JSON parser, however lenient, accepts it.
MALFORMED_BODY = '{"choices": ['

# Fault kinds. Each is also a key of `FakeOpenAIServer.stats`, next to the keys below.
FAULT_429 = "429"
FAULT_500 = "500"
FAULT_SLOW = "slow"
FAULT_MALFORMED = "malformed"
FAULT_EMPTY_CHOICES = "empty_choices"
FAULT_KINDS = (FAULT_429, FAULT_500, FAULT_SLOW, FAULT_MALFORMED, FAULT_EMPTY_CHOICES)

STAT_REQUESTS = "requests"  # every POST to either completions endpoint, whatever became of it
STAT_OK = "ok"  # well-formed completions sent (slow ones included, if they got that far)
STAT_BAD_REQUEST = "bad_request"  # 400s: the request itself was invalid
STAT_REPLY_FN_ERROR = "reply_fn_error"  # reply_fn raised; answered with a 500
STAT_KEYS = (STAT_REQUESTS, STAT_OK, *FAULT_KINDS, STAT_BAD_REQUEST, STAT_REPLY_FN_ERROR)


@dataclass(frozen=True)
class FaultPlan:
    """Which faults the server injects, and how often.

    Each ``rate_*`` is the probability (0..1) that a request gets that fault; the rates
    must sum to at most 1 because a request gets at most one fault. The first
    ``fail_first_n`` requests of a server get a ``fail_first_status`` error (429 unless
    told otherwise) regardless of the rates (and consume no random draw), so retry tests
    need no luck. Every injected error reply (429, 500, fail-first) carries
    ``error_headers``: the default tells clients to retry at once; a test of how a client
    honours ``retry-after-ms``, an HTTP-date ``Retry-After`` or ``x-should-retry`` sets them.
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    rate_malformed: float = 0.0
    rate_empty_choices: float = 0.0
    slow_seconds: float = 30.0
    fail_first_n: int = 0
    fail_first_status: int = 429
    error_headers: tuple[tuple[str, str], ...] = (("Retry-After", "0"),)

    def __post_init__(self) -> None:
        for kind, rate in self._bands():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"FaultPlan rate for {kind!r} must be in [0, 1], got {rate}")
        total = sum(rate for _, rate in self._bands())
        if total > 1.0 + 1e-9:
            raise ValueError(f"FaultPlan rates must sum to at most 1, got {total}")
        if self.slow_seconds < 0:
            raise ValueError(f"slow_seconds must be >= 0, got {self.slow_seconds}")
        if self.fail_first_n < 0:
            raise ValueError(f"fail_first_n must be >= 0, got {self.fail_first_n}")
        if not 400 <= self.fail_first_status <= 599:
            raise ValueError(f"fail_first_status must be an HTTP error status, got {self.fail_first_status}")

    def _bands(self) -> tuple[tuple[str, float], ...]:
        return (
            (FAULT_429, self.rate_429),
            (FAULT_500, self.rate_500),
            (FAULT_SLOW, self.rate_slow),
            (FAULT_MALFORMED, self.rate_malformed),
            (FAULT_EMPTY_CHOICES, self.rate_empty_choices),
        )

    def draw(self, rng: random.Random) -> str | None:
        """Pick the fault for one request (a ``FAULT_*`` kind), or None for a normal reply."""
        # Exactly one uniform draw per request, split into consecutive bands: each rate
        # is exactly its fault's probability, and the fault sequence depends only on
        # the seed and the order of arrival, not on which rates are non-zero.
        u = rng.random()
        upper = 0.0
        for kind, rate in self._bands():
            upper += rate
            if u < upper:
                return kind
        return None


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message, whether its content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def default_reply(messages: list[dict[str, Any]], request_json: dict[str, Any]) -> str:
    """Answer critic prompts with a perfect score, anything else with an echo of the user."""
    if _is_critique(messages):
        return CRITIC_REPLY
    last_user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    return "Reply to: " + " ".join(last_user.split()[:12])


def _comply(regex: str, text: str, digit: str) -> str | None:
    """`text` made to match `regex` as a constrained decoder would, or None when this fake cannot.
    It knows the critic regexes of `spri_sft.llm.critic_format` and the probe's: a bare digit, or
    the reply's feedback (or a stock one) as "Feedback: ... [RESULT] n"."""
    found = re.search(r"\[RESULT\]\s*([1-5])", text)
    score = found.group(1) if found else digit
    feedback = re.sub(r"^\s*Feedback:\s*", "", text.split("[RESULT]")[0]).replace("[", "").replace("]", "").strip()
    for candidate in (text, digit, f"Feedback: {feedback} [RESULT] {score}", f"Feedback: fine [RESULT] {score}"):
        if re.fullmatch(regex, candidate):
            return candidate
    return None


def _logprobs_body(chat: bool, text: str, first_top: Mapping[str, float], count: int) -> dict[str, Any]:
    """The `logprobs` of a choice in the endpoint's own shape: words stand in for tokens, the first
    one's alternatives are `first_top` (its `count` likeliest), the others have none."""
    words = text.split() or [""]
    tops = [dict(sorted(first_top.items(), key=lambda kv: -kv[1])[:count])] + [{w: 0.0} for w in words[1:]]
    if chat:
        return {
            "content": [
                {
                    "token": word, "logprob": top.get(word, 0.0), "bytes": None,
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()],
                }
                for word, top in zip(words, tops)
            ]
        }  # fmt: skip
    return {
        "tokens": words,
        "token_logprobs": [top.get(word, 0.0) for word, top in zip(words, tops)],
        "top_logprobs": tops,
        "text_offset": [0] * len(words),
    }


def _word_count(text: str) -> int:
    return len(text.split())


def _error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": error_type}}, status=status, headers=headers)


@dataclass(frozen=True)
class ReceivedRequest:
    """One POST the server received, recorded on arrival (before any fault or validation)."""

    path: str  # CHAT_PATH or COMPLETIONS_PATH
    body: Any  # the parsed JSON body, or None when it was not JSON
    received_at: float  # time.monotonic() on arrival


def _validation_problem(path: str, body: Any, unknown_fields: frozenset[str]) -> str | None:
    """Why a completions request body is unacceptable, or None if it is fine."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    refused = sorted(unknown_fields & body.keys())
    if refused:
        # OpenAI's own wording; clients recognise the refused field by its name in the message.
        return f"Unrecognized request argument supplied: {refused[0]}"
    if path == COMPLETIONS_PATH:
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return "'prompt' must be a non-empty string (this fake server takes one prompt per request)"
    else:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list"
        if not all(isinstance(m, dict) for m in messages):
            return "every message must be an object"
    if body.get("n") not in (None, 1):
        return "this fake server supports only n=1"
    if body.get("stream"):
        return "this fake server does not support streaming"
    for key in ("max_tokens", "max_completion_tokens"):
        limit = body.get(key)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            return f"'{key}' must be a positive integer"
    return None


class FakeOpenAIServer(ThreadedServer):
    """An OpenAI-compatible HTTP server on localhost with injected faults.

    Use it as a context manager (or call `start` / `stop`) to serve from a background
    thread with its own event loop, or call `serve_forever` to serve from the calling
    thread until SIGINT/SIGTERM.

    Every request is handled concurrently - there is deliberately no limit - so that
    ``max_in_flight`` shows how much concurrency the client under test achieved.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        faults: FaultPlan | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = DEFAULT_MODEL_NAME,
        reply_fn: ReplyFn = default_reply,
        shutdown_timeout: float = 0.5,
        unknown_fields: Collection[str] = (),
        structured_outputs: str = "honour",
        logprobs: bool = True,
        digit_logprobs: Mapping[str, float] = DEFAULT_DIGIT_LOGPROBS,
        critic_scores: Sequence[int] | None = None,
    ) -> None:
        """
        Args:
            latency: seconds every 200 reply waits before it is sent (slow faults wait
                ``faults.slow_seconds`` instead; 429 and 500 are answered at once).
            faults: which faults to inject; None injects none.
            seed: seeds this server's own RNG, so fault sequences repeat run to run.
            host: interface to listen on.
            port: port to listen on; 0 picks a free one (see `port` once started).
            model: the model listed by ``GET /v1/models`` and used when a request
                names none.
            reply_fn: computes the reply text; see `default_reply`.
            shutdown_timeout: how long `stop` lets requests still being handled (a
                slow fault's sleep, say) finish before cancelling them; aiohttp waits
                this long twice, so `stop` can take about twice this.
            unknown_fields: body fields this server refuses with a 400 naming the field,
                as api.openai.com refuses ``min_tokens`` or ``top_k`` (vLLM accepts both).
            structured_outputs: "honour" makes replies match ``structured_outputs.regex``;
                "ignore" answers as if the field were absent.
            logprobs: whether a request asking for logprobs gets them.
            digit_logprobs: {token: logprob} of the token after "[RESULT] " (module docstring).
            critic_scores: the critic's score of each round of the same critique, the last one
                repeated (module docstring); None: `reply_fn` answers critiques too.
        """
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency}")
        super().__init__()
        self.latency = latency
        self.faults = faults if faults is not None else FaultPlan()
        self.seed = seed
        self.host = host
        self.model = model
        self.reply_fn = reply_fn
        self.shutdown_timeout = shutdown_timeout
        self.unknown_fields = frozenset(unknown_fields)
        if structured_outputs not in ("honour", "ignore"):
            raise ValueError(f"structured_outputs must be 'honour' or 'ignore', got {structured_outputs!r}")
        self.structured_outputs = structured_outputs
        self.logprobs = logprobs
        self.digit_logprobs = dict(digit_logprobs)
        if critic_scores is not None and (not critic_scores or not all(1 <= s <= 5 for s in critic_scores)):
            raise ValueError(f"critic_scores must be scores from 1 to 5, got {critic_scores!r}")
        self.critic_scores = tuple(critic_scores) if critic_scores is not None else None
        self._requested_port = port
        self._rng = random.Random(seed)

        # Handlers all run on the server's loop, but the counters are read from test
        # threads; the lock makes every read a consistent snapshot.
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._in_flight = 0
        self._max_in_flight = 0
        self._received: list[ReceivedRequest] = []
        self._written: set[str] = set()  # every non-critique reply sent, for the critique rounds
        self._critique_rounds: dict[str, int] = {}

    # -- public API --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually listened on (the free one picked when asked for port 0)."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client as ``base_url``, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters: ``requests``, ``ok``, one per fault kind
        (``429``, ``500``, ``slow``, ``malformed``, ``empty_choices``; the
        ``fail_first_n`` replies count under their status, e.g. ``429`` or ``408``),
        ``bad_request`` and ``reply_fn_error``."""
        with self._lock:
            return dict(self._counts)

    @property
    def received(self) -> list[ReceivedRequest]:
        """Every completions request received so far, in order of arrival."""
        with self._lock:
            return list(self._received)

    @property
    def in_flight(self) -> int:
        """How many completions requests are being handled right now."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most completions requests ever handled at once by this server."""
        with self._lock:
            return self._max_in_flight

    thread_name = "fake-openai-server"

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post(CHAT_PATH, self._handle_completions)
        app.router.add_post(COMPLETIONS_PATH, self._handle_completions)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)  # vLLM's readiness route

    def _admit(self) -> tuple[int, str | None]:
        """Count a request in and decide its fault, in order of arrival."""
        # Called before any await, so the request sequence and the random draws follow
        # the order in which requests arrived.
        with self._lock:
            self._counts[STAT_REQUESTS] += 1
            sequence = self._counts[STAT_REQUESTS]
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        if sequence <= self.faults.fail_first_n:
            return sequence, str(self.faults.fail_first_status)
        return sequence, self.faults.draw(self._rng)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _handle_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _handle_completions(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        _, fault = self._admit()
        try:
            return await self._respond(request, arrived, fault)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _respond(self, request: web.Request, arrived: float, fault: str | None) -> web.Response:
        path = request.path
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
            problem: str | None = "request body is not valid JSON"
        else:
            problem = _validation_problem(path, body, self.unknown_fields)
        with self._lock:
            self._received.append(ReceivedRequest(path, body, arrived))
        if problem is not None:
            self._count(STAT_BAD_REQUEST)
            return _error_response(400, problem, "invalid_request_error")

        if fault is not None:
            self._count(fault)
        error_headers = dict(self.faults.error_headers)
        if fault == FAULT_429:
            return _error_response(429, "injected rate limit: please retry", "rate_limit_error", headers=error_headers)
        if fault is not None and fault.isdigit():  # FAULT_500, or a fail-first status
            message = "injected server error" if fault == FAULT_500 else f"injected error {fault}"
            return _error_response(int(fault), message, "server_error", headers=error_headers)

        delay = self.faults.slow_seconds if fault == FAULT_SLOW else self.latency
        if delay > 0:
            await asyncio.sleep(delay)

        if fault == FAULT_MALFORMED:
            return web.Response(text=MALFORMED_BODY, content_type="application/json")

        model = body.get("model") or self.model
        chat = path == CHAT_PATH
        envelope: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-fake-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        if fault == FAULT_EMPTY_CHOICES:
            return web.json_response({**envelope, "choices": []})

        messages: list[dict[str, Any]] = body["messages"] if chat else [{"role": "user", "content": body["prompt"]}]
        critique = self.critic_scores is not None and _is_critique(messages)
        try:
            text = self._scripted_critique(messages) if critique else self.reply_fn(messages, body)
        except Exception as exc:  # noqa: BLE001 - reported to the client, and logged
            logger.exception("FakeOpenAIServer reply_fn raised")
            self._count(STAT_REPLY_FN_ERROR)
            return _error_response(500, f"reply_fn raised {type(exc).__name__}: {exc}", "server_error")

        continued = (
            (messages[-1].get("role") == "assistant" and body.get("continue_final_message") and message_text(messages[-1]))
            if chat else body["prompt"]
        )  # fmt: skip
        likeliest_digit = max(
            (t.strip() for t in self.digit_logprobs if t.strip() in ("1", "2", "3", "4", "5")),
            key=lambda d: self.digit_logprobs.get(d, -math.inf), default="3",
        )  # fmt: skip
        scoring_continuation = bool(continued) and continued.endswith(SCORE_CONTINUATION)
        if scoring_continuation:
            text = likeliest_digit
        regex = (body.get("structured_outputs") or {}).get("regex") if self.structured_outputs == "honour" else None
        if regex is not None:
            complied = _comply(regex, text, likeliest_digit)
            if complied is None:
                self._count(STAT_REPLY_FN_ERROR)
                return _error_response(500, f"fake server cannot satisfy regex {regex!r}", "server_error")
            text = complied

        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        finish_reason = "stop"
        words = text.split()
        if limit is not None and len(words) > limit:
            # Whitespace-separated words stand in for tokens throughout this server.
            text = " ".join(words[:limit])
            finish_reason = "length"

        if self.critic_scores is not None and not critique:
            with self._lock:
                self._written.add(text)
        prompt_tokens = sum(_word_count(message_text(m)) for m in messages)
        completion_tokens = _word_count(text)
        self._count(STAT_OK)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        wanted = (
            body.get("top_logprobs") if chat and body.get("logprobs") else body.get("logprobs") if not chat else None
        )
        if self.logprobs and isinstance(wanted, int) and not isinstance(wanted, bool):
            first_top = self.digit_logprobs if scoring_continuation else {(text.split() or [""])[0]: 0.0}
            choice["logprobs"] = _logprobs_body(chat, text, first_top, wanted)
        return web.json_response(
            {
                **envelope,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def _scripted_critique(self, messages: list[dict[str, Any]]) -> str:
        """The critique of `critic_scores`: its round is how often this critique, less the texts this
        server wrote, was asked before (module docstring)."""
        key = "\n".join(message_text(m) for m in messages)
        with self._lock:
            for text in sorted(self._written, key=len, reverse=True):  # a longer reply may quote a shorter one
                if text:
                    key = key.replace(text, "")
            rounds = self._critique_rounds[key] = self._critique_rounds.get(key, 0) + 1
        score = self.critic_scores[min(rounds, len(self.critic_scores)) - 1]
        return f"Feedback: Round {rounds} of this critique. [RESULT] {score}"


def _is_critique(messages: list[dict[str, Any]]) -> bool:
    return any(CRITIC_MARKER in message_text(message) for message in messages)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m support.fake_openai_server",
        description="Serve a fault-injecting OpenAI-compatible (chat) completions API "
        "until SIGINT/SIGTERM. Prints 'listening on <base_url>' once ready.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per reply")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--rate-500", type=float, default=0.0)
    parser.add_argument("--rate-slow", type=float, default=0.0)
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    parser.add_argument("--rate-malformed", type=float, default=0.0)
    parser.add_argument("--rate-empty-choices", type=float, default=0.0)
    parser.add_argument("--fail-first-n", type=int, default=0)
    parser.add_argument("--fail-first-status", type=int, default=429)
    parser.add_argument(
        "--critic-scores",
        type=lambda text: [int(s) for s in text.split(",")],
        default=None,
        help="the critic's score by round of the same critique, e.g. 2,5 (default: always 5)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    faults = FaultPlan(
        rate_429=args.rate_429,
        rate_500=args.rate_500,
        rate_slow=args.rate_slow,
        rate_malformed=args.rate_malformed,
        rate_empty_choices=args.rate_empty_choices,
        slow_seconds=args.slow_seconds,
        fail_first_n=args.fail_first_n,
        fail_first_status=args.fail_first_status,
    )
    server = FakeOpenAIServer(
        latency=args.latency,
        faults=faults,
        seed=args.seed,
        host=args.host,
        port=args.port,
        model=args.model,
        critic_scores=args.critic_scores,
    )
    # Tests read this exact line from the subprocess's stdout to learn the port.
    server.serve_forever(on_ready=lambda url: print(f"listening on {url}", flush=True))


if __name__ == "__main__":
    main()
