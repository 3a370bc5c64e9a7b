"""`spri-sft view PATH`: the record viewer's local HTTP server and its JSON API.

It binds 127.0.0.1 (a free port unless --port) and serves the page (`static/`), the report's figures
of a pipeline run, and the API over the records' index (`spri_sft.review.index`). What it refuses:
- a request whose Host header is not this server's own address (a web page cannot reach the viewer
  through a DNS name rebound to 127.0.0.1);
- on another host (`--host 0.0.0.0`), which it binds only when SPRI_SFT_VIEW_TOKEN is set, every request
  without that token (`?token=` on the first page load sets an HttpOnly SameSite=Strict cookie, or
  `Authorization: Bearer TOKEN`), as a vLLM server started with an API key refuses requests without it;
- a decision (POST /api/decisions) without the page's token (random per start, in the page's
  `<meta name="spri-token">`) in `X-SPRI-Token`, from another origin, or not `application/json`, and
  every decision under --read-only;
- any path but the page's three assets and the run root's report figures: nothing else on disk is served.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import re
import secrets
import socket
import threading
import traceback
from collections.abc import Sequence
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from spri_sft.errors import UserError
from spri_sft.review.decisions import DECISIONS, append_decision, default_reviewer
from spri_sft.review.index import open_index, run_root, shown_paths

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
TOKEN_VARIABLE = "SPRI_SFT_VIEW_TOKEN"
COOKIE = "spri_view_token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 64 * 1024  # a decision is a few hundred bytes
MAX_REASON = 2000
# The page loads only its own script and style; fetches go to this server only; nothing may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the URL may carry the access token
    "Cache-Control": "no-store",
}


class Viewer:
    """What the request handlers serve: the index of PATH's records, its decisions file, the tokens."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        read_only: bool = False,
        reviewer: str | None = None,
        access_token: str | None = None,
    ):
        self.paths = [str(p) for p in paths]
        self.index = open_index(paths)
        self.files = self.index.files
        self.decisions_file = self.index.decisions_file
        self.run_root = run_root(paths)
        self.read_only = read_only
        self.reviewer = reviewer or default_reviewer()
        self.access_token = access_token  # every request must carry it (another host than this machine)
        # The cookie holds a digest of the token: any token fits a cookie's value, and the token itself is not stored.
        self.access_cookie = hashlib.sha256(access_token.encode()).hexdigest() if access_token else None
        self.page_token = secrets.token_urlsafe(16)  # a decision must carry it (the page has it, other sites not)

    def figures(self) -> list[str]:
        if self.run_root is None:
            return []
        return sorted(p.name for p in self.run_root.glob("*.png") if p.is_file())

    def overview(self) -> dict:
        decisions = self.index.decisions
        return {
            "path": shown_paths(self.paths),  # what the user gave, short; the header's tooltip lists the files
            "files": [str(file) for file in self.files],
            "read_only": self.read_only,
            "modes": self.index.overview(),
            "decisions": {decision: decisions.count(decision) for decision in DECISIONS},
            "figures": self.figures(),
            "torn_bytes": self.index.torn_bytes(),  # of a last line still being written (or cut by a kill)
            "duplicate_ids": self.index.duplicates,
        }

    def page_html(self) -> bytes:
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        filled = {"spri-token": self.page_token, "spri-read-only": "true" if self.read_only else "false"}
        return fill_meta(page, filled).encode()


def fill_meta(page: str, values: dict[str, str]) -> str:
    """`page` with each `<meta name=NAME content=...>` set to its value (added to <head> when missing)."""
    for name, value in values.items():
        tag = f'<meta name="{name}" content="{html.escape(value, quote=True)}">'
        pattern = re.compile(rf'<meta\s+name="{re.escape(name)}"\s+content="[^"]*"\s*/?>')
        page, found = pattern.subn(lambda _, tag=tag: tag, page, count=1)
        if not found:
            page = page.replace("<head>", "<head>\n" + tag, 1)
    return page


