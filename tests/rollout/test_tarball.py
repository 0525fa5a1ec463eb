"""Tarball slugs: deterministic bytes, content-addressed, stored once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from pydantic import ValidationError

from orchestrator.tarball import TarballBuildConfig, TarballBuilder
from shiptypes import ProviderContext, ReleaseRef, Slug
from tests.rollout.conftest import APP

CONTEXT = ProviderContext(pipeline="us", region="us-east-1")


def builder(source: Path, store: Path, **options: object) -> TarballBuilder:
    config = TarballBuildConfig(type="tarball", source=str(source), store=str(store), **options)
    return TarballBuilder(config, CONTEXT)


def ref(number: int, sha: str = "c0ffee") -> ReleaseRef:
    return ReleaseRef(id=number, pipeline="us", number=number, sha=sha)


def stored(slug: Slug) -> Path:
    return Path(url2pathname(urlsplit(slug.uri).path))


def members(slug: Slug) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(stored(slug)) as tar:
        return {m.name: m for m in tar.getmembers()}


def release_json(slug: Slug) -> dict[str, object]:
    with tarfile.open(stored(slug)) as tar:
        return json.load(tar.extractfile("release.json"))  # type: ignore[arg-type]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    copy = tmp_path / "app"
    shutil.copytree(APP, copy)
    return copy


def test_the_same_content_gives_the_same_slug_stored_once(source: Path, tmp_path: Path) -> None:
    first = builder(source, tmp_path / "a").build(ref(1))
    for path in source.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))  # other times, same content
    (source / "__pycache__").mkdir(exist_ok=True)
    (source / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"cache")
    again = builder(source, tmp_path / "a").build(ref(1))
    elsewhere = builder(source, tmp_path / "b").build(ref(1))

    assert first == again
    assert stored(first).read_bytes() == stored(elsewhere).read_bytes()
    assert len(list((tmp_path / "a").iterdir())) == 1


def test_a_slug_is_named_by_the_digest_of_its_bytes(source: Path, tmp_path: Path) -> None:
    slug = builder(source, tmp_path / "slugs").build(ref(1))
    data = stored(slug).read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    assert slug.id == f"sha256-{digest[:16]}"
    assert stored(slug) == (tmp_path / "slugs" / f"{digest}.tar.gz").resolve()
    assert slug.uri.startswith("file:///")
    assert slug.size == len(data)


def test_entries_are_sorted_with_fixed_times_and_owners(source: Path, tmp_path: Path) -> None:
    (source / "static").mkdir()
    (source / "static" / "b.txt").write_text("b")
    (source / "static" / "a.txt").write_text("a")
    slug = builder(source, tmp_path / "slugs").build(ref(1))
    entries = members(slug)
    names = [n for n in entries if n != "release.json"]

    assert names == sorted(names)
    assert {"app.py", "static", "static/a.txt", "static/b.txt"} <= set(names)
    assert "__pycache__" not in " ".join(entries)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in entries.values()} == {
        (0, 0, 0, "", "")}
    assert stored(slug).read_bytes()[4:8] == bytes(4)  # the gzip header's mtime


def test_release_json_names_the_release_and_carries_test_extras(
        source: Path, tmp_path: Path) -> None:
    (source / "release.json").write_text('{"release": "stale"}')
    build = builder(source, tmp_path / "slugs", release_json={"count_messages": False},
                    release_json_by_number={2: {"crash_on_boot": True}})
    one, two = build.build(ref(1, "aaa")), build.build(ref(2, "bbb"))

    assert release_json(one) == {"release": "us#1", "pipeline": "us", "number": 1,
                                 "sha": "aaa", "count_messages": False}
    assert release_json(two)["crash_on_boot"] is True
    assert one.id != two.id
    assert list(members(one)).count("release.json") == 1


def test_a_missing_source_or_an_unknown_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        builder(tmp_path / "nowhere", tmp_path / "slugs").build(ref(1))
    with pytest.raises(ValidationError):
        TarballBuildConfig.model_validate({"type": "tarball", "sorce": "examples/app"})
