"""Where the server keeps saved streams: a directory (or a URL handled by Beam's ``FileSystems``).

A saved stream is two files named by an unguessable **snapshot id** (``secrets.token_urlsafe(24)``, 32
characters): ``<id>.snap`` (the ``rnnstream.snapshot/2`` bytes) and ``<id>.json`` (the stream it belongs to,
its next ``seq``, ``t``, ``sample_rate``, why it was saved, when it expires), written in that order so the
``.json`` marks a complete save. Ids are never derived from stream names, so a new stream reusing a name
never overwrites another client's saved state.

A resume *claims* the id: the ``.json`` is renamed away first (one claimer wins), then both files are read
and deleted, so an id resumes at most once. A claim of an id past its expiry deletes it and fails. All
methods block (file I/O): the server calls them in a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

_ID = re.compile(r"[A-Za-z0-9_-]{32}")


class SnapshotMissing(LookupError):
    """No saved stream under this id: never issued, already resumed, or expired (the message says which)."""


class SnapshotTooLarge(ValueError):
    """A stored snapshot over the size limit (refused before it is read)."""


class _LocalFiles:
    """The file operations the store needs, on a local directory."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        tmp = path.with_name(f".{name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def rename(self, src: str, dst: str) -> None:
        os.rename(self.root / src, self.root / dst)  # FileNotFoundError when another claimer won

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def names(self, suffix: str) -> list[str]:
        return [p.name for p in self.root.glob(f"*{suffix}")]


class _BeamFiles:
    """The same operations through ``apache_beam.io.filesystems.FileSystems`` (gs://, s3://, hdfs://, local)."""

    def __init__(self, root: str):
        from apache_beam.io.filesystems import (
            FileSystems,  # only when a URL store is configured
        )

        self.fs = FileSystems
        self.root = root.rstrip("/")
        if not self.fs.exists(self.root):
            self.fs.mkdirs(self.root)

    def _path(self, name: str) -> str:
        return self.fs.join(self.root, name)

    def write(self, name: str, data: bytes) -> None:
        with self.fs.create(self._path(name)) as fh:
            fh.write(data)

    def size(self, name: str) -> int:
        return int(self.fs.match([self._path(name)])[0].metadata_list[0].size_in_bytes)

    def read(self, name: str) -> bytes:
        with self.fs.open(self._path(name)) as fh:
            return fh.read()

    def rename(self, src: str, dst: str) -> None:
        from apache_beam.io.filesystem import BeamIOError

        try:
            self.fs.rename([self._path(src)], [self._path(dst)])
        except BeamIOError as exc:
            raise FileNotFoundError(src) from exc

    def delete(self, name: str) -> None:
        from apache_beam.io.filesystem import BeamIOError

        try:
            self.fs.delete([self._path(name)])
        except BeamIOError:
            pass

    def names(self, suffix: str) -> list[str]:
        found = self.fs.match([self._path(f"*{suffix}")])[0].metadata_list
        return [m.path.rsplit("/", 1)[-1] for m in found]


def _files(root: str, beam: bool | None) -> _LocalFiles | _BeamFiles:
    if beam is None:
        beam = "://" in root
    if not beam:
        return _LocalFiles(root)
    try:
        return _BeamFiles(root)
    except ImportError as exc:
        raise ImportError(f"snapshot store {root!r} is a URL: it needs apache_beam's FileSystems "
                          "(pip install 'rnnstream[beam]'), or give a local directory") from exc


class SnapshotStore:
    """Saved streams under unguessable, single-use, expiring ids (see module doc)."""

    def __init__(self, root: str, *, ttl_s: float, max_bytes: int, beam: bool | None = None):
        self.root = root
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._files = _files(root, beam)

    def save(self, stream_id: str, blob: bytes, meta: dict[str, Any]) -> str:
        """Store ``blob`` for ``stream_id``; returns the new snapshot id. OSError when the store fails."""
        token = secrets.token_urlsafe(24)
        now = time.time()
        record = {**meta, "stream": stream_id, "id": token, "saved_at": now, "expires_at": now + self.ttl_s}
        self._files.write(f"{token}.snap", blob)
        self._files.write(f"{token}.json", json.dumps(record).encode())
        return token

    def claim(self, token: str) -> tuple[bytes, dict[str, Any]]:
        """The saved ``(blob, meta)`` of ``token``, removed from the store (single use)."""
        if not _ID.fullmatch(token):
            raise SnapshotMissing(f"{token!r} is not a snapshot id this server issued")
        claimed = f"{token}.json.claimed-{secrets.token_hex(4)}"
        try:
            self._files.rename(f"{token}.json", claimed)
        except FileNotFoundError:
            raise SnapshotMissing(f"no saved stream under snapshot id {token!r} (never issued, already resumed, "
                                  "or expired)") from None
        try:
            meta = json.loads(self._files.read(claimed))
            if not isinstance(meta, dict) or float(meta.get("expires_at", 0)) < time.time():
                raise SnapshotMissing(f"snapshot id {token!r} has expired (kept {self.ttl_s:g} s)")
            size = self._files.size(f"{token}.snap")
            if size > self.max_bytes:
                raise SnapshotTooLarge(f"saved snapshot {token!r} has {size} bytes, over the limit of "
                                       f"{self.max_bytes} bytes")
            return self._files.read(f"{token}.snap"), meta
        except (ValueError, TypeError) as exc:
            if isinstance(exc, SnapshotTooLarge):
                raise
            raise SnapshotMissing(f"snapshot id {token!r}: its record is unreadable ({exc})") from None
        finally:
            self._files.delete(claimed)
            self._files.delete(f"{token}.snap")

    def put_back(self, token: str, blob: bytes, meta: dict[str, Any]) -> None:
        """Undo a claim whose resume the client got wrong (e.g. a wrong rate): same id, same expiry."""
        self._files.write(f"{token}.snap", blob)
        self._files.write(f"{token}.json", json.dumps(meta).encode())

    def purge(self, now: float | None = None) -> int:
        """Delete every saved stream past its expiry; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for name in self._files.names(".json"):
            token = name[: -len(".json")]
            try:
                expires = float(json.loads(self._files.read(name)).get("expires_at", 0))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
            if expires < now:
                self._files.delete(name)
                self._files.delete(f"{token}.snap")
                removed += 1
        return removed


__all__ = ["SnapshotMissing", "SnapshotStore", "SnapshotTooLarge"]
