"""The REMOVE area's backings: lib.kernel.memtypes types with the handler options and the
punching advice the area uses, and the case matrix (backings x handler placements).

Backings: ``anon`` (private, 4 KiB), ``shared-anon`` (MAP_SHARED|MAP_ANONYMOUS), ``shmem`` (a
memfd, MAP_SHARED), ``hugetlb-anon`` (MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, what e2b and
Firecracker map) and ``hugetlb`` (an MFD_HUGETLB memfd, MAP_SHARED), the hugetlb ones at 2 MiB
and 1 GiB.  The *punching* advice of a backing is the one that discards its content
(MemType.discard_advice): MADV_DONTNEED for private memory, MADV_REMOVE for shared memory
(DONTNEED on shared memory only zaps the page tables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from lib.kernel import abi
from lib.kernel.handler import Options
from lib.kernel.memtypes import ANON, HUGETLB, HUGETLB_ANON, SHARED_ANON, SHMEM, MemType
from lib.kernel.system import GiB, MiB


@dataclass(frozen=True)
class Backing(MemType):
    """A memory type of lib.kernel.memtypes (its name, mapping and pool) with the area's
    helpers: the handler options it needs, its punching advice, and ``require()`` that adds
    the MISSING feature of the type.  ``pages`` bounds what a case maps (one 1 GiB page: a
    fragmented machine often has no second)."""

    def options(self, base: Options | None = None, **kw) -> Options:
        """Handler options for this backing: ``base`` (a case's, e.g. a negative control's) or
        the defaults, with ``kw`` set.  hugetlb: the handler populates its buffers, else every
        UFFDIO_COPY needs a spare, unreserved huge page for mm/hugetlb.c's bounce folio."""
        o = base or Options()
        for k, v in kw.items():
            setattr(o, k, v)
        o.populate_buffers = self.hugetlb
        return o

    @property
    def punch_name(self) -> str:
        """The name of the punching advice, MemType.discard_advice: MADV_DONTNEED or MADV_REMOVE."""
        return f"MADV_{abi.Madv(self.discard_advice).name}"

    def require(self, features: int = 0, pages: int = 1) -> None:
        """Skip (with the reason) unless this backing, ``pages`` of its huge pages and the
        MISSING feature of the type plus ``features`` are usable here (probes only)."""
        super().require(self.missing_feature | int(features), pages)


BACKINGS = [
    Backing(ANON),
    Backing(SHARED_ANON),
    Backing(SHMEM),
    Backing(HUGETLB_ANON, 2 * MiB, pages=8),
    Backing(HUGETLB, 2 * MiB, pages=8),
    Backing(HUGETLB_ANON, GiB, pages=1),
    Backing(HUGETLB, GiB, pages=1),
]
PRIVATE = [b for b in BACKINGS if not b.shared]
SHARED = [b for b in BACKINGS if b.shared]
HUGETLBFS = [b for b in BACKINGS if b.kind == HUGETLB]


def matrix(backings: list[Backing], name: Callable[..., str], topologies: list[str] | None = None):
    """pytest.param list: backings (x topologies), ids from ``name(backing[, topology])``.

    A 1 GiB backing runs with the SCM_RIGHTS handler only (the VMM's placement): every 1 GiB
    case copies a whole gigantic page out of a shmem source (about 2 s each); the placements
    are covered on 4 KiB and 2 MiB pages."""
    if topologies is None:
        return [pytest.param(b, id=name(b)) for b in backings]
    return [pytest.param(b, t, id=name(b, t)) for b in backings for t in topologies
            if b.size < GiB or t == topologies[-1]]
