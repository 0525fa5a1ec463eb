"""A simulated outcome metric: a steady rate with a daily swell and noise, that drops while
a release told to break the heartbeat is serving."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field

from shiptypes import Point, ProviderConfig, ProviderContext, ReleaseNumber, Seed, Series, draw


class SimSourceConfig(ProviderConfig):
    type: Literal["sim"]
    rate_per_min: float = Field(1000.0, gt=0, le=1e9)
    noise: float = Field(0.03, ge=0, le=0.5, description="relative noise per window")
    daily_swing: float = Field(0.1, ge=0, lt=1, description="relative daily amplitude")
    breach_releases: list[ReleaseNumber] = Field(default_factory=list,
                                                 description="releases that break it")
    breach_share: float = Field(0.0, ge=0, le=1, description="share of releases that break "
                                "it, at random by release number (seeded by pipeline)")
    seed: Seed | None = Field(None,
                              description="varies which releases `breach_share` picks")
    breach_ratio: float = Field(0.4, ge=0, le=1000,
                                description="the rate while a breaking release serves")
    down: bool = Field(False, description="the source answers nothing: no data")


class SimSource:
    def __init__(self, config: SimSourceConfig, context: ProviderContext) -> None:
        self.config = config
        self._serving_at = context.serving_at
        self._pipeline = context.pipeline
        self._breaks: dict[int | None, bool] = {}

    def fetch(self, query: str, start: datetime, end: datetime, step_s: float) -> Series:
        if self.config.down:
            return Series(error="simulated outage: the source did not answer")
        points = []
        at = start
        while at <= end:
            points.append(Point(at, self._value(query, at)))
            at += timedelta(seconds=step_s)
        return Series(tuple(points))

    def _value(self, query: str, at: datetime) -> float:
        cfg = self.config
        day = (at.hour * 3600 + at.minute * 60 + at.second) / 86400
        level = cfg.rate_per_min * (1 + cfg.daily_swing * math.sin(2 * math.pi * (day - 0.25)))
        noise = random.Random(f"{query}@{int(at.timestamp())}").gauss(0, cfg.noise)
        broken = self.breaks(self._serving_at(at))
        return max(0.0, level * (1 + noise) * (cfg.breach_ratio if broken else 1.0))

    def breaks(self, number: int | None) -> bool:
        """Whether release `number` breaks the heartbeat while it serves."""
        if number not in self._breaks:
            unlucky = random.Random(draw(f"{self._pipeline}/{number}/breach",
                                         self.config.seed)).random()
            self._breaks[number] = number is not None and (
                number in self.config.breach_releases or unlucky < self.config.breach_share)
        return self._breaks[number]