class ViewHandler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"
    server_version = "spri-sft-view"
    sys_version = ""  # the Server header need not tell the Python version

    def log_message(self, format, *args):  # noqa: A002 — the stdlib's signature
        pass  # a line per request would bury the one line that matters (the URL)

    # -- dispatch

    def do_GET(self):  # noqa: N802 — the stdlib's name
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        viewer = self.server.viewer
        try:
            url = urlsplit(self.path)
            query = dict(parse_qsl(url.query, keep_blank_values=True))
            if not self._host_allowed():
                return self._error(HTTPStatus.MISDIRECTED_REQUEST, "this viewer answers only at its own address")
            cookie = None
            if viewer.access_token is not None:
                if not self._has_access(query):
                    why = f"a token is needed (the {TOKEN_VARIABLE} the viewer started with)"
                    return self._error(HTTPStatus.UNAUTHORIZED, why)
                if query.get("token"):
                    cookie = f"{COOKIE}={viewer.access_cookie}; HttpOnly; SameSite=Strict; Path=/"
            self._route(method, url.path, query, cookie)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except UserError as err:  # a records or decisions file turned bad while serving
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(err))
        except Exception as err:  # a bug: the page says so in one line, the terminal has the traceback
            traceback.print_exc()
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}")

    def _route(self, method: str, path: str, query: dict[str, str], cookie: str | None) -> None:
        viewer = self.server.viewer
        if method == "POST":
            if path == "/api/decisions":
                return self._decide()
            return self._error(HTTPStatus.METHOD_NOT_ALLOWED, "only /api/decisions takes a POST")
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, viewer.page_html(), ASSETS["index.html"], cookie)
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            if name not in ASSETS or not (STATIC_DIR / name).is_file():  # the three assets; no other name, no `..`
                return self._error(HTTPStatus.NOT_FOUND, "no such asset")
            body = viewer.page_html() if name == "index.html" else (STATIC_DIR / name).read_bytes()
            return self._send(HTTPStatus.OK, body, ASSETS[name])
        if path.startswith("/figures/"):
            name = path[len("/figures/") :]
            if name not in viewer.figures():  # the run root's PNGs, listed by name: nothing else
                return self._error(HTTPStatus.NOT_FOUND, "no such figure")
            return self._send(HTTPStatus.OK, (viewer.run_root / name).read_bytes(), "image/png")
        if not path.startswith("/api/"):
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        viewer.index.refresh()  # lines a running generation appended since the last request
        if path == "/api/overview":
            return self._json(HTTPStatus.OK, viewer.overview())
        if path == "/api/records":
            try:
                return self._json(HTTPStatus.OK, viewer.index.page(query))
            except ValueError as err:
                return self._error(HTTPStatus.BAD_REQUEST, str(err))
        if path.startswith("/api/record/"):
            record_id = unquote(path[len("/api/record/") :])
            record = viewer.index.record(record_id)
            if record is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no record {record_id!r}")
            return self._json(
                HTTPStatus.OK,
                {
                    "record": record,
                    "decision": viewer.index.decisions.get(record_id),
                    "same_prompt": viewer.index.same_prompt(record),
                },
            )
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    # -- the write endpoint

    def _decide(self) -> None:
        viewer = self.server.viewer
        if viewer.read_only:
            return self._error(HTTPStatus.FORBIDDEN, "the viewer is read-only (--read-only)")
        token = self.headers.get("X-SPRI-Token") or ""
        if not hmac.compare_digest(token.encode(), viewer.page_token.encode()):
            return self._error(HTTPStatus.FORBIDDEN, "a decision needs the page's token (X-SPRI-Token)")
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host')}":
            return self._error(HTTPStatus.FORBIDDEN, "a decision must come from the viewer's own page")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            return self._error(HTTPStatus.FORBIDDEN, "a decision is sent as application/json")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return self._error(HTTPStatus.BAD_REQUEST, f"a decision is a JSON body of at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            return self._error(HTTPStatus.BAD_REQUEST, "the body is not JSON")
        problem = _body_problem(body)
        if problem:
            return self._error(HTTPStatus.BAD_REQUEST, problem)
        with viewer.index.lock:
            rows = viewer.index.rows("SELECT mode FROM records WHERE id = ?", (body["id"],))
            if not rows:
                return self._error(HTTPStatus.NOT_FOUND, f"no record {body['id']!r}")
            line = append_decision(
                viewer.decisions_file, body["id"], rows[0]["mode"], body["decision"], body.get("reason"),
                viewer.reviewer,
            )  # fmt: skip
            viewer.index.refresh()
        self._json(HTTPStatus.OK, {"decision": line})

    # -- helpers

    def _host_allowed(self) -> bool:
        viewer_host = self.server.viewer_host
        if viewer_host not in LOCAL_HOSTS:
            return True  # bound beyond this machine: the access token guards every request
        host = (self.headers.get("Host") or "").rsplit(":", 1)
        port = str(self.server.server_address[1])
        return len(host) == 2 and host[1] == port and host[0].strip("[]") in LOCAL_HOSTS

    def _has_access(self, query: dict[str, str]) -> bool:
        """Whether the request carries the access token: `?token=`, `Authorization: Bearer`, or the cookie."""
        viewer = self.server.viewer
        authorization = self.headers.get("Authorization") or ""
        bearer = authorization[len("Bearer ") :].strip() if authorization.startswith("Bearer ") else ""
        given = query.get("token") or bearer
        if given:
            return hmac.compare_digest(given.encode(), viewer.access_token.encode())
        cookies = SimpleCookie()
        try:
            cookies.load(self.headers.get("Cookie") or "")
        except Exception:  # a malformed Cookie header carries no token
            return False
        return COOKIE in cookies and hmac.compare_digest(cookies[COOKIE].value.encode(), viewer.access_cookie.encode())

    def _json(self, status: HTTPStatus, payload) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self.close_connection = True  # a refused request's body may be unread: this connection is done
        self._json(status, {"error": message})

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, cookie: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _body_problem(body) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object {id, decision, reason}"
    if not isinstance(body.get("id"), str) or not body["id"]:
        return "field 'id' must be a record id"
    if body.get("decision") not in DECISIONS:
        return "field 'decision' must be 'exclude' or 'keep'"
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        return f"field 'reason' must be a string of at most {MAX_REASON} characters, or null"
    return None


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, viewer: Viewer, host: str = "127.0.0.1", port: int = 0):
        self.viewer, self.viewer_host = viewer, host
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), ViewHandler)
        except (OSError, OverflowError) as err:
            why = getattr(err, "strerror", None) or str(err)
            raise UserError(f"view: cannot listen on {host}:{port} ({why}); give another --port or --host") from None

    @property
    def url(self) -> str:
        host, port = self.viewer_host, self.server_address[1]
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        shown = f"[{host}]" if ":" in host else host
        token = f"?token={quote(self.viewer.access_token, safe='')}" if self.viewer.access_token else ""
        return f"http://{shown}:{port}/{token}"

    def start(self) -> ViewServer:
        """Serve from a background thread (tests); `shutdown()` then `server_close()` stop it."""
        # a short poll: shutdown() waits for the serving loop's next look at its flag
        threading.Thread(target=self.serve_forever, args=(0.05,), name="spri-sft-view", daemon=True).start()
        return self


