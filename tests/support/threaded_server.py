"""The life cycle the test servers share: an aiohttp app served from a background thread (tests) or
from the main thread until SIGINT/SIGTERM (a server process of its own, for benchmarks).

A subclass sets `host`, `_requested_port`, `shutdown_timeout` and `thread_name`, and adds its routes
in `_add_routes`; `start()` returns once the port is bound (re-raising a failure to bind), `stop()`
is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096  # benchmarks open hundreds of connections at once


class ThreadedServer:
    host: str
    _requested_port: int
    shutdown_timeout: float = 0.5
    thread_name: str = "test-server"

    def __init__(self) -> None:
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self):
        """Start serving from a background thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        ready = threading.Event()
        self._startup_error = None
        thread = threading.Thread(target=self._thread_main, args=(ready,), name=self.thread_name, daemon=True)
        self._thread = thread
        thread.start()
        ready.wait()
        if self._startup_error is not None:
            thread.join()
            self._thread = None
            raise self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the background thread to end. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None:
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:
                pass  # the loop already closed on its own: nothing left to stop
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"{type(self).__name__} did not stop within {timeout} s")
        self._thread = None
        self._port = None

    def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve from the calling (main) thread until SIGINT or SIGTERM; `on_ready(base_url)` once bound."""

        def ready() -> None:
            loop = asyncio.get_running_loop()
            assert self._stop_event is not None
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._stop_event.set)
            if on_ready is not None:
                on_ready(self.base_url)

        asyncio.run(self._serve(ready))
        self._port = None

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready.set))
        except BaseException as exc:  # noqa: BLE001 - handed to start() or logged
            if ready.is_set():
                logger.exception("%s crashed", type(self).__name__)
            else:
                self._startup_error = exc
                ready.set()

    async def _serve(self, on_ready: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = web.Application()
        self._add_routes(app)
        # No access log: it costs more than a benchmark request's whole handling. A client that
        # hangs up cancels its handler, which keeps in-flight counts honest and lets stop() finish.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port, backlog=LISTEN_BACKLOG)
            await site.start()
            self._port = runner.addresses[0][1]
            on_ready()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()
