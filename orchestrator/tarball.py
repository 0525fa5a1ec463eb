"""Slugs as deterministic tarballs: the app's source directory plus a release.json, packed
so that the same content always gives the same bytes, stored once under its digest.

The local fleet's hosts unpack these (rollout/agent.py); the slug uri is a file URI.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from orchestrator.slugstore import LocalSlugStore
from shiptypes import ProviderConfig, ProviderContext, ReleaseRef, Slug

SKIPPED = frozenset({"__pycache__", ".DS_Store", ".pytest_cache"})
FIXED_MTIME = 0  # every entry and the gzip header: the bytes depend on content only


class TarballBuildConfig(ProviderConfig):
    type: Literal["tarball"]
    source: str = Field("examples/app", description="directory packed into every slug")
    store: str = Field(".ship/slugs", description="directory of slugs, one file per digest")
    release_json: dict[str, Any] = Field(
        default_factory=dict, description="extra release.json keys for every release (tests)")
    release_json_by_number: dict[int, dict[str, Any]] = Field(
        default_factory=dict, description="extra release.json keys for some release numbers, "
                                          "e.g. {7: {crash_on_boot: true}}")


class TarballBuilder:
    """Builds `Slug(id="sha256-<16 hex>", uri=file:///…/<digest>.tar.gz)`."""

    def __init__(self, config: TarballBuildConfig, context: ProviderContext) -> None:
        self.config = config
        self.source = Path(config.source)
        self.store = Path(config.store)

    def build(self, release: ReleaseRef) -> Slug:
        if not self.source.is_dir():
            raise FileNotFoundError(f"slug source {self.source} is not a directory")
        data = pack(self.source, self._release_json(release))
        digest = hashlib.sha256(data).hexdigest()
        uri = LocalSlugStore(self.store).put(f"{digest}.tar.gz", data)
        return Slug(id=f"sha256-{digest[:16]}", uri=uri, size=len(data))

    def _release_json(self, release: ReleaseRef) -> bytes:
        doc = {"release": release.name, "pipeline": release.pipeline, "number": release.number,
               "sha": release.sha, **self.config.release_json,
               **self.config.release_json_by_number.get(release.number, {})}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def pack(source: Path, release_json: bytes) -> bytes:
    """A tar.gz of `source` (sorted, fixed times and owners) with release.json at its top."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _entries(source):
            name = path.relative_to(source).as_posix()
            if name == "release.json":
                continue  # the built one names the release
            info = _normalised(tar.gettarinfo(str(path), arcname=name))
            if info.isfile():
                with path.open("rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)
        info = _normalised(tarfile.TarInfo("release.json"))
        info.size = len(release_json)
        tar.addfile(info, io.BytesIO(release_json))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=FIXED_MTIME) as packed:
        packed.write(tar_bytes.getvalue())
    return out.getvalue()


def _entries(source: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirectories, files in os.walk(source):
        subdirectories[:] = sorted(d for d in subdirectories if d not in SKIPPED)
        base = Path(directory)
        found += [base / d for d in subdirectories]
        found += [base / f for f in sorted(files) if f not in SKIPPED and not f.endswith(".pyc")]
    return sorted(found, key=lambda p: p.relative_to(source).as_posix())


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    executable = info.isdir() or bool(info.mode & 0o100)
    info.mode = 0o755 if executable else 0o644
    return info

