"""Content-addressed artifact store behind one interface, chosen by URI scheme.

Files are addressed by sha256: uploading the same bytes twice stores them once, and a retried
job that writes the same output reuses it. The database stores URIs: ``file:///…/ab/abcd…`` for
the local folder (the default), ``s3://bucket/prefix/ab/abcd…`` for an S3-compatible bucket
(``LATHE_ARTIFACTS_URL=s3://bucket[/prefix]``).

Both stores have one shape:

- ``stage``/``stage_file``: a local staging copy, hashed as written (uploads are validated there);
- ``put``: store a staged file under its hash (idempotent); ``delete``;
- ``stat``/``open_reader``: size and a seekable reader, for streamed downloads (app/downloads.py);
- ``local_path``: a local file the engine can open: the file itself, or for S3 a verified copy in
  a content-addressed cache (valid forever: the key is the content's hash);
- ``blobs``/``staging_files``: what garbage collection walks (app/gc.py); ``check``: readiness.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

CHUNK = 1024 * 1024
BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")


class TooLarge(Exception):
    pass


class StoreUnavailable(Exception):
    """The store refused or could not be reached (wrong endpoint or credentials, missing bucket).
    The message names the cause, never a credential."""


@dataclass
class Staged:
    """A file written to the store's staging area, hashed as it was written."""

    path: Path
    sha256: str
    size: int


@dataclass
class Stat:
    size: int
    mtime: float  # seconds since the epoch


class Reader(Protocol):
    def seek(self, offset: int) -> Any: ...
    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


def sha256_of(uri: str) -> str:
    """The content hash a URI names (its last path segment)."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _hash_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            size += len(chunk)
            digest.update(chunk)
    return digest.hexdigest(), size


class _Base:
    """Staging, shared by both stores: uploads and job outputs are hashed in a local folder."""

    staging: Path

    @contextmanager
    def stage(self, source: BinaryIO, limit: int) -> Iterator[Staged]:
        """Copy a stream to a staging file in chunks, hashing as it goes; removed on exit."""
        fd, name = tempfile.mkstemp(dir=self.staging)
        path = Path(name)
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"larger than the limit of {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            yield Staged(path, digest.hexdigest(), size)
        finally:
            path.unlink(missing_ok=True)

    def stage_file(self, path: Path) -> Staged:
        return Staged(path, *_hash_file(path))

    def staging_files(self) -> Iterator[tuple[Path, float]]:
        """Staging files and their modification times (a killed process leaves its copy)."""
        for entry in os.scandir(self.staging):
            try:
                if entry.is_file(follow_symlinks=False):
                    yield Path(entry.path), entry.stat().st_mtime
            except FileNotFoundError:
                continue


def _copy_into_place(source: Path, dest: Path, sha256: str) -> None:
    """Copy to a temporary name of its own beside ``dest``, then rename: readers never see a
    half-written file, and parallel copies of the same content (threads of one process too) never
    write into, or rename away, each other's."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{sha256}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _local_blobs(root: Path) -> Iterator[tuple[Path, float]]:
    """Files named by a sha256 under ``root/xx/`` (temporary copies and .staging are skipped)."""
    for sub in os.scandir(root):
        if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(sub.path):
            if BLOB_NAME.match(entry.name) and entry.name.startswith(sub.name):
                try:
                    yield Path(entry.path), entry.stat().st_mtime
                except FileNotFoundError:
                    continue


class LocalStore(_Base):
    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)

    def _blob(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def uri(self, sha256: str) -> str:
        """Where content with this hash is (or would be) stored."""
        return self._blob(sha256).as_uri()

    def put(self, staged: Staged) -> str:
        """Move (or copy) a staged file into place; idempotent for the same content.

        Only app/blobs.py calls this, after claiming the blob's row: see there why."""
        dest = self._blob(staged.sha256)
        if not dest.exists():
            _copy_into_place(staged.path, dest, staged.sha256)
        return dest.as_uri()

    def path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != self.scheme:
            raise ValueError(f"not a {self.scheme}:// uri: {uri}")
        return Path(unquote(parsed.path))

    def local_path(self, uri: str) -> Path:
        """The stored file itself; FileNotFoundError if the store lost it."""
        path = self.path(uri)
        if not path.is_file():
            raise FileNotFoundError(sha256_of(uri))
        return path

    def stat(self, uri: str) -> Stat | None:
        try:
            st = self.path(uri).stat()
        except FileNotFoundError:
            return None
        return Stat(st.st_size, st.st_mtime)

    def open_reader(self, uri: str) -> Reader:
        return self.path(uri).open("rb")

    def delete(self, uri: str) -> None:
        self.path(uri).unlink(missing_ok=True)

    def blobs(self) -> Iterator[tuple[str, float]]:
        for path, mtime in _local_blobs(self.root):
            yield path.as_uri(), mtime

    def check(self) -> str:
        return "ok" if os.access(self.root, os.W_OK) else "not writable"


# --- S3 ----------------------------------------------------------------------------------------


def _s3_error(exc: Exception, action: str) -> StoreUnavailable:
    """A message that names the cause (error code, HTTP status, exception type) and nothing a
    client or a log must not see: no credentials, no signed URLs."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "?"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 403 or code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            cause = f"access denied ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        elif code in ("404", "NoSuchBucket"):
            cause = "the bucket does not exist"
        else:
            cause = f"error {code} (HTTP {status})"
    else:
        cause = f"unreachable ({type(exc).__name__}): check AWS_ENDPOINT_URL"
    return StoreUnavailable(f"The artifact store could not {action}: {cause}.")


class _S3Reader:
    """A seekable reader over one object: each seek starts a ranged GetObject at that offset."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store, self.key, self.pos, self.body = store, key, 0, None

    def seek(self, offset: int) -> int:
        if offset != self.pos or self.body is None:
            self.close()
            self.pos = offset
        return offset

    def read(self, size: int) -> bytes:
        if self.body is None:
            try:
                self.body = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key,
                                                         Range=f"bytes={self.pos}-")["Body"]
            except Exception as exc:
                if getattr(exc, "response", {}).get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # at (or past) the end: an empty object, or a read after the last byte
                raise _s3_error(exc, "read an artifact") from None
        chunk = self.body.read(size)
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None


