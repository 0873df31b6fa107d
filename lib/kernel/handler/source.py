"""The source: page contents a handler serves, in a memfd so a handler in another process can map
it (ProcessHandler inherits the mapping; SpawnedHandler receives the memfd by SCM_RIGHTS)."""

from __future__ import annotations

import os

from lib.kernel import abi, libc


class Source:
    """Page contents to serve, in a memfd mapped here (and mappable by a handler process)."""

    def __init__(self, size: int, content: bytes | None = None, pattern: int | None = None) -> None:
        self.size = size
        self.fd = libc.memfd_create("kmm-source")
        os.ftruncate(self.fd, size)
        self.addr = libc.mmap(size, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_SHARED, self.fd)
        if content is not None:
            libc.write(self.addr, content[:size])
        elif pattern is not None:
            fill_pattern(self.addr, size, pattern)

    def page(self, i: int, page_size: int) -> bytes:
        return libc.read(self.addr + i * page_size, page_size)

    def close(self) -> None:
        libc.munmap(self.addr, self.size)
        os.close(self.fd)


def fill_pattern(addr: int, size: int, seed: int) -> None:
    """Fill with a per-4KiB-page recognisable pattern (page index and seed in every word)."""
    ps = libc.PAGE_SIZE
    for i in range(size // ps):
        word = ((seed & 0xFFFF) << 48 | (i & 0xFFFFFFFF)).to_bytes(8, "little")
        libc.write(addr + i * ps, word * (ps // 8))

