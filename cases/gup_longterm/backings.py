"""gup_longterm.c's file backings, as data (run_with_memfd, run_with_tmpfile,
run_with_local_tmpfile, run_with_memfd_hugetlb), in its order.

==========================  ==================================================================
suffix                      the file
==========================  ==================================================================
with memfd                  memfd_create("test", 0): shmem (tmpfs), one base page
with tmpfile                tmpfile(): an unnamed file in /tmp (O_TMPFILE), one base page
with local tmpfile          mkstemp() beside the program, unlinked at once: the file system
                            the suite lives on (this directory), one base page
with memfd hugetlb (N kB)   memfd_create(MFD_HUGETLB | log2(N) << MFD_HUGE_SHIFT), one huge
                            page, for every hugetlb size
==========================  ==================================================================

gup_longterm.c gets two free huge pages of every size (hugetlb_setup(2, ...)): the page the
file holds and, for a MAP_PRIVATE mapping, its private copy.  ``prepare`` grows the pool the
same way (lib.kernel.memtypes.grow_pool, restored at the end of the run); ``require`` skips
from probes only (the size offered, MFD_HUGETLB of it, the pool's free unreserved pages, a
writable directory for the local tmpfile).
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from lib.kernel import abi, fstype, hugetlb_pool, libc, memtypes, needs, system

MEMFD = "memfd"
TMPFILE = "tmpfile"
LOCAL_TMPFILE = "local tmpfile"
MEMFD_HUGETLB = "memfd hugetlb"
TMPDIR = "/tmp"  # glibc's P_tmpdir: where tmpfile() creates its file
LOCAL_DIR = str(Path(__file__).resolve().parent)  # upstream: __FILE__"_tmpfile_XXXXXX", beside the program
HUGETLB_PAGES = 2  # gup_longterm.c hugetlb_setup(2, ...)


@dataclass(frozen=True)
class FileBacking:
    kind: str
    hpage: int = 0  # the huge page size of memfd hugetlb

    @property
    def suffix(self) -> str:
        if self.kind == MEMFD_HUGETLB:
            return f"with {self.kind} ({system.size_label(self.hpage)})"
        return f"with {self.kind}"

    def __str__(self) -> str:
        return self.suffix

    @property
    def size(self) -> int:
        """What a case maps and pins: one page (one huge page for hugetlb)."""
        return self.hpage or system.PAGE_SIZE

    @property
    def hugetlb(self) -> bool:
        return self.kind == MEMFD_HUGETLB

    def prepare(self, settings) -> None:
        if self.hugetlb:
            memtypes.grow_pool(settings, self.hpage, HUGETLB_PAGES)

    def require(self) -> None:
        if self.hugetlb:
            needs.hugetlb_size(self.hpage)
            needs.memfd_hugetlb(self.hpage)
            avail = hugetlb_pool.available(self.hpage)
            if avail < HUGETLB_PAGES:
                pytest.skip(f"need more free huge pages: {hugetlb_pool.read(self.hpage)}, "
                            f"{HUGETLB_PAGES} free unreserved pages needed (the pool could not be grown)")
        elif self.kind == LOCAL_TMPFILE:
            if not os.access(LOCAL_DIR, os.W_OK | os.X_OK):
                pytest.skip(f"local tmpfile: {LOCAL_DIR} is not writable here")
            why = unlinked_fstatfs_refused(LOCAL_DIR)
            if why:
                pytest.skip(f"local tmpfile: {why}")

    def open(self) -> int:
        """The file, as gup_longterm.c opens it (a failure raises OSError: a failure verdict)."""
        if self.kind == MEMFD:
            return libc.memfd_create("test", 0)
        if self.kind == TMPFILE:
            return unnamed_file(TMPDIR)
        if self.kind == LOCAL_TMPFILE:
            fd, path = tempfile.mkstemp(prefix="gup_longterm_tmpfile_", dir=LOCAL_DIR)
            os.unlink(path)
            return fd
        return libc.memfd_create("test", abi.MFD_HUGETLB | abi.huge_size_flag(self.hpage))


def unlinked_fstatfs_refused(directory: str) -> str:
    """Why fstatfs() of an unlinked file in ``directory`` fails here, or ''.  A probe of the
    place the file lives (a 9p share, as a virtme-ng guest gets for a clone below /tmp, answers
    ENOENT), not of the pins under test: mkstemp, unlink, fstatfs, close."""
    fd, path = tempfile.mkstemp(prefix="gup_longterm_probe_", dir=directory)
    try:
        os.unlink(path)
        fstype.fs_type(fd)
    except OSError as e:
        return f"fstatfs() of an unlinked file in {directory} fails ({e.strerror})"
    finally:
        os.close(fd)
    return ""


def unnamed_file(directory: str) -> int:
    """glibc tmpfile(): an O_TMPFILE file in ``directory``, or where the file system cannot
    make one, a named one unlinked at once."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise
    fd, path = tempfile.mkstemp(dir=directory)
    os.unlink(path)
    return fd


def backings(hugetlb_sizes: list[int] | None = None) -> list[FileBacking]:
    """memfd, tmpfile, local tmpfile, then memfd hugetlb of every hugetlb size (ascending, as
    gup_longterm.c's detection lists them)."""
    hs = hugetlb_sizes if hugetlb_sizes is not None else sorted(system.hugetlb_sizes())
    return [FileBacking(MEMFD), FileBacking(TMPFILE), FileBacking(LOCAL_TMPFILE),
            *(FileBacking(MEMFD_HUGETLB, s) for s in hs)]
