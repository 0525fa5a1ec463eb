"""Building slugs: immutable, content-addressed release artifacts.

A builder turns a release's commits into a Slug whose id is the digest of its content, so
the same content is never stored twice and a slug can never change under a release.
"""

from __future__ import annotations

import hashlib
from typing import Literal, Protocol

from pydantic import Field

from gates.sim import spread
from orchestrator.gitbuild import GitBuildConfig, GitBuilder
from orchestrator.tarball import TarballBuildConfig, TarballBuilder
from shiptypes import (
    BuildFailed,
    ProviderConfig,
    ProviderContext,
    ReleaseNumber,
    ReleaseRef,
    Seconds,
    Slug,
)

__all__ = ["BUILDERS", "BuildFailed", "Builder"]


class Builder(Protocol):
    def build(self, release: ReleaseRef) -> Slug: ...


class SimBuildConfig(ProviderConfig):
    type: Literal["sim"]
    duration: Seconds = 0.0
    jitter: float = Field(0.0, ge=0, le=1, description="relative spread of the duration, "
                          "drawn once per release")
    fail_releases: list[ReleaseNumber] = Field(default_factory=list,
                                               description="release numbers that fail")


class SimBuilder:
    """Takes its configured time; the slug's content is the list of commits it was built from."""

    def __init__(self, config: SimBuildConfig, context: ProviderContext) -> None:
        self.config = config
        self._clock = context.clock

    def build(self, release: ReleaseRef) -> Slug:
        self._clock.sleep(spread(self.config.duration, self.config.jitter,
                                 f"{release.pipeline}/{release.number}/build"))
        if release.number in self.config.fail_releases:
            raise BuildFailed(f"simulated build failure of {release.name}")
        content = "\n".join(c.sha for c in release.commits).encode()
        digest = hashlib.sha256(content).hexdigest()
        return Slug(id=f"sha256-{digest[:16]}", uri=f"sim://slugs/{digest}", size=len(content))


# To add a builder, write its module (config model with a `type` literal, a class taking
# `(config, context)`) and add one line here.
BUILDERS: dict[type, type] = {
    SimBuildConfig: SimBuilder,
    TarballBuildConfig: TarballBuilder,
    GitBuildConfig: GitBuilder,
}
