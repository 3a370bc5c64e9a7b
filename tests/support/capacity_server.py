"""An OpenAI-compatible server with C batch slots and lognormal service times, to measure scheduling.

A real inference server (vLLM, SGLang, TGI) decodes at most C sequences at once (its batch
slots, vLLM's ``max_num_seqs``); further requests wait in a queue. How long a reply takes
varies mostly with how many tokens it decodes, which is roughly lognormal. This server does
the same: at most ``capacity`` requests are *in service* at once, the rest wait in a FIFO
queue, and each request, when its service starts, draws a service time from a lognormal
distribution with the given median and ``sigma`` (0.6 by default, the spread of real reply
lengths) from a seeded RNG, so the sequence of service times repeats exactly run to run.

Then the best any client can do is keep every slot busy: the *ideal* wall time of a run is
the sum of the service times drawn divided by ``capacity``, and a client's scheduling ratio
is that ideal over the server's measured busy period (first request arrived to last reply
done). `CapacityServer.stats` (or ``GET /stats`` of a child process, ``?served=1`` adding
every request's times) reports both.

It answers what `spri-sft generate` sends, so a run produces real records:
``POST /v1/chat/completions`` and ``POST /v1/completions`` (a critic prompt, recognised by
its ``[RESULT]`` marker, gets ``Feedback: ... [RESULT] n``; anything else a reply of
``reply_words`` words), ``GET /v1/models``, and ``GET /health``. The critic's score is 5
with probability ``accept_rate`` and 3 otherwise, decided by a hash of the seed and the
request's text (not by arrival order), so which versions are accepted does not depend on
scheduling: the same prompts make the same calls however the run interleaves them.

In-process (a background thread)::

    with CapacityServer(capacity=4, median=0.05, seed=0) as server:
        ...  # requests to server.base_url
        print(server.stats["max_in_service"], server.served)

As a separate process, until SIGTERM/SIGINT; the first stdout line tells the URL::

    $ PYTHONPATH=tests python -m support.capacity_server --capacity 64 --median 0.5 --port 0
    listening on http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from support.threaded_server import ThreadedServer

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
DEFAULT_MODEL_NAME = "capacity-model"
CRITIC_MARKER = "[RESULT]"
ACCEPTED_SCORE, REJECTED_SCORE = 5, 3
_FILLER = "the answer weighs each principle in turn and keeps to the point".split()


@dataclass(frozen=True)
class ServedRequest:
    """One completion request the server served (times are this process's `time.monotonic()`)."""

    path: str
    arrived: float
    started: float  # left the queue and took a slot
    finished: float  # gave its slot back
    service_time: float  # drawn when it started; `finished - started` is that plus the loop's lag


class FifoSlots:
    """`capacity` slots handed out strictly in order of asking; a freed slot goes to the oldest waiter.

    (`asyncio.Semaphore` lets a newcomer take a slot freed before the woken waiter runs; here a
    slot is handed over directly, so the queue is first in, first out.)"""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(not f.done() for f in self._waiters)

    async def acquire(self) -> None:
        if self.busy < self.capacity and not self._waiters:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over as the request gave up: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that gave up is skipped
                waiter.set_result(None)  # the slot changes hands; `busy` stays
                return
        self.busy -= 1


def critic_score(seed: int, text: str, accept_rate: float) -> int:
    """5 with probability `accept_rate`, else 3, fixed by the seed and the request's text."""
    digest = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    uniform = int.from_bytes(digest, "big") / 2**64
    return ACCEPTED_SCORE if uniform < accept_rate else REJECTED_SCORE


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


class CapacityServer(ThreadedServer):
    """At most `capacity` requests in service at once, FIFO queue, lognormal service times (module docstring)."""

    def __init__(
        self,
        *,
        capacity: int,
        median: float = 0.5,
        sigma: float = 0.6,
        seed: int = 0,
        accept_rate: float = 1.0,
        reply_words: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = DEFAULT_MODEL_NAME,
    ) -> None:
        if median <= 0 or sigma < 0:
            raise ValueError(f"median must be > 0 and sigma >= 0, got median={median}, sigma={sigma}")
        if not 0.0 <= accept_rate <= 1.0:
            raise ValueError(f"accept_rate must be in [0, 1], got {accept_rate}")
        super().__init__()
        self.capacity, self.median, self.sigma, self.seed = capacity, median, sigma, seed
        self.accept_rate, self.reply_words = accept_rate, reply_words
        self.host, self.model = host, model
        self._requested_port = port
        self._rng = random.Random(seed)
        self._slots = FifoSlots(capacity)
        # Handlers run on the server's loop; tests read from their own thread: the lock keeps reads consistent.
        self._lock = threading.Lock()
        self._served: list[ServedRequest] = []
        self._requests = 0
        self._in_service = 0
        self._max_in_service = 0
        self._max_queued = 0
        self._first_arrival: float | None = None

    # -- public API --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("CapacityServer is not running")
        return f"http://{self.host}:{self._port}/v1"

    @property
    def served(self) -> list[ServedRequest]:
        """Every request served so far, in the order their service started."""
        with self._lock:
            return sorted(self._served, key=lambda r: r.started)

    @property
    def stats(self) -> dict[str, Any]:
        """Counts and the numbers of the scheduling ratio: ``requests``, ``served``, ``in_service`` and
        ``queued`` now, ``max_in_service``, ``max_queued``, ``service_time_sum`` (drawn), ``occupied_sum``
        (measured, slot-seconds),
        ``busy_seconds`` (first arrival to last finish), ``ideal_seconds`` (service_time_sum / capacity)
        and ``ratio`` (ideal over busy)."""
        with self._lock:
            served = list(self._served)
            first, requests = self._first_arrival, self._requests
            max_in_service, max_queued = self._max_in_service, self._max_queued
            in_service, queued = self._in_service, self._slots.queued
        drawn = sum(r.service_time for r in served)
        busy = max(r.finished for r in served) - first if served else 0.0
        ideal = drawn / self.capacity
        return {
            "capacity": self.capacity,
            "requests": requests,
            "served": len(served),
            "in_service": in_service,
            "queued": queued,
            "max_in_service": max_in_service,
            "max_queued": max_queued,
            "service_time_sum": drawn,
            "occupied_sum": sum(r.finished - r.started for r in served),
            "busy_seconds": busy,
            "ideal_seconds": ideal,
            "ratio": ideal / busy if busy > 0 else None,
        }

    thread_name = "capacity-server"

    def _add_routes(self, app: web.Application) -> None:
        # A client that hangs up cancels its handler, which frees its slot or leaves the queue.
        app.router.add_post(CHAT_PATH, self._handle_completion)
        app.router.add_post(COMPLETIONS_PATH, self._handle_completion)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/stats", self._handle_stats)

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _handle_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        """`stats`; with ``?served=1`` also every served request (`served`, as objects)."""
        stats = self.stats
        if request.query.get("served"):
            stats["served_requests"] = [asdict(r) for r in self.served]
        return web.json_response(stats)

    async def _handle_completion(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        with self._lock:
            self._requests += 1
            if self._first_arrival is None:
                self._first_arrival = arrived
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        chat = request.path == CHAT_PATH
        messages = self._messages(body, chat)
        if messages is None:
            field = "messages" if chat else "prompt"
            return web.json_response(
                {"error": {"message": f"'{field}' is missing or empty", "type": "invalid_request_error"}}, status=400
            )

        await self._slots.acquire()
        started = time.monotonic()
        service_time = self._rng.lognormvariate(math.log(self.median), self.sigma)
        with self._lock:
            self._in_service += 1
            self._max_in_service = max(self._max_in_service, self._in_service)
            self._max_queued = max(self._max_queued, self._slots.queued)
        try:
            await asyncio.sleep(service_time)
        finally:
            finished = time.monotonic()
            with self._lock:
                self._in_service -= 1
                self._served.append(ServedRequest(request.path, arrived, started, finished, service_time))
            self._slots.release()  # before the reply is written: the next request starts at once
        return web.json_response(self._reply(body, messages, chat))

    @staticmethod
    def _messages(body: Any, chat: bool) -> list[dict[str, Any]] | None:
        if not isinstance(body, dict):
            return None
        if chat:
            messages = body.get("messages")
            return messages if isinstance(messages, list) and messages else None
        prompt = body.get("prompt")
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else None

    def _reply(self, body: dict[str, Any], messages: list[dict[str, Any]], chat: bool) -> dict[str, Any]:
        texts = [_message_text(m) for m in messages]
        whole = "\n".join(texts)
        if CRITIC_MARKER in whole:
            score = critic_score(self.seed, whole, self.accept_rate)
            text = f"Feedback: The text {'follows' if score >= 4 else 'misses'} the guidance. [RESULT] {score}"
        else:
            last_user = next((_message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
            words = ("Reply to: " + " ".join(last_user.split()[:12])).split()
            words += [_FILLER[i % len(_FILLER)] for i in range(max(0, self.reply_words - len(words)))]
            text = " ".join(words)
        finish_reason = "stop"
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and len(text.split()) > limit:  # words stand in for tokens
            text, finish_reason = " ".join(text.split()[:limit]), "length"
        prompt_tokens = sum(len(t.split()) for t in texts)
        completion_tokens = len(text.split())
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-capacity-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m support.capacity_server",
        description="Serve an OpenAI-compatible API with CAPACITY batch slots, a FIFO queue and lognormal "
        "service times until SIGINT/SIGTERM. Prints 'listening on <base_url>' once ready; GET /stats.",
    )
    parser.add_argument("--capacity", type=int, required=True, help="requests in service at once")
    parser.add_argument("--median", type=float, default=0.5, help="median service time in seconds")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma of the service time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accept-rate", type=float, default=1.0, help="chance that a critique scores 5 (else 3)")
    parser.add_argument("--reply-words", type=int, default=100)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME)
    args = parser.parse_args(argv)
    server = CapacityServer(
        capacity=args.capacity,
        median=args.median,
        sigma=args.sigma,
        seed=args.seed,
        accept_rate=args.accept_rate,
        reply_words=args.reply_words,
        host=args.host,
        port=args.port,
        model=args.model,
    )
    server.serve_forever(on_ready=lambda url: print(f"listening on {url}", flush=True))


if __name__ == "__main__":
    main()
