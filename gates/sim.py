"""A simulated gate: takes its configured time and passes, unless told to fail."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from shiptypes import (
    GateResult,
    PreprodTarget,
    ProviderConfig,
    ProviderContext,
    ReleaseNumber,
    ReleaseRef,
    Seconds,
    Seed,
    draw,
)


class SimGateConfig(ProviderConfig):
    type: Literal["sim"]
    name: str = "sim"
    duration: Seconds = 0.0
    jitter: float = Field(0.0, ge=0, le=1, description="relative spread of the duration, "
                          "drawn once per release")
    fail_releases: list[ReleaseNumber] = Field(default_factory=list,
                                               description="release numbers that fail")
    fail_share: float = Field(0.0, ge=0, le=1, description="share of releases that fail at random")
    seed: Seed | None = Field(None, description="varies which releases `fail_share` picks")
    error_releases: list[ReleaseNumber] = Field(default_factory=list,
                                      description="release numbers whose check errors")


class SimGate:
    def __init__(self, config: SimGateConfig, context: ProviderContext) -> None:
        self.config = config
        self.name = config.name
        self._clock = context.clock

    def run(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        began = self._clock.now()
        self._clock.sleep(spread(self.config.duration, self.config.jitter,
                                 f"{release.pipeline}/{release.number}/{self.name}/duration"))
        took = (self._clock.now() - began).total_seconds()
        if release.number in self.config.error_releases:
            return GateResult(self.name, False, "simulated error: the check could not run",
                              duration_s=took, errored=True)
        unlucky = random.Random(draw(f"{release.pipeline}/{release.number}/{self.name}",
                                     self.config.seed)).random()
        if release.number in self.config.fail_releases or unlucky < self.config.fail_share:
            return GateResult(self.name, False, f"simulated failure against {target.name}",
                              duration_s=took)
        return GateResult(self.name, True, f"passed against {target.name}", duration_s=took)


def spread(seconds: float, jitter: float, seed: str) -> float:
    """`seconds` spread evenly by ±jitter, the same for the same seed (a release keeps its
    duration if it is run again)."""
    if not jitter:
        return seconds
    return seconds * (1 - jitter + 2 * jitter * random.Random(seed).random())
