"""ship's example app: a tiny chat backend that the local fleet runs (standard library only).

One process is one worker. The host agent hands it an already-listening socket (`--fd`), shared
by every worker of the host, and a private one (`--health-fd`) on which the agent checks this
worker's health. Endpoints:

    GET  /healthz    200 when ready (and how many connections and requests are open)
    GET  /           names the release and the worker pid (body and X-Release header)
    GET  /slow?ms=N  the same, answered after N ms (a long request, to watch a drain)
    POST /messages   creates a message: adds one to `messages_created`
    GET  /metrics    {"release": "<name>", "counters": {"messages_created": <int>}}

`messages_created` is the *host's* total: every worker of a host adds to one counter file
(`--counters`), so whichever worker answers /metrics reports the same number, and the count
survives worker restarts. Without `--counters` the count is this process's own.

The slug's release.json names the release and can break it for tests:
`{"crash_on_boot": true}` exits at start, `{"count_messages": false}` stops counting,
`{"healthy": false}` never passes its health check, `{"boot_delay": 0.5}` boots slowly.

On SIGTERM the worker drains: it stops accepting, answers in-flight requests with
`Connection: close`, closes keep-alive connections left idle for `--idle-grace` seconds, and
exits after at most `--drain-timeout` seconds: 0 when no request was cut short, 3 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
KEEPALIVE_IDLE_S = 30.0  # an idle keep-alive connection is closed after this, drain or not
POLL_S = 0.05
EXIT_ABORTED = 3


class Release:
    """What release.json says of this slug."""

    def __init__(self, path: Path) -> None:
        doc = json.loads(path.read_text()) if path.exists() else {}
        self.name: str = str(doc.get("release", "dev"))
        self.sha: str = str(doc.get("sha", ""))
        self.crash_on_boot = bool(doc.get("crash_on_boot", False))
        self.count_messages = bool(doc.get("count_messages", True))
        self.healthy = bool(doc.get("healthy", True))
        self.boot_delay = float(doc.get("boot_delay", 0.0))


class Counter:
    """A monotonic counter, shared by the host's workers through a file when given one."""

    def __init__(self, path: str | None) -> None:
        self._lock = threading.Lock()  # flock does not exclude threads sharing one fd
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if path else None
        self._value = 0

    def add(self, amount: int = 1) -> None:
        with self._locked():
            self._store(self._load() + amount)

    def value(self) -> int:
        with self._locked():
            return self._load()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._fd is None:
                yield
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _load(self) -> int:
        if self._fd is None:
            return self._value
        raw = os.pread(self._fd, 8, 0)
        return struct.unpack("<q", raw)[0] if len(raw) == 8 else 0

    def _store(self, value: int) -> None:
        if self._fd is None:
            self._value = value
        else:
            os.pwrite(self._fd, struct.pack("<q", value), 0)


