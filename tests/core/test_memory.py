"""``app.core.memory``: freed heap pages go back to the OS after a large request."""

from __future__ import annotations

import platform

from app.core.memory import release_free_memory


def test_release_free_memory_trims_on_glibc() -> None:
    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")
    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")  # loaded once, callable again
