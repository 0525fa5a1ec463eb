"""Where slugs are kept: a local directory (the default) or an S3 bucket, behind one small
interface.

A slug is stored under a name derived from its digest and is immutable once stored: a second
put of the same bytes is a no-op, other bytes under a stored name are refused (SlugConflict).
A half-written slug is never visible: the local store renames a finished temporary file into
place, and S3 shows an object only once its PUT (or its multipart upload) completes.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union

from pydantic import Field

from shiptypes import ProviderConfig, ProviderContext

CHUNK = 1 << 20


class LocalStoreConfig(ProviderConfig):
    type: Literal["local"] = "local"
    path: str = Field(".ship/slugs", description="directory of slugs, one file per digest")


class S3StoreConfig(ProviderConfig):
    type: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = Field("slugs/", description="key prefix; the key ends in the slug's digest")
    region: str | None = Field(None, description="default: the pipeline's region")
    profile: str | None = Field(None, description="a named profile of the credential chain")
    endpoint_url: str | None = Field(None, description="another endpoint, e.g. for tests")


StoreConfig = Annotated[Union[LocalStoreConfig, S3StoreConfig],  # noqa: UP007
                        Field(discriminator="type")]


class SlugConflict(Exception):
    """Other bytes under a stored slug's name: a stored slug never changes."""


class SlugStore(Protocol):
    def put(self, name: str, data: bytes) -> str:
        """Store `data` under `name` (no-op when those bytes are there); its URI."""
        ...

    def find(self, name: str) -> str | None:
        """The URI of the slug stored under `name`, or None."""
        ...

    def get(self, name: str) -> bytes: ...


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalSlugStore:
    """Slugs as files of one directory, `file://` URIs."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def put(self, name: str, data: bytes) -> str:
        path = self._path(name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
            temporary.write_bytes(data)
            try:
                os.link(temporary, path)  # unlike a rename, never replaces a stored slug
            except FileExistsError:
                pass
            finally:
                temporary.unlink()
        if digest_of(path.read_bytes()) != digest_of(data):
            raise SlugConflict(f"{path} is stored with other bytes; a slug never changes")
        return path.resolve().as_uri()

    def find(self, name: str) -> str | None:
        path = self._path(name)
        return path.resolve().as_uri() if path.is_file() else None

    def get(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def _path(self, name: str) -> Path:
        if not name or name.startswith(("/", ".")) or ".." in name.split("/"):
            raise ValueError(f"{name!r} is not a slug name")
        return self.directory / name


class S3SlugStore:
    """Slugs as objects of a bucket under `prefix`, `s3://` URIs. Each object carries its
    sha256 in its metadata, so a second put compares digests without reading the object."""

    def __init__(self, s3: Any, bucket: str, prefix: str = "slugs/",
                 multipart_threshold: int = 64 * CHUNK) -> None:
        from boto3.s3.transfer import TransferConfig

        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                        multipart_chunksize=max(5 * CHUNK, multipart_threshold))

    def put(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        return self.put_stream(name, io.BytesIO(data), digest_of(data), metadata)

    def put_file(self, name: str, path: Path, metadata: dict[str, str] | None = None) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
        with path.open("rb") as source:
            return self.put_stream(name, source, digest.hexdigest(), metadata)

    def put_stream(self, name: str, body: Any, sha256: str,
                   metadata: dict[str, str] | None = None) -> str:
        """Upload `body` unless the object is there; S3 shows it only once complete (an
        interrupted multipart upload is aborted and leaves nothing under the key)."""
        stored = self._digest(name)
        if stored is None:
            self.s3.upload_fileobj(body, self.bucket, self._key(name), Config=self._transfer,
                                   ExtraArgs={"Metadata": {**(metadata or {}),
                                                           "sha256": sha256}})
            stored = self._digest(name)
        if stored != sha256:
            raise SlugConflict(f"{self.uri(name)} is stored with other bytes; a slug never "
                               "changes")
        return self.uri(name)

    def find(self, name: str) -> str | None:
        return self.uri(name) if self._head(name) is not None else None

    def get(self, name: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _digest(self, name: str) -> str | None:
        """The stored object's sha256 (read from the object when its metadata lacks it)."""
        head = self._head(name)
        if head is None:
            return None
        return head.get("Metadata", {}).get("sha256") or digest_of(self.get(name))

    def _head(self, name: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise


def open_store(config: LocalStoreConfig | S3StoreConfig,
               context: ProviderContext) -> SlugStore:
    if isinstance(config, LocalStoreConfig):
        return LocalSlugStore(Path(config.path))
    from rollout.aws import aws_session  # boto3 is imported only by those who use S3

    session = aws_session(config.profile, config.region or context.region, context.env)
    return S3SlugStore(session.client("s3", endpoint_url=config.endpoint_url), config.bucket,
                       config.prefix)
