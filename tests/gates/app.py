"""A tiny release for the gate tests: a real HTTP server in its own process.

    python app.py --port 8080 [--healthy-after 0.5] [--sha abc] [--token T] [--pidfile F]

/health answers 503 until `--healthy-after` seconds have passed, then 200. /api/status is
JSON; /slow takes half a second; /flaky fails its first two requests; /echo returns the
request's headers; /private wants `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--healthy-after", type=float, default=0.0)
    parser.add_argument("--sha", default="unknown")
    parser.add_argument("--token", default="")
    parser.add_argument("--pidfile")
    args = parser.parse_args()
    if args.pidfile:
        with open(args.pidfile, "w") as pidfile:
            pidfile.write(str(os.getpid()))
    started = time.monotonic()
    flaky = {"count": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *values: object) -> None:
            print(f"app: {fmt % values}", flush=True)

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                healthy = time.monotonic() - started >= args.healthy_after
                self._send(200 if healthy else 503, {"healthy": healthy})
            elif self.path == "/api/status":
                self._send(200, {"status": "ok", "release": {"sha": args.sha},
                                 "items": [{"id": 1}, {"id": 2}]})
            elif self.path == "/slow":
                time.sleep(0.5)
                self._send(200, {"slow": True})
            elif self.path == "/flaky":
                with lock:
                    flaky["count"] += 1
                    count = flaky["count"]
                self._send(503 if count <= 2 else 200, {"count": count})
            elif self.path == "/echo":
                self._send(200, {k.lower(): v for k, v in self.headers.items()})
            elif self.path == "/private":
                ok = self.headers.get("Authorization") == f"Bearer {args.token}"
                self._send(200 if ok else 401, {"ok": ok})
            else:
                self._send(404, {"error": "not found"})

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"app: release {args.sha} listening on {args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        print("app: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