def open_viewer(
    paths: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 0,
    read_only: bool = False,
    reviewer: str | None = None,
) -> ViewServer:
    """The viewer's server for PATHs, bound and not yet serving. Another host than this machine only with
    SPRI_SFT_VIEW_TOKEN set (module docstring)."""
    access_token = None
    if host not in LOCAL_HOSTS:
        access_token = os.environ.get(TOKEN_VARIABLE) or None
        if access_token is None:
            raise UserError(
                f"view: --host {host} serves beyond this machine, so only with a token: set {TOKEN_VARIABLE} "
                "(every request must then carry it), or leave --host out"
            )
    return ViewServer(Viewer(paths, read_only=read_only, reviewer=reviewer, access_token=access_token), host, port)


def serve(
    paths: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 0,
    read_only: bool = False,
    reviewer: str | None = None,
) -> None:
    """`spri-sft view`: serve until Ctrl-C (or SIGTERM); the command line says the one line a stop gets."""
    server = open_viewer(paths, host, port, read_only, reviewer)
    index = server.viewer.index
    torn = f"; a torn last line skipped ({index.torn_bytes()} bytes)" if index.torn_bytes() else ""
    print(f"[spri-sft] view: {index.count():,} records of {len(server.viewer.files)} file(s){torn}", flush=True)
    print(f"[spri-sft] view: {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        index.close()