class S3Store(_Base):
    """Objects under ``prefix/xx/sha256`` in one bucket; endpoint and credentials from the standard
    AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).

    ``cache``: a local folder for staging and for the copies jobs read (``local_path``)."""

    scheme = "s3"

    def __init__(self, url: str, cache: Path, *, multipart_threshold: int = 64 * 1024 * 1024,
                 client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError("LATHE_ARTIFACTS_URL must look like s3://BUCKET[/PREFIX]")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.cache = cache
        self.staging = cache / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.multipart_threshold = multipart_threshold
        self._client = client
        # botocore's DEBUG lines carry signed headers: never let them reach Lathe's logs.
        for name in ("botocore", "boto3", "s3transfer", "urllib3.connectionpool"):
            logging.getLogger(name).setLevel(max(logging.getLogger(name).getEffectiveLevel(), logging.INFO))

    @property
    def client(self) -> Any:
        """Built on first use, in the process that uses it (worker pool children fork first)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            # S3-compatible servers (SeaweedFS, MinIO) behind a custom endpoint want path-style URLs.
            style = "path" if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") else "auto"
            self._client = boto3.session.Session().client("s3", config=Config(
                s3={"addressing_style": style}, connect_timeout=5, read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"}))
        return self._client

    def _key(self, sha256: str) -> str:
        return "/".join(p for p in (self.prefix, sha256[:2], sha256) if p)

    def _key_of(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.netloc != self.bucket:
            raise ValueError(f"not an object of s3://{self.bucket}: {uri}")
        return parsed.path.lstrip("/")

    def uri(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self._key(sha256)}"

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise _s3_error(exc, "look up an artifact") from None
        except Exception as exc:
            raise _s3_error(exc, "look up an artifact") from None

    def put(self, staged: Staged) -> str:
        """Upload unless the object exists (idempotent); large files go multipart."""
        from boto3.s3.transfer import TransferConfig

        key = self._key(staged.sha256)
        if self._head(key) is None:
            config = TransferConfig(multipart_threshold=self.multipart_threshold,
                                    multipart_chunksize=max(self.multipart_threshold, 5 * 1024 * 1024))
            try:
                self.client.upload_file(str(staged.path), self.bucket, key, Config=config)
            except Exception as exc:
                raise _s3_error(exc, "store an artifact") from None
        return self.uri(staged.sha256)

    def stat(self, uri: str) -> Stat | None:
        head = self._head(self._key_of(uri))
        return None if head is None else Stat(head["ContentLength"], head["LastModified"].timestamp())

    def open_reader(self, uri: str) -> Reader:
        return _S3Reader(self, self._key_of(uri))

    def local_path(self, uri: str) -> Path:
        """A verified local copy in the cache: downloaded once, renamed into place atomically.
        FileNotFoundError if the object is gone."""
        sha256 = sha256_of(uri)
        dest = self.cache / sha256[:2] / sha256
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{sha256}.", suffix=".tmp")
        os.close(fd)
        try:
            if self._head(self._key_of(uri)) is None:
                raise FileNotFoundError(sha256)
            try:
                self.client.download_file(self.bucket, self._key_of(uri), tmp)
            except Exception as exc:
                raise _s3_error(exc, "fetch an artifact") from None
            got, _ = _hash_file(Path(tmp))
            if got != sha256:
                raise StoreUnavailable(f"The artifact {sha256} fetched from the store has sha256 {got}: corrupt.")
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest

    def delete(self, uri: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key_of(uri))
        except Exception as exc:
            raise _s3_error(exc, "delete an artifact") from None
        (self.cache / sha256_of(uri)[:2] / sha256_of(uri)).unlink(missing_ok=True)

    def blobs(self) -> Iterator[tuple[str, float]]:
        """Every object named ``prefix/xx/sha256``, with its LastModified."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, **({"Prefix": self.prefix + "/"} if self.prefix else {}))
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    rest = obj["Key"][len(self.prefix) + 1:] if self.prefix else obj["Key"]
                    sub, _, name = rest.partition("/")
                    if BLOB_NAME.match(name) and name.startswith(sub):
                        yield f"s3://{self.bucket}/{obj['Key']}", obj["LastModified"].timestamp()
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise _s3_error(exc, "list the bucket") from None

    def cached_files(self) -> Iterator[tuple[Path, float]]:
        """Local copies in the cache (garbage collection drops those of deleted objects)."""
        return _local_blobs(self.cache)

    def check(self) -> str:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            return str(_s3_error(exc, f"reach the bucket {self.bucket!r}")).removeprefix("The artifact store ")
        return "ok"


Store = LocalStore | S3Store


def open_store(settings: Any) -> Store:
    """The store ``settings.artifacts_url`` names (an s3:// URL), else the local folder. For S3,
    ``settings.artifact_root`` is the local cache and staging folder."""
    url = settings.artifacts_url
    if url and url.startswith("s3://"):
        return S3Store(url, settings.artifact_root, multipart_threshold=settings.s3_multipart_threshold_bytes)
    return LocalStore(settings.artifact_root)