class Connections:
    """Open connections and which of them are in the middle of a request."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.open = 0
        self.busy = 0

    def opened(self) -> contextlib.AbstractContextManager[None]:
        return self._counted("open")

    def in_request(self) -> contextlib.AbstractContextManager[None]:
        return self._counted("busy")

    @contextlib.contextmanager
    def _counted(self, kind: str) -> Iterator[None]:
        with self._changed:
            setattr(self, kind, getattr(self, kind) + 1)
        try:
            yield
        finally:
            with self._changed:
                setattr(self, kind, getattr(self, kind) - 1)
                self._changed.notify_all()

    def wait_closed(self, deadline: float) -> None:
        with self._changed:
            while self.open and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: Worker  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        if not self._await_request():
            self.close_connection = True
            return
        with self.server.connections.in_request():
            super().handle_one_request()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        worker = self.server
        if url.path == "/healthz":
            ok, connections = worker.release.healthy, worker.connections
            self._reply(200 if ok else 503, {"healthy": ok, "release": worker.release.name,
                                             "connections": connections.open,
                                             "in_flight": connections.busy})
        elif url.path == "/metrics":
            counters = {"messages_created": worker.messages.value()}
            self._reply(200, {"release": worker.release.name, "counters": counters})
        elif url.path in ("/", "/slow"):
            if url.path == "/slow":
                try:
                    ms = float(parse_qs(url.query).get("ms", ["100"])[0])
                except ValueError:
                    self._reply(400, {"error": "ms must be a number"})
                    return
                time.sleep(min(max(ms, 0), 10_000) / 1000)
            text = f"release {worker.release.name} worker {os.getpid()}\n"
            self._reply(200, text.encode(), "text/plain")
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path != "/messages":
            self._reply(404, {"error": "not found"})
            return
        if self.server.release.count_messages:
            self.server.messages.add()
        self._reply(201, {"created": True, "release": self.server.release.name})

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per request would cost more than the request."""

    def _reply(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Release", self.server.release.name)
        self.send_header("X-Worker", str(os.getpid()))
        if self.server.draining:
            self.send_header("Connection", "close")  # also ends this connection's loop
        self.end_headers()
        self.wfile.write(data)

    def _await_request(self) -> bool:
        """Wait for the next request on a keep-alive connection; False once it has been idle
        too long, which during a drain is `idle_grace`."""
        if self._buffered():
            return True
        idle_since = time.monotonic()
        while True:
            readable, _, _ = select.select([self.connection], [], [], POLL_S)
            if readable:
                return True
            if self.server.idle_expired(idle_since):
                return False

    def _buffered(self) -> bool:
        """A request already read into the buffer (pipelined) or waiting on the socket."""
        self.connection.setblocking(False)
        try:
            return bool(self.rfile.peek(1))
        except OSError:
            return False
        finally:
            self.connection.setblocking(True)


class Worker:
    """Accepts on its listening sockets until told to drain; a thread per connection."""

    def __init__(self, release: Release, messages: Counter, listeners: list[socket.socket],
                 drain_timeout: float, idle_grace: float) -> None:
        self.release = release
        self.messages = messages
        self.listeners = listeners
        self.drain_timeout = drain_timeout
        self.idle_grace = min(idle_grace, drain_timeout)
        self.connections = Connections()
        self.drain_started: float | None = None
        self.served_fd: int | None = None
        self._accepting = threading.Event()
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def draining(self) -> bool:
        return self.drain_started is not None

    def idle_expired(self, idle_since: float) -> bool:
        now = time.monotonic()
        if self.drain_started is not None:
            return now - max(idle_since, self.drain_started) >= self.idle_grace
        return now - idle_since >= KEEPALIVE_IDLE_S

    def start(self) -> None:
        self._accepting.set()
        self._accept_thread.start()

    def drain(self) -> int:
        """Stop accepting, let requests finish within the drain timeout; the number cut short."""
        self.drain_started = time.monotonic()
        self._accepting.clear()
        self._accept_thread.join()
        for listener in self.listeners:
            listener.close()
        self.connections.wait_closed(self.drain_started + self.drain_timeout)
        return self.connections.busy

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listener in self.listeners:
                listener.setblocking(False)  # workers race for each connection on a shared socket
                selector.register(listener, selectors.EVENT_READ)
            while self._accepting.is_set():
                for key, _ in selector.select(POLL_S):
                    self._accept(key.fileobj)  # type: ignore[arg-type]

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        conn.setblocking(True)
        threading.Thread(target=self._serve, args=(conn, address), daemon=True).start()

    def _serve(self, conn: socket.socket, address: tuple[str, int]) -> None:
        with self.connections.opened(), contextlib.suppress(OSError):
            try:
                Handler(conn, address, self)  # type: ignore[arg-type]
            finally:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)
                conn.close()


def hand_over(path: str, worker: Worker, listen_fd: int) -> None:
    """Serve the shared socket to a restarted agent (SCM_RIGHTS), so that it can start new
    workers on the very socket this one accepts on: no second socket, no refused connection."""
    if path.startswith("@"):
        path = "\0" + path[1:]  # Linux's abstract namespace: no file, no path length limit
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                if not worker.draining:
                    socket.send_fds(conn, [b"listen"], [listen_fd])

    threading.Thread(target=loop, daemon=True).start()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, help="inherited listening socket shared by the host")
    parser.add_argument("--port", type=int, help="listen on 127.0.0.1:PORT instead of --fd")
    parser.add_argument("--health-fd", type=int, help="inherited private listening socket")
    parser.add_argument("--handoff", help="unix socket that hands the shared socket over: a "
                                              "path, or @name in Linux's abstract namespace")
    parser.add_argument("--counters", help="file holding the host's messages_created")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--idle-grace", type=float, default=1.0)
    return parser.parse_args(argv)


def listening_socket(args: argparse.Namespace) -> socket.socket:
    if args.fd is not None:
        return socket.socket(fileno=args.fd)
    sock = socket.create_server(("127.0.0.1", args.port or 0))
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    return sock


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    release = Release(HERE / "release.json")
    pid = os.getpid()
    if release.crash_on_boot:
        print(f"worker {pid} release {release.name}: crash on boot", file=sys.stderr, flush=True)
        return 1
    time.sleep(release.boot_delay)
    shared = listening_socket(args)
    listeners = [shared]
    if args.health_fd is not None:
        listeners.append(socket.socket(fileno=args.health_fd))
    worker = Worker(release, Counter(args.counters), listeners, args.drain_timeout,
                    args.idle_grace)
    if args.handoff:
        hand_over(args.handoff, worker, shared.fileno())
    worker.start()
    print(f"worker {pid} release {release.name}: serving", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    began = time.monotonic()
    aborted = worker.drain()
    if args.handoff and not args.handoff.startswith("@"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.handoff)
    print(f"worker {pid} release {release.name}: drained in {time.monotonic() - began:.2f}s, "
          f"aborted {aborted} in-flight requests", file=sys.stderr, flush=True)
    return EXIT_ABORTED if aborted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
