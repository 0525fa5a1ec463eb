"""Real git repositories for the `git` build's tests: made with the git CLI, commits by the
test, and an HTTPS server on 127.0.0.1 that serves a bare repository (git's "dumb" HTTP
protocol) only to requests carrying the expected Authorization header."""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "ann", "GIT_AUTHOR_EMAIL": "ann@example.com",
           "GIT_COMMITTER_NAME": "ann", "GIT_COMMITTER_EMAIL": "ann@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV},
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


class Repo:
    """A working repository on branch main."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "--quiet", "--initial-branch", "main")

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_text(text)
        git(self.path, "add", "--all")
        git(self.path, "commit", "--quiet", "-m", message)
        return git(self.path, "rev-parse", "HEAD")

    def bare(self, into: Path) -> Path:
        """A bare copy that a dumb HTTP server can serve."""
        git(self.path.parent, "clone", "--quiet", "--bare", str(self.path), str(into))
        git(into, "update-server-info")
        return into


@dataclass
class HttpsRepo:
    url: str
    ca_file: Path
    authorizations: list[str | None] = field(default_factory=list)


@contextmanager
def https_repo(root: Path, tmp: Path, name: str, authorization: str) -> Iterator[HttpsRepo]:
    """Serve the directory `root` over HTTPS (a certificate made for 127.0.0.1); a request
    without `authorization` gets 401."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    seen: list[str | None] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != authorization:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpsRepo(f"https://127.0.0.1:{server.server_address[1]}/{name}.git", cert, seen)
    finally:
        server.shutdown()
        server.server_close()
