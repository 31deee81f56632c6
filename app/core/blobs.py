"""Content-addressed blob store on the local file system.

A blob lives at ``<root>/<sha[:2]>/<sha>``. :meth:`BlobStore.put` writes a temp
file in the same directory, fsyncs it, renames it into place and fsyncs the
directory, so a blob is durable before the database row pointing to it
commits. Rewriting an existing blob is a no-op (same bytes, same name). An
unreferenced blob is garbage, never a half-made version.

Temporary files are named ``.tmp-*`` (blob writes) and ``.ready-*`` (the
readiness probe). A write that fails removes its own; a process killed while
writing leaves it behind, and start-up removes those older than a grace period
(:meth:`BlobStore.remove_stale_temporaries`): younger ones may belong to a write in
flight in another process sharing the directory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 1 << 20
#: Name prefixes of the store's temporary files (see :meth:`BlobStore.remove_stale_temporaries`).
TEMP_PREFIXES = (".tmp-", ".ready-")
HEX = frozenset("0123456789abcdef")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes | memoryview) -> tuple[str, int]:
        """Store ``data`` durably; returns ``(sha256, size)``."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.exists() and target.stat().st_size == len(data):
            return sha, len(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return sha, len(data)

    def put_file(self, write: Callable[[Path], None]) -> tuple[str, int]:
        """Store what ``write(path)`` writes into a fresh file, durably; returns ``(sha256, size)``.

        For large blobs: nothing of the blob's size is held in memory. The file is written
        in the store's root, fsynced, hashed by reading it back in chunks, then renamed into
        place (an existing blob with that hash is kept and the new file dropped).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        os.close(fd)
        tmp = Path(name)
        try:
            write(tmp)
            h = hashlib.sha256()
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
                while chunk := f.read(CHUNK * 4):
                    h.update(chunk)
                size = f.tell()
            sha = h.hexdigest()
            target = self.path(sha)
            if target.exists() and target.stat().st_size == size:
                tmp.unlink()
                return sha, size
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for d in {target.parent, self.root}:
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return sha, size

    def remove_stale_temporaries(self, grace_seconds: float) -> int:
        """Remove temporary files that crashed writes left behind: files named like the
        store's temporaries (:data:`TEMP_PREFIXES`) in the root or a shard directory,
        last modified more than ``grace_seconds`` ago (a younger one may be a write in
        flight in another process). Blobs are never touched. Returns how many were removed.

        Even a slow writer whose file went stale loses nothing acknowledged: its rename
        then fails, so its write fails and nothing points to a missing blob."""
        cutoff = time.time() - grace_seconds
        removed = 0
        try:
            shards = [e.path for e in os.scandir(self.root) if len(e.name) == 2 and set(e.name) <= HEX and e.is_dir()]
        except FileNotFoundError:
            return 0
        for d in [str(self.root), *shards]:
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            for e in entries:
                if not e.name.startswith(TEMP_PREFIXES):
                    continue
                try:
                    if not e.is_file(follow_symlinks=False) or e.stat(follow_symlinks=False).st_mtime >= cutoff:
                        continue
                    os.unlink(e.path)
                    removed += 1
                except FileNotFoundError:  # finished, or removed by another process, meanwhile
                    continue
        return removed

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def stream(self, sha256: str) -> Iterator[bytes]:
        with self.path(sha256).open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def check(self) -> None:
        """Raise unless the store is writable and readable (used by /readyz)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".ready-")
        try:
            try:
                os.write(fd, b"ok")
            finally:  # also when the write fails (a full disk): no descriptor leaks per probe
                os.close(fd)
            if Path(tmp).read_bytes() != b"ok":
                raise OSError("blob store read back different bytes")
        finally:
            Path(tmp).unlink(missing_ok=True)
