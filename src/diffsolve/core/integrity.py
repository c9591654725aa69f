"""File integrity: SHA-256 digests and inter-process claims.

* :func:`sha256_bytes` / :func:`sha256_file`: the digest recorded for a file is always taken
  from the bytes the writer itself produced (never by re-reading a file it did not write),
  and readers compare the file's current digest against that record.
* :class:`Claims`: exclusive, non-blocking claims on numbered items (shards), shared between
  processes through POSIX record locks (``fcntl.lockf``) on one byte per item of a lock file.
  The kernel drops a process's locks when it exits, however it exits (``kill -9`` included),
  so a crashed run never leaves a stale claim behind; record locks also work over NFS (lockd).
  Item ``k`` is byte ``k + 1`` of the file; byte 0 guards the run's manifest.
  On a platform without ``fcntl`` (Windows) claims are no-ops: one run per folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import TracebackType

from .errors import DiffsolveError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class IntegrityError(DiffsolveError):
    """A file's content does not match the SHA-256 recorded for it (corrupted or replaced),
    or a file has no record to be verified against."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Claims:
    """Exclusive claims on items 0, 1, ... (and the manifest) of one output folder.

    Within one process claims do not exclude each other (POSIX record locks belong to the
    process); they exclude other processes. Keep one :class:`Claims` open per run and close it
    at the end (closing any descriptor of the lock file drops all of the process's locks on it).
    """

    MANIFEST = -1

    def __init__(self, lock_path: Path) -> None:
        self.path = lock_path
        self.fd: int | None = None
        if fcntl is not None:
            self.fd = os.open(str(lock_path), os.O_RDWR | os.O_CREAT, 0o644)

    def _lock(self, item: int, blocking: bool) -> bool:
        if self.fd is None:
            return True
        flags = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.lockf(self.fd, flags, 1, item + 1, os.SEEK_SET)
        except (BlockingIOError, PermissionError):
            return False
        return True

    def try_claim(self, item: int) -> bool:
        """Claim ``item`` if no other process holds it (True), else False at once."""
        return self._lock(item, blocking=False)

    def wait_claim(self, item: int) -> None:
        """Claim ``item``, waiting for the process that holds it to release it or to exit."""
        self._lock(item, blocking=True)

    def release(self, item: int) -> None:
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, item + 1, os.SEEK_SET)

    def any_held_by_others(self) -> bool:
        """True if another process holds a claim on any item (bytes 1 .. infinity)."""
        if self.fd is None:
            return False
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 1, os.SEEK_SET)
        except (BlockingIOError, PermissionError):
            return True
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 0, 1, os.SEEK_SET)
        return False

    def manifest(self) -> _Held:
        """Context manager: exclusive access to the manifest (blocking)."""
        return _Held(self, self.MANIFEST)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Held:
    def __init__(self, claims: Claims, item: int) -> None:
        self.claims, self.item = claims, item

    def __enter__(self) -> None:
        self.claims.wait_claim(self.item)

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.claims.release(self.item)
