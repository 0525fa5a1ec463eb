"""Runs one instance of an unmodified app on the host's shared socket (systemd's socket
activation), and hands that socket to a restarted agent.

    python rollout/instance.py --fd N [--private-fd M] --handoff ADDR -- ARGV…

The agent starts this in a session of its own, with the release as working directory. It
puts the shared listening socket at fd 3 (and the instance's private one at fd 4, when given)
and runs ARGV through `sh -c 'LISTEN_PID=$$ exec "$@"'`, so that LISTEN_PID is the app's own
pid, as gunicorn requires; LISTEN_FDS says how many sockets there are. uvicorn takes `--fd 3`,
Node `server.listen({fd: 3})`.

It stays as the app's parent for one reason: an app knows nothing of the agent, so a
restarted agent gets the shared socket from here (SCM_RIGHTS on ADDR, an abstract unix socket
on Linux) and starts new instances on the very socket the old ones accept on. Signals go to
the whole process group (the app, its workers, this): this ignores SIGTERM and SIGINT, waits
for the app, and exits with its code (128 + N when a signal N ended it).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading

SHIM = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'
FIRST_FD = 3  # SD_LISTEN_FDS_START


def hand_over(address: str, listen_fd: int) -> None:
    """Serve the shared socket to whoever connects to `address` (the host's agent)."""
    if address.startswith("@"):
        address = "\0" + address[1:]
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(4)

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                socket.send_fds(conn, [b"listen"], [listen_fd])

    threading.Thread(target=loop, daemon=True).start()


def place(fds: list[int]) -> None:
    """Move the sockets to 3, 4, … Copies first, numbered above every target: a target may be
    one of the sources, and a plain dup() could land on a free target and be closed there."""
    copies = [fcntl.fcntl(fd, fcntl.F_DUPFD, FIRST_FD + len(fds)) for fd in fds]
    for fd in fds:
        os.close(fd)
    for offset, copy in enumerate(copies):
        os.dup2(copy, FIRST_FD + offset, inheritable=True)
        os.close(copy)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the shared listening socket")
    parser.add_argument("--private-fd", type=int, help="the instance's own listening socket")
    parser.add_argument("--handoff", required=True)
    parser.add_argument("argv", nargs="+")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the app, in this group, got it too
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sockets = [args.fd] + ([args.private_fd] if args.private_fd is not None else [])
    place(sockets)
    env = {**os.environ, "LISTEN_FDS": str(len(sockets))}
    fds = tuple(range(FIRST_FD, FIRST_FD + len(sockets)))
    app = subprocess.Popen(["sh", "-c", SHIM, "sh", *args.argv], env=env, pass_fds=fds,
                           restore_signals=True, preexec_fn=_default_signals)
    for fd in fds[1:]:
        os.close(fd)  # the private port is the app's alone: it closes when the app exits
    hand_over(args.handoff, FIRST_FD)
    code = app.wait()
    return 128 - code if code < 0 else code


def _default_signals() -> None:
    """The app must see SIGTERM and SIGINT, which this process ignores (ignored signals are
    inherited through exec)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
