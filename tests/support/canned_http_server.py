"""A real HTTP server (the standard library's, in a thread) that answers every POST with one fixed body.

For tests of what a client puts on the wire and how it reads odd replies: each request's target
(a proxy's is the whole URL), headers and body are kept in `requests`; the reply's body and
content-type are the test's (e.g. JSON labelled text/plain, as some proxies relabel replies).
"""

from __future__ import annotations

import http.server
import threading
from types import TracebackType


class CannedHTTPServer:
    def __init__(self, body: bytes | str, content_type: str = "application/json"):
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        recorded, payload = self.requests, body.encode() if isinstance(body, str) else body

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server

            def do_POST(self):
                received = self.rfile.read(int(self.headers.get("content-length", 0)))
                recorded.append((self.path, dict(self.headers), received))
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> CannedHTTPServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
