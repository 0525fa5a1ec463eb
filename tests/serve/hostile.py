"""Hostile requests, as a client on a raw socket sends them: a chunked body of any size that
stops being sent as soon as the server answers. Used by the tests and bench/faults.py."""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the client had sent when the answer came


def post_chunked(url: str, path: str, headers: dict[str, str], total: int,
                 piece: bytes = b"[" * 65_536, timeout: float = 60.0) -> Answer:
    """POST `total` bytes (at least) with Transfer-Encoding: chunked, no Content-Length,
    and read the answer, which may come before the body is sent (then sending stops)."""
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=timeout) as sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: {where.netloc}",
                 "Transfer-Encoding: chunked", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = _send_until_answered(sock, total, piece, timeout)
        status, answer_headers, body = _read_answer(sock)
    return Answer(status, answer_headers, body, sent)


def _send_until_answered(sock: socket.socket, total: int, piece: bytes,
                         timeout: float) -> int:
    framed = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    try:
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], timeout)
            if readable:
                return sent  # the server answered (or closed): stop sending
            if not writable:
                raise TimeoutError("the server neither read the body nor answered")
            sock.sendall(framed)
            sent += len(piece)
        sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # it closed the connection after answering: the answer is still to be read
    return sent


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while True:
        try:
            more = sock.recv(65_536)
        except ConnectionResetError:
            more = b""
        data += more
        head, _, body = data.partition(b"\r\n\r\n")
        if not more or (_ and len(body) >= _length(head)):
            break
    if not head.startswith(b"HTTP/1.1 "):
        raise AssertionError(f"no HTTP answer: {data[:200]!r}")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62  # no length: read to the end
