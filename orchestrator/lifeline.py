"""Prefect's temporary API, tied to the ship process that started it.

    python -m orchestrator.lifeline FD PORT

Serves Prefect's API on 127.0.0.1:PORT (as Prefect's own temporary server does) until FD,
the read end of a pipe whose write end only the parent holds, reaches end of file: the
parent has exited, however it exited. Then it stops as on SIGTERM, and is killed outright
if that takes too long.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import uvicorn

STOP_GRACE_S = 10.0


def _stop_when_parent_is_gone(lifeline: int) -> None:
    while os.read(lifeline, 1):
        pass  # nothing is ever written: only end of file matters
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE_S)
    os._exit(1)


def main(argv: list[str]) -> None:
    lifeline, port = int(argv[0]), int(argv[1])
    threading.Thread(target=_stop_when_parent_is_gone, args=(lifeline,), daemon=True,
                     name="lifeline").start()
    # Exits 3 when the port is taken, which Prefect's starter answers with another port.
    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1",
                port=port, log_level="error", lifespan="on")


if __name__ == "__main__":
    main(sys.argv[1:])
