"""Slug stores, local and S3 (moto): put, find, get; a stored slug never changes; a slug
half written is never visible under its name."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from orchestrator.slugstore import CHUNK, LocalSlugStore, S3SlugStore, SlugConflict

KB = 1024


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_bucket(Bucket="slugs")
        yield client


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalSlugStore(tmp_path / "slugs")
    return S3SlugStore(request.getfixturevalue("s3"), "slugs", "chat/")


def test_put_find_get(store) -> None:
    assert store.find("abc.tar.gz") is None
    uri = store.put("abc.tar.gz", b"slug bytes")
    assert store.find("abc.tar.gz") == uri
    assert store.get("abc.tar.gz") == b"slug bytes"


def test_a_stored_slug_never_changes(store) -> None:
    uri = store.put("abc.tar.gz", b"slug bytes")
    assert store.put("abc.tar.gz", b"slug bytes") == uri  # the same bytes: nothing to do
    with pytest.raises(SlugConflict, match="stored with other bytes"):
        store.put("abc.tar.gz", b"other bytes")
    assert store.get("abc.tar.gz") == b"slug bytes"


def test_a_local_name_cannot_leave_the_directory(tmp_path: Path) -> None:
    for name in ("../x.tar.gz", "/etc/x", ".hidden"):
        with pytest.raises(ValueError, match="not a slug name"):
            LocalSlugStore(tmp_path).put(name, b"x")


class Broken:
    """A body that fails part-way through, as a dropped connection would."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        self.data, self.fail_at, self.at = data, fail_at, 0

    def read(self, size: int = -1) -> bytes:
        if self.at >= self.fail_at:
            raise ConnectionError("connection reset mid-upload")
        size = len(self.data) - self.at if size < 0 else size
        chunk = self.data[self.at:self.at + size]
        self.at += len(chunk)
        return chunk


def test_an_interrupted_s3_upload_leaves_nothing_under_the_name(s3) -> None:
    store = S3SlugStore(s3, "slugs", "chat/", multipart_threshold=5 * CHUNK)
    data = bytes(range(256)) * (48 * KB)  # 12 MB: a multipart upload of three parts
    with pytest.raises(ConnectionError):
        store.put_stream("big.tar.gz", Broken(data, 7 * CHUNK), "0" * 64)
    assert store.find("big.tar.gz") is None
    assert s3.list_objects_v2(Bucket="slugs").get("KeyCount") == 0
    assert s3.list_multipart_uploads(Bucket="slugs").get("Uploads", []) == []

    assert store.put("big.tar.gz", data) == "s3://slugs/chat/big.tar.gz"
    assert store.get("big.tar.gz") == data


def test_an_interrupted_local_write_leaves_nothing_under_the_name(tmp_path: Path) -> None:
    store = LocalSlugStore(tmp_path)
    (tmp_path / ".abc.tar.gz.1.2.tmp").write_bytes(b"half")  # what a crash leaves
    assert store.find("abc.tar.gz") is None
    assert store.put("abc.tar.gz", b"whole") and store.get("abc.tar.gz") == b"whole"
