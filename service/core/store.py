"""The artifact store: models, datasets, VNN-LIB properties and reports.

:class:`ArtifactStore` is the interface (an object store can implement it for multi-machine deployments);
:class:`LocalArtifactStore` is the default, a content-addressed directory. Every write goes to a temporary file in
the same directory and is renamed (or hard-linked) into place, so a reader never sees a partial file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("models", "datasets", "properties", "reports")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


class TooLarge(Exception):
    """The upload went over its size cap; nothing was stored."""

    def __init__(self, limit: int):
        super().__init__(f"over the cap of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Stored:
    digest: str  # "sha256:<hex>"
    size: int
    created: bool  # False when the same bytes were already stored


class ArtifactStore:
    """What the API and the workers need from storage."""

    def put_stream(self, kind: str, chunks: Iterable[bytes], max_bytes: int) -> Stored:
        """Store the bytes of ``chunks`` under their sha256, never holding them whole in memory."""
        raise NotImplementedError

    def local_path(self, kind: str, digest: str) -> str | None:
        """A local file holding the artifact (downloaded to a cache by remote stores), or None when missing."""
        raise NotImplementedError

    def put_once(self, kind: str, name: str, data: bytes) -> bool:
        """Write ``data`` under ``name`` unless something is already there; True when this call wrote it."""
        raise NotImplementedError

    def read(self, kind: str, name: str) -> bytes | None:
        raise NotImplementedError

    def discard(self, kind: str, digest: str) -> None:
        """Remove an artifact that failed validation."""
        raise NotImplementedError


def _hex_of(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


class LocalArtifactStore(ArtifactStore):
    """``<root>/<kind>/<sha256 hex>`` for content, ``<root>/<kind>/<name>`` for named artifacts (reports)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        for kind in KINDS:
            os.makedirs(os.path.join(self.root, kind), exist_ok=True)

    def _dir(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        return os.path.join(self.root, kind)

    def _temp(self, kind: str):
        fd, path = tempfile.mkstemp(prefix=".partial-", dir=self._dir(kind))
        return os.fdopen(fd, "wb"), path

    def put_stream(self, kind: str, chunks: Iterable[bytes], max_bytes: int) -> Stored:
        sha = hashlib.sha256()
        size = 0
        f, temp = self._temp(kind)
        try:
            with f:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(max_bytes)
                    sha.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = f"sha256:{sha.hexdigest()}"
            final = os.path.join(self._dir(kind), sha.hexdigest())
            created = not os.path.exists(final)
            os.replace(temp, final)  # same bytes, same name: replacing is harmless and atomic
            return Stored(digest, size, created)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    def local_path(self, kind: str, digest: str) -> str | None:
        path = os.path.join(self._dir(kind), _hex_of(digest))
        return path if os.path.exists(path) else None

    def _named(self, kind: str, name: str) -> str:
        if not _NAME.match(name) or name.startswith("."):
            raise ValueError(f"bad artifact name {name!r}")
        return os.path.join(self._dir(kind), name)

    def put_once(self, kind: str, name: str, data: bytes) -> bool:
        final = self._named(kind, name)
        f, temp = self._temp(kind)
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(temp, final)  # fails when the name exists: the first writer wins
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(temp)

    def read(self, kind: str, name: str) -> bytes | None:
        try:
            with open(self._named(kind, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def discard(self, kind: str, digest: str) -> None:
        path = self.local_path(kind, digest)
        if path:
            os.unlink(path)
