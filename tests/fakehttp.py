"""A scripted HTTP server on 127.0.0.1 for testing real clients against vendor-like answers.

    with FakeServer() as vendor:
        vendor.route("GET", "/api/v1/query", Reply(json={...}))
        vendor.route("POST", r"/v2/enqueue", [Reply(status=500), Reply(status=202)])
        client = SomeClient(base_url=vendor.url)

A route answers with one Reply, a list (consumed in order, the last repeated), or a
function of the Request. Every request is recorded in `vendor.requests`.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Answer = Reply | list[Reply] | Callable[[Request], Reply]


class FakeServer:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._routes: list[tuple[str, re.Pattern[str], Answer]] = []
        self._served: dict[int, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)  # a quick shutdown

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, method: str, path: str, answer: Answer) -> None:
        """Answer `method` on paths fully matching the regular expression `path`."""
        with self._lock:
            self._routes.insert(0, (method.upper(), re.compile(path), answer))

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.requests if re.fullmatch(path, r.path)]

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            for index, (method, pattern, answer) in enumerate(self._routes):
                if method == request.method and pattern.fullmatch(request.path):
                    if callable(answer):
                        return answer(request)
                    if isinstance(answer, Reply):
                        return answer
                    served = self._served.get(index, 0)
                    self._served[index] = served + 1
                    return answer[min(served, len(answer) - 1)]
        return Reply(status=404, json={"error": f"no route for {request.method} {request.path}"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, parts.path, parse_qs(parts.query),
                                  {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length) if length else b"")
                reply = fake._answer(request)
                if reply.delay:
                    time.sleep(reply.delay)
                body = (json.dumps(reply.json).encode() if reply.json is not None
                        else reply.body.encode() if isinstance(reply.body, str) else reply.body)
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json" if reply.json is not None
                           else "text/plain", **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler
