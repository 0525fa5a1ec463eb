"""A ship-side process that starts a local fleet and publishes a release to it, then waits
to be killed: `python -m tests.rollout.fleet_owner SPEC.json` prints `ready` once every host
converged. SPEC names the fleet's root, hosts, workers and a pickled ReleaseRef."""

from __future__ import annotations

import json
import pickle
import sys
import threading
import time
from pathlib import Path

from rollout.local import LocalFleet, LocalFleetConfig
from shiptypes import ProviderContext, RolloutSettings


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    config = LocalFleetConfig(driver="local", hosts=spec["hosts"], workers=spec["workers"],
                              root=spec["root"], boot_timeout=10, idle_grace=0.2)
    context = ProviderContext("test", "local", state_dir=Path(spec["root"]).parent)
    fleet = LocalFleet(config, RolloutSettings(stagger=0, drain_timeout=3), context)
    fleet.publish(pickle.loads(Path(spec["release"]).read_bytes()))
    while not fleet.observe().done:
        time.sleep(0.05)
    print("ready", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main(sys.argv[1])
