"""rollout/instance.py puts the sockets it is given at fds 3, 4, … whatever numbers they
came with: a copy landing on a free target must not be closed there."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

# In a child: two listening sockets moved to high numbers, fds 3 and 4 left free (the case
# where a plain dup() of the first lands on 3), then placed; report what sits at 3 and 4.
CHILD = """
import os, socket, sys
sys.path.insert(0, sys.argv[1])
from rollout.instance import place
made = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
ports = [s.getsockname()[1] for s in made]
high = [os.dup2(s.detach(), 40 + n) for n, s in enumerate(made)]
for fd in (3, 4):
    try:
        os.close(fd)
    except OSError:
        pass
place(high)
placed = [socket.socket(fileno=fd).getsockname()[1] for fd in (3, 4)]
print(ports == placed, ports, placed)
"""


def test_sockets_given_at_high_numbers_land_at_3_and_4() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True"), done.stdout
