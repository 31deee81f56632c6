"""Blob store: content addressing, atomic writes (temp file, fsync, rename, directory
fsync), nothing left behind by a failed write."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.blobs import BlobStore


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_content_addressed_path_and_round_trip(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    data = b"steward" * 1000
    sha, size = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    assert store.path(sha) == tmp_path / "blobs" / sha[:2] / sha
    assert store.get(sha) == data and store.exists(sha)
    assert b"".join(store.stream(sha)) == data
    assert files(store.root) == [store.path(sha)]


def test_same_bytes_same_blob(tmp_path):
    store = BlobStore(tmp_path)
    a = store.put(b"x" * 10)
    mtime = store.path(a[0]).stat().st_mtime_ns
    assert store.put(memoryview(b"x" * 10)) == a
    assert store.path(a[0]).stat().st_mtime_ns == mtime
    assert store.put(b"y")[0] != a[0]
    assert len(files(tmp_path)) == 2


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "A" * 64, "../" + "a" * 61])
def test_path_refuses_non_digests(tmp_path, bad):
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path(bad)


def _spy_fsync(monkeypatch) -> list[str]:
    """Record what is fsynced: 'file' or 'dir'."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_put_fsyncs_the_file_before_the_rename_and_then_the_directory(tmp_path, monkeypatch):
    order: list[str] = []
    fsyncs = _spy_fsync(monkeypatch)
    real_replace = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        order.append(f"rename after {list(fsyncs)}")
        assert Path(src).name.startswith(".tmp-") and Path(src).parent == Path(dst).parent
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    BlobStore(tmp_path).put(b"durable")
    assert order == ["rename after ['file']"]
    assert fsyncs == ["file", "dir"]


def test_put_file_is_atomic_and_durable(tmp_path, monkeypatch):
    store = BlobStore(tmp_path)
    fsyncs = _spy_fsync(monkeypatch)
    sha, size = store.put_file(lambda p: p.write_bytes(b"abc" * 100))
    assert sha == hashlib.sha256(b"abc" * 100).hexdigest() and size == 300
    assert fsyncs[0] == "file" and "dir" in fsyncs
    assert files(tmp_path) == [store.path(sha)]
    assert store.put_file(lambda p: p.write_bytes(b"abc" * 100)) == (sha, size)
    assert files(tmp_path) == [store.path(sha)]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    store = BlobStore(tmp_path)

    def broken(src, dst):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        store.put(b"never")
    with pytest.raises(OSError):
        store.put_file(lambda p: p.write_bytes(b"never either"))
    assert files(tmp_path) == []

    monkeypatch.undo()

    def half(p: Path) -> None:
        p.write_bytes(b"half")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError):
        store.put_file(half)
    assert files(tmp_path) == []


def test_check_reads_back_and_cleans_up(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    store.check()
    assert files(tmp_path) == []
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    broken = BlobStore.__new__(BlobStore)
    broken.root = blocker / "blobs"
    with pytest.raises(OSError):
        broken.check()


def test_check_on_a_full_disk_raises_and_leaks_no_descriptor(tmp_path, monkeypatch):
    """/readyz probes the store every few seconds; when the write fails (ENOSPC) the
    temporary file is removed and its descriptor closed, or a full disk would pile up
    open (deleted) files until the process runs out of descriptors."""
    store = BlobStore(tmp_path / "blobs")
    real_write = os.write

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fds = sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    monkeypatch.setattr(os, "write", no_space)
    for _ in range(5):
        with pytest.raises(OSError) as e:
            store.check()
        assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "write", real_write)
    assert files(tmp_path) == []
    if fds is not None:
        assert sorted(os.listdir("/proc/self/fd")) == fds


def _age(p: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(p, (t, t))


def test_remove_stale_temporaries_takes_only_old_temporaries(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    sha, _ = store.put(b"a real blob")
    old_blob = store.path(sha)
    _age(old_blob, 3600)  # old, but a blob
    shard = old_blob.parent
    stale = [shard / ".tmp-abc123", store.root / ".tmp-def456", store.root / ".ready-x1"]
    fresh = [shard / ".tmp-fresh1", store.root / ".tmp-fresh2"]
    others = [store.root / "notes.txt", shard / "tmp-no-dot"]
    for p in stale + fresh + others:
        p.write_bytes(b"partial")
    for p in stale + others:
        _age(p, 3600)
    (store.root / ".tmp-dir").mkdir()  # not a file: left alone
    _age(store.root / ".tmp-dir", 3600)
    assert store.remove_stale_temporaries(600) == len(stale)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in fresh + others) and (store.root / ".tmp-dir").is_dir()
    assert store.get(sha) == b"a real blob"
    assert store.remove_stale_temporaries(600) == 0
    assert store.remove_stale_temporaries(0) == len(fresh)  # grace 0: every temporary


def test_remove_stale_temporaries_without_a_store_yet(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    store.root.rmdir()
    assert store.remove_stale_temporaries(0) == 0


def test_a_write_killed_mid_way_leaves_a_temporary_that_the_sweep_removes(tmp_path):
    """SIGKILL during a blob write: its temporary survives (no code runs to remove it)
    until a sweep finds it older than the grace period."""
    root = tmp_path / "blobs"
    script = (
        "import sys, time\n"
        "from app.core.blobs import BlobStore\n"
        "def write(p):\n"
        "    with open(p, 'wb') as f:\n"
        "        f.write(b'x' * 100_000); f.flush()\n"
        "        print('writing', flush=True); time.sleep(60)\n"
        f"BlobStore({str(root)!r}).put_file(write)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert p.stdout is not None and p.stdout.readline() == b"writing\n"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    (left,) = [q for q in root.iterdir() if q.is_file()]
    assert left.name.startswith(".tmp-") and left.stat().st_size == 100_000
    store = BlobStore(root)
    assert store.remove_stale_temporaries(600) == 0  # it could be a write in flight
    _age(left, 601)
    assert store.remove_stale_temporaries(600) == 1 and not left.exists()
