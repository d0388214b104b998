"""Content-addressed artifact store behind one interface, chosen by URI scheme.

Files are addressed by sha256: uploading the same bytes twice stores them once, and a retried
job that writes the same output reuses it. The database stores URIs (``file:///…``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

CHUNK = 1024 * 1024


class TooLarge(Exception):
    pass


@dataclass
class Staged:
    """A file written to the store's staging area, hashed as it was written."""

    path: Path
    sha256: str
    size: int


class LocalStore:
    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)

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
        digest, size = hashlib.sha256(), 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                size += len(chunk)
                digest.update(chunk)
        return Staged(path, digest.hexdigest(), size)

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
            dest.parent.mkdir(parents=True, exist_ok=True)
            # A temporary name of its own: parallel puts of the same content (threads of one
            # process too) must not write into, or rename away, each other's copy.
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{staged.sha256}.", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(staged.path, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)  # atomic: readers never see a half-written blob
            finally:
                Path(tmp).unlink(missing_ok=True)
        return dest.as_uri()

    def path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != self.scheme:
            raise ValueError(f"not a {self.scheme}:// uri: {uri}")
        return Path(unquote(parsed.path))

    def delete(self, uri: str) -> None:
        self.path(uri).unlink(missing_ok=True)


def open_store(root: Path) -> LocalStore:
    return LocalStore(root)
