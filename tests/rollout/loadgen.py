"""A load generator for the local fleet: client threads keep a steady, paced stream of
requests going to every host (half of them on keep-alive connections, half with a new
connection per request) and record every outcome. Used by the tests and bench/fleet_local.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic() when the request was sent
    latency: float
    host: int
    method: str
    status: int | None  # None: no response at all (refused, reset, timed out)
    release: str | None  # the X-Release header
    body: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400


class Load:
    """`clients` threads, each sending `rate` requests/s round-robin over `urls`; one request
    in `post_every` is a POST /messages, the others GET /."""

    def __init__(self, urls: list[str], clients: int = 8, rate: float = 25.0,
                 post_every: int = 4, timeout: float = 5.0, keep_alive: bool = True) -> None:
        self.urls = urls
        self.keep_alive = keep_alive  # False: every client opens a connection per request
        self.rate = rate
        self.post_every = post_every
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.started < end]

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if not o.ok]

    def _client(self, index: int) -> None:
        keep_alive = self.keep_alive and index % 2 == 0
        session = requests.Session()
        count, next_at = index, time.monotonic()
        while not self._stop.is_set():
            host = count % len(self.urls)
            method = "POST" if count % self.post_every == 0 else "GET"
            outcome = self._send(session if keep_alive else None, host, method)
            with self._lock:
                self.outcomes.append(outcome)
            count += 1
            next_at += 1.0 / self.rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        session.close()

    def _send(self, session: requests.Session | None, host: int, method: str) -> Outcome:
        url = self.urls[host] + ("/messages" if method == "POST" else "/")
        body = b"hi" if method == "POST" else None
        started = time.monotonic()
        try:
            if session is None:
                response = requests.request(method, url, data=body, timeout=self.timeout,
                                            headers={"Connection": "close"})
            else:
                response = session.request(method, url, data=body, timeout=self.timeout)
        except requests.RequestException as error:
            return Outcome(started, time.monotonic() - started, host, method, None, None, "",
                           f"{type(error).__name__}: {error}")
        return Outcome(started, time.monotonic() - started, host, method, response.status_code,
                       response.headers.get("X-Release"), response.text)
