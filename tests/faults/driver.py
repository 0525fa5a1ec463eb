"""`ship` as the crash tests run it: the real command line, in a process of its own that a
test can SIGKILL.

    python -m tests.faults.driver --config pipelines.yaml --speed 20 deploy us --sha …

SHIP_TEST_SLOW_BUILD=SECONDS makes every tarball build take that many more real seconds,
so that a kill can land mid-build (packing examples/app takes milliseconds)."""

from __future__ import annotations

import os
import sys
import time

from orchestrator import engine  # noqa: F401 - Prefect settings before Prefect loads
from orchestrator.cli import main
from orchestrator.tarball import TarballBuilder


def _slowed(seconds: float) -> None:
    build = TarballBuilder.build

    def slow_build(self: TarballBuilder, release: object) -> object:
        time.sleep(seconds)
        return build(self, release)  # type: ignore[arg-type]

    TarballBuilder.build = slow_build  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("SHIP_TEST_SLOW_BUILD"):
        _slowed(float(os.environ["SHIP_TEST_SLOW_BUILD"]))
    sys.exit(main())
